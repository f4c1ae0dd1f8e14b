"""A parameter sweep: leaky integrate-and-fire neurons over a grid of input currents.

``run_tasks`` simulates every (current, trial) pair on all cores; each worker
process stores its results in its own datamanager session, so no process
waits for another.  The analysis then collates every session into a table of
firing rates, and the whole data directory is exported to one HDF5 file.
Running the script again with the same ``--datapath`` computes nothing new:
every result is already stored.

Run:  python examples/parameter_sweep.py [--datapath DIR] [--processes N]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from datamanager import DataManager, run_tasks, task_results

# Leaky integrate-and-fire parameters (SI units).
TAU = 20e-3  # membrane time constant
R = 1e7  # membrane resistance
V_REST, V_THRESHOLD, V_RESET = -70e-3, -50e-3, -70e-3
DT, DURATION = 1e-4, 1.0
CURRENTS = np.linspace(1.5e-9, 4e-9, 24)  # amperes
TRIALS = 4


def simulate(params: dict[str, float]) -> np.ndarray:
    """Return the spike times of one LIF neuron driven by a noisy constant current."""
    current, trial = params["current"], params["trial"]
    # The seed depends on the item only, so a rerun gives the same spikes.
    rng = np.random.default_rng([int(trial), round(current * 1e12)])
    steps = int(DURATION / DT)
    noise = rng.normal(0.0, 2e-3, steps)
    v, spikes = V_REST, []
    for i in range(steps):
        v += DT / TAU * (V_REST - v + R * current) + noise[i] * np.sqrt(DT / TAU)
        if v >= V_THRESHOLD:
            spikes.append(i * DT)
            v = V_RESET
    return np.asarray(spikes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datapath", help="where to keep the data (default: a new temp dir)")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    datapath = args.datapath or tempfile.mkdtemp(prefix="sweep-")
    dm = DataManager("lif_sweep", datapath)

    grid = [{"current": float(c), "trial": t} for c in CURRENTS for t in range(TRIALS)]
    summary = run_tasks(dm, simulate, grid, processes=args.processes)
    print(summary)

    # Analysis: collate the results, whatever process computed them.
    rates: dict[float, list[float]] = {}
    for params, spikes in task_results(dm, simulate):
        rates.setdefault(params["current"], []).append(len(spikes) / DURATION)
    print(f"{'current (nA)':>12}  {'rate (Hz)':>9}  {'sd':>5}")
    for current in sorted(rates):
        r = np.asarray(rates[current])
        print(f"{current * 1e9:12.2f}  {r.mean():9.1f}  {r.std():5.1f}")

    h5_path = os.path.join(datapath, "lif_sweep.h5")
    dm.export_hdf5(h5_path, overwrite=True, progress=False)
    print(f"data directory: {dm.basepath} ({len(dm.session_filenames())} sessions)")
    print(f"HDF5 export:    {h5_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
