"""A parameter sweep: leaky integrate-and-fire neurons over a grid of input currents.

Every worker process of a multiprocessing pool writes its results into its
own datamanager session; no process coordinates with any other.  The
analysis at the end collates all sessions and prints the firing rate per
input current.

Run:  python examples/parameter_sweep.py [--datapath DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile

import numpy as np

from datamanager import DataManager

# Leaky integrate-and-fire parameters (SI units).
TAU = 20e-3  # membrane time constant
R = 1e7  # membrane resistance
V_REST, V_THRESHOLD, V_RESET = -70e-3, -50e-3, -70e-3
DT, DURATION = 1e-4, 1.0
CURRENTS = np.linspace(1.5e-9, 4e-9, 24)  # amperes
TRIALS = 4


def simulate(current: float, seed: int) -> np.ndarray:
    """Return the spike times of one LIF neuron driven by a noisy constant current."""
    rng = np.random.default_rng(seed)
    steps = int(DURATION / DT)
    noise = rng.normal(0.0, 2e-3, steps)
    v, spikes = V_REST, []
    for i in range(steps):
        v += DT / TAU * (V_REST - v + R * current) + noise[i] * np.sqrt(DT / TAU)
        if v >= V_THRESHOLD:
            spikes.append(i * DT)
            v = V_RESET
    return np.asarray(spikes)


def run_chunk(args: tuple[DataManager, list[tuple[int, float]]]) -> int:
    """Simulate a chunk of (trial, current) pairs; store them in this process's session."""
    dm, chunk = args
    with dm.session() as session:
        for trial, current in chunk:
            spikes = simulate(current, seed=trial * 1000 + int(current * 1e12))
            key = f"run/{current:.3e}/{trial}"
            session[key] = {"current": current, "trial": trial, "spikes": spikes}
        # A list value per session: get_merged concatenates them across sessions.
        session["currents"] = [current for _, current in chunk]
    return len(chunk)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datapath", help="where to keep the data (default: a temp dir)")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    datapath = args.datapath or tempfile.mkdtemp(prefix="sweep-")
    dm = DataManager("lif_sweep", datapath)

    jobs = [(trial, float(c)) for trial in range(TRIALS) for c in CURRENTS]
    chunks = [(dm, jobs[i :: args.processes * 2]) for i in range(args.processes * 2)]
    with multiprocessing.Pool(args.processes) as pool:
        done = sum(pool.map(run_chunk, chunks))

    # Analysis: collate every session's runs, whatever process wrote them.
    runs = dm.get_flat_matching("run/")
    rates: dict[float, list[float]] = {}
    for run in runs:
        rates.setdefault(run["current"], []).append(len(run["spikes"]) / DURATION)
    print(f"{done} runs in {len(dm.session_filenames())} sessions under {dm.basepath}")
    print(f"{len(dm.get_merged('currents'))} currents recorded via get_merged")
    print(f"{'current (nA)':>12}  {'rate (Hz)':>9}  {'sd':>5}")
    for current in sorted(rates):
        r = np.asarray(rates[current])
        print(f"{current * 1e9:12.2f}  {r.mean():9.1f}  {r.std():5.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
