"""Benchmark the HDF5 export against raw h5py, measured in the same run.

Run ``python benchmarks/bench_hdf5.py`` (``--small`` for a quick run).  Every
ratio compares two timings taken here, in one folder on one disk, taking
turns so that each meets the same page-cache state, and each closing its
file; so the ratios hold on any machine.

Export timings include reading the values back out of the data directory
(SQLite and side files, already in the page cache); raw h5py writes arrays
that are already in memory.  Neither fsyncs, except the row that says so.

The small-values target is measured on the headline layout, 100 sessions of
100 keys; 1000 sessions of 10 keys (per-session costs dominate) is shown for
information.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable

import h5py
import numpy as np

import _checkout  # noqa: F401  (measure this checkout)
from datamanager import DataManager
from datamanager.hdf5 import export_hdf5

MiB = 1 << 20


def best(*fns: Callable[[], object], repeat: int, out: str) -> list[float]:
    """Best wall time of each function over ``repeat`` rounds.

    The functions take turns within each round, so that all of them meet the
    same page-cache write-back left by the others; the output file is
    removed before the clock starts.
    """
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, spent in zip(fns, times):
            if os.path.exists(out):
                os.unlink(out)
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [min(t) for t in times]


def bench_large(root: str, nbytes: int, repeat: int) -> list[tuple[str, float, str]]:
    arr = np.random.default_rng(0).random(nbytes // 8)
    dm = DataManager("large", root)
    with dm.session() as s:
        s["big"] = arr
    out = os.path.join(root, "large.h5")

    def raw() -> None:
        with h5py.File(out, "w") as f:
            f.create_dataset("big", data=arr)

    (side,) = [path for reader in dm.iter_sessions() for _, path, _ in reader.side_files()]

    def raw_from_file() -> None:
        with h5py.File(out, "w") as f:
            f.create_dataset("big", data=np.load(side))

    def ours() -> None:
        export_hdf5(dm, out, progress=False)

    def durable() -> None:
        export_hdf5(dm, out, progress=False, fsync=True)

    t_raw, t_file, t_ours, t_sync = best(raw, raw_from_file, ours, durable, repeat=repeat, out=out)
    mb = nbytes / MiB
    return [
        (f"large array ({mb:.0f} MiB): raw h5py write from memory", mb / t_raw, "MiB/s"),
        (f"large array ({mb:.0f} MiB): export", mb / t_ours, "MiB/s"),
        ("  ratio export / raw h5py write (target >= 0.7)", t_raw / t_ours, "x"),
        ("  ratio export fsync=True / raw h5py write (no fsync)", t_raw / t_sync, "x"),
        ("  ratio export / raw h5py np.load(side file) + write", t_file / t_ours, "x"),
    ]


class MemorySession:
    """A session already in memory: isolates the HDF5 side of an export."""

    def __init__(self, name: str, values: dict[str, object], metadata: dict[str, object]):
        self.name, self.values, self.metadata = name, values, metadata

    def keys(self) -> list[str]:
        return list(self.values)

    def items(self) -> list[tuple[str, object]]:
        return list(self.values.items())

    def __getitem__(self, key: str) -> object:
        return self.values[key]


class MemorySource:
    """What export_hdf5 reads from a DataManager, served from memory."""

    def __init__(self, dm: DataManager) -> None:
        self.name = dm.name
        self.sessions = []
        for reader in dm.iter_sessions():
            with reader:
                values = {k: reader[k] for k in reader.keys()}  # noqa: SIM118
                self.sessions.append(MemorySession(reader.name, values, reader.metadata))

    def iter_sessions(self) -> list[MemorySession]:
        return self.sessions


def bench_small(
    root: str, sessions: int, keys: int, repeat: int, role: str
) -> list[tuple[str, float, str]]:
    rng = np.random.default_rng(1)
    values = [[rng.random(100) for _ in range(keys)] for _ in range(sessions)]
    dm = DataManager(f"small{sessions}", root)
    for row in values:
        with dm.session() as s, s.transaction():
            for k, v in enumerate(row):
                s[f"k{k}"] = v
    out = os.path.join(root, "small.h5")

    def raw() -> None:
        with h5py.File(out, "w") as f:
            for i, row in enumerate(values):
                group = f.create_group(f"s{i}")
                for k, v in enumerate(row):
                    group.create_dataset(f"k{k}", data=v)

    def read_only() -> None:
        # What any export must do before writing anything: the ceiling of
        # the merged ratio.
        for reader in dm.iter_sessions():
            with reader:
                reader.metadata, reader.side_files()
                for _ in reader.items():
                    pass

    memory = MemorySource(dm)
    t_raw, t_read, t_flat, t_merged, t_mem_flat, t_mem_merged = best(
        raw,
        read_only,
        lambda: export_hdf5(dm, out, progress=False),
        lambda: export_hdf5(dm, out, merged=True, progress=False),
        lambda: export_hdf5(memory, out, progress=False),
        lambda: export_hdf5(memory, out, merged=True, progress=False),
        repeat=repeat,
        out=out,
    )
    n = sessions * keys
    label = f"{n} x 100 floats, {sessions} sessions x {keys} keys"
    goal = (lambda target: f" (target {target})") if role == "headline" else (lambda _: "")
    return [
        (f"{label} ({role}): raw h5py, one dataset each", n / t_raw, "values/s"),
        (f"{label}: export", n / t_flat, "values/s"),
        (f"{label}: export merged=True", n / t_merged, "values/s"),
        ("  ratio export / raw h5py" + goal(">= 0.5"), t_raw / t_flat, "x"),
        ("  ratio merged / raw h5py one dataset each" + goal(">= 20"), t_raw / t_merged, "x"),
        ("  ratio merged / export one dataset each", t_flat / t_merged, "x"),
        ("  ratio reading the values alone, no HDF5 / raw h5py", t_raw / t_read, "x"),
        ("  HDF5 side only (values already in memory):", float("nan"), ""),
        ("    ratio export / raw h5py", t_raw / t_mem_flat, "x"),
        ("    ratio merged / raw h5py one dataset each", t_raw / t_mem_merged, "x"),
    ]


PEAK = """
import sys
from datamanager import DataManager
from datamanager.hdf5 import export_hdf5

def status(field):
    # VmHWM, unlike ru_maxrss, is not inherited from the parent process.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

dm = DataManager.from_path(sys.argv[1])
import h5py, numpy  # imported before the baseline: their cost is not the export's
base = status("VmRSS")
export_hdf5(dm, sys.argv[2], merged=sys.argv[3] == "1", progress=False)
peak = status("VmHWM")
print(base, peak)
"""


def bench_memory(root: str, total: int, largest: int) -> list[tuple[str, float, str]]:
    dm = DataManager("memory", root)
    count = total // largest
    for i in range(count):
        with dm.session() as s:
            s["trace"] = np.full(largest // 8, float(i))
            s["rates"] = [float(i)] * 100
    rows = []
    for merged in (False, True):
        out = os.path.join(root, "memory.h5")
        proc = subprocess.run(
            [sys.executable, "-c", PEAK, dm.basepath, out, "1" if merged else "0"],
            capture_output=True,
            text=True,
            check=True,
        )
        base, peak = map(int, proc.stdout.split())
        used = (peak - base) / MiB
        limit = 2 * largest / MiB + 100
        rows.append(
            (
                f"peak memory, {total / MiB:.0f} MiB data set, largest value "
                f"{largest / MiB:.0f} MiB, merged={merged} (limit {limit:.0f} MiB)",
                used,
                "MiB",
            )
        )
        os.unlink(out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run on small data")
    parser.add_argument("--dir", help="folder to work in (default: a temporary one)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench_hdf5_", dir=args.dir)
    repeat = 2 if args.small else 3
    try:
        rows = bench_large(root, (16 if args.small else 100) * MiB, repeat)
        if args.small:
            rows += bench_small(root, 20, 100, repeat, "headline, --small")
        else:
            rows += bench_small(root, 100, 100, repeat, "headline")
            rows += bench_small(root, 1000, 10, repeat, "information")
        total, largest = (256 * MiB, 32 * MiB) if args.small else (2048 * MiB, 100 * MiB)
        rows += bench_memory(root, total, largest)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement'.ljust(width)}  {'value':>10}  unit")
    for name, value, unit in rows:
        shown = "" if value != value else f"{value:10.2f}"
        print(f"{name.ljust(width)}  {shown:>10}  {unit}")


if __name__ == "__main__":
    main()
