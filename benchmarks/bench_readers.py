"""Recording readers against their baselines, measured in the same run.

For a generated two-column file in each format (NEURON clipboard ``.dat`` and
ATF), compares the throughput of our reader with ``pandas.read_csv(engine='c')``
on the same bytes and with Brian's ``np.loadtxt`` approach, and the peak
memory growth of our reader against the size of the arrays it returns. Then
compares importing a 1,000-file folder into a DataManager with just reading
the same files. Prints ratios (higher is better for speed ratios).

Usage::

    python benchmarks/bench_readers.py                 # ~100 MiB files
    python benchmarks/bench_readers.py --size-mib 5    # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from _checkout import ROOT
from datamanager import DataManager
from datamanager.recordings import (
    Recording,
    _text,
    load_atf,
    load_neuron_dat,
    load_recording,
    write_atf,
    write_neuron_dat,
)

# Run in a fresh interpreter: peak RSS growth of one read, after imports.
# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's RSS.
_MEMORY_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
from datamanager.recordings import _text, load_atf, load_neuron_dat, load_recording
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
kind, path = sys.argv[1], sys.argv[2]
load = load_atf if kind == "atf" else lambda p: load_neuron_dat(p)[0]
load_recording(sys.argv[5])  # imports pandas' parser modules
_text.BLOCKWISE_BYTES = 0 if sys.argv[4] == "True" else None
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak RSS := current RSS
before = status("VmRSS:")
out = load(path).data
print(json.dumps({"growth": status("VmHWM:") - before, "nbytes": int(out.nbytes)}))
"""


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def make_data(size_mib: float) -> np.ndarray:
    # NEURON-like values: a time axis and a voltage, at %g-ish precision.
    rows = int(size_mib * 2**20 / 17)
    rng = np.random.default_rng(0)
    t = np.round(np.arange(rows) * 0.025, 3)
    v = np.round(-65 + 10 * rng.standard_normal(rows), 4)
    return np.column_stack([t, v])


def pandas_baseline(path: str, skip: int) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(path, sep="\t", header=None, skiprows=skip, engine="c").to_numpy()


def brian_neuron(path: str) -> np.ndarray:
    with open(path) as f:
        f.readline(), f.readline()
        return np.loadtxt(f)


def brian_atf(path: str) -> np.ndarray:
    with open(path) as f:
        f.readline()
        n = int(f.readline().split()[0])
        for _ in range(n + 1):
            f.readline()
        return np.loadtxt(f)


def memory(kind: str, path: str, small: str, blockwise: bool) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, kind, path, ROOT, str(blockwise), small],
        check=True,
        capture_output=True,
        text=True,
    )
    res = json.loads(out.stdout)
    return res["growth"] / res["nbytes"]


def bench_formats(folder: str, size_mib: float, repeat: int) -> list[tuple[str, ...]]:
    data = make_data(size_mib)
    dat = os.path.join(folder, "big.dat")
    atf = os.path.join(folder, "big.atf")
    small = os.path.join(folder, "small.dat")
    write_neuron_dat(dat, data, label="v(.5)")
    write_neuron_dat(small, data[:10], label="v(.5)")
    rec = Recording(
        data,
        ["Time", "Trace #1"],
        ["s", "mV"],
        {"AcquisitionMode": "Gap Free", "Signals": ["IN 0"]},
    )
    write_atf(atf, rec)
    rows = []
    cases = [
        ("NEURON .dat", dat, "neuron", lambda: load_neuron_dat(dat)[0], 2, brian_neuron),
        ("ATF", atf, "atf", lambda: load_atf(atf), 5, brian_atf),
    ]
    for name, path, kind, ours, skip, brian in cases:
        t_np = best(lambda p=path, b=brian: b(p), 1)
        for blockwise in (False, True):
            # One read_csv call is what a body of this size gets by default;
            # block-wise is what a body too large for memory gets.
            _text.BLOCKWISE_BYTES = 0 if blockwise else None
            assert np.array_equal(ours().data, data)
            # Interleave the runs so load from other processes hits all alike.
            t_ours = t_pd = float("inf")
            for _ in range(repeat):
                t_pd = min(t_pd, best(lambda p=path, s=skip: pandas_baseline(p, s), 1))
                t_ours = min(t_ours, best(ours, 1))
            mib = os.path.getsize(path) / 2**20
            rows.append(
                (
                    name,
                    "block-wise" if blockwise else "one call",
                    f"{mib:.0f}",
                    f"{mib / t_ours:.0f}",
                    f"{t_pd / t_ours:.2f}x",
                    f"{t_np / t_ours:.2f}x",
                    f"{memory(kind, path, small, blockwise):.2f}x",
                )
            )
    _text.BLOCKWISE_BYTES = None
    return rows


def bench_import(folder: str, nfiles: int, repeat: int) -> tuple[float, float, float]:
    src = os.path.join(folder, "cells")
    os.makedirs(src)
    rng = np.random.default_rng(1)
    for i in range(nfiles):
        sub = os.path.join(src, f"cell{i % 20:02d}")
        os.makedirs(sub, exist_ok=True)
        t = np.arange(400) * 0.025
        v = np.round(-65 + rng.standard_normal(400), 4)
        if i % 2:
            write_neuron_dat(os.path.join(sub, f"r{i}.dat"), t, v, label="v(.5)")
        else:
            write_atf(
                os.path.join(sub, f"r{i}.atf"),
                np.column_stack([t, v]),
                columns=["Time", "Trace #1"],
                units=["s", "mV"],
            )
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)

    def read_all() -> None:
        for f in files:
            load_recording(f)

    t_read = best(read_all, repeat)
    t_import = float("inf")
    for k in range(repeat):
        dm = DataManager(f"bench{k}", os.path.join(folder, "dm"))
        t0 = time.perf_counter()
        summary = dm.import_recordings(src)
        t_import = min(t_import, time.perf_counter() - t0)
        assert len(summary.imported) == nfiles, summary
    dm = DataManager("bench0", os.path.join(folder, "dm"))
    t_again = best(lambda: dm.import_recordings(src), 1)
    return t_read, t_import, t_again


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-mib", type=float, default=100.0, help="size of each generated file (default 100)"
    )
    parser.add_argument(
        "--files", type=int, default=1000, help="files in the folder-import case (default 1000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="best of N (default 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        rows = bench_formats(folder, args.size_mib, args.repeat)
        header = (
            "format",
            "parser",
            "MiB",
            "ours MiB/s",
            "vs pandas C",
            "vs np.loadtxt",
            "peak mem / arrays",
        )
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for r in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        t_read, t_import, t_again = bench_import(folder, args.files, args.repeat)
        print()
        print(
            f"folder of {args.files} files: import speed / read-alone speed = "
            f"{t_read / t_import:.2f}x "
            f"(read {t_read:.2f} s, import {t_import:.2f} s, re-import {t_again:.2f} s)"
        )
    print("targets: >= 0.90x pandas, >= 2.50x np.loadtxt, memory <= 2.00x, import >= 0.80x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
