"""Benchmark run_tasks against bare process pools and a bare Dask client.

Every ratio compares two timings taken in this run, interleaved and repeated
(the median is reported), on a fresh data directory for each run_tasks call:

- 1,000 trivial tasks with ``run_tasks`` on a local pool of 2 processes, against
  ``multiprocessing.Pool(2).map`` of the same function returning results
  without storing them (pool start-up included in both);
- the same on a Dask ``LocalCluster`` of 2 worker processes, against
  ``client.map`` + ``client.gather``;
- the storing overhead per task, in microseconds;
- throughput of 2 workers against 1 for a CPU-bound task of about 50 ms.

Run ``python benchmarks/bench_tasks.py`` (``--small`` for a quick run).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import _checkout  # noqa: F401  (measure this checkout)
from datamanager import DataManager
from datamanager.tasks import run_tasks


def trivial(x: int) -> int:
    return x


def spin(item: tuple[int, int]) -> int:
    """A CPU-bound task (pure Python, holds the GIL): *loops* steps from *x*."""
    total, loops = item
    for i in range(loops):
        total = (total * 31 + i) % 1000003
    return total


def calibrate(seconds: float = 0.05) -> int:
    """The number of loops for which :func:`spin` takes about *seconds*."""
    loops = 100_000
    elapsed = timed(lambda: spin((0, loops)))
    return max(1, int(loops * seconds / elapsed))


def timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


class Scratch:
    """Fresh data directories under one temporary folder."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="bench_tasks_", dir=os.environ.get("BENCH_DIR"))
        self.count = 0

    def dm(self) -> DataManager:
        self.count += 1
        return DataManager(f"run{self.count}", self.root)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def compare(ours: Callable[[], Any], bare: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median wall times of *ours* and *bare*, run alternately *repeat* times."""
    a, b = [], []
    for _ in range(repeat):
        b.append(timed(bare))
        a.append(timed(ours))
    return statistics.median(a), statistics.median(b)


def bench_local(scratch: Scratch, n: int, repeat: int) -> tuple[float, float]:
    items = list(range(n))

    def bare() -> None:
        with multiprocessing.Pool(2) as pool:
            pool.map(trivial, items)

    return compare(
        lambda: run_tasks(scratch.dm(), trivial, items, processes=2, progress=False), bare, repeat
    )


def bench_dask(scratch: Scratch, n: int, repeat: int) -> tuple[float, float] | None:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return None
    items = list(range(n))
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.gather(client.map(trivial, items[:10], pure=False))  # warm the workers

        def bare() -> None:
            client.gather(client.map(trivial, items, pure=False))

        return compare(
            lambda: run_tasks(scratch.dm(), trivial, items, client=client, progress=False),
            bare,
            repeat,
        )


def bench_scaling(scratch: Scratch, n: int, loops: int, repeat: int) -> tuple[float, float]:
    """Median throughputs (tasks/s) of 1 and of 2 workers."""
    items = [(x, loops) for x in range(n)]
    one, two = compare(
        lambda: run_tasks(scratch.dm(), spin, items, processes=1, progress=False),
        lambda: run_tasks(scratch.dm(), spin, items, processes=2, progress=False),
        repeat,
    )
    return n / one, n / two


def bench_bare_scaling(n: int, loops: int, repeat: int) -> tuple[float, float]:
    """The same with bare Pool.map: how much parallelism this machine offers now."""
    items = [(x, loops) for x in range(n)]

    def bare(processes: int) -> None:
        with multiprocessing.Pool(processes) as pool:
            pool.map(spin, items, chunksize=1)

    one, two = compare(lambda: bare(1), lambda: bare(2), repeat)
    return n / one, n / two


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer repetitions, fewer tasks")
    parser.add_argument("--rst", action="store_true", help="print the table as reStructuredText")
    args = parser.parse_args(argv)
    repeat, cpu_items, n = (3, 16, 1000) if args.small else (7, 40, 1000)
    scratch, rows = Scratch(), []

    def add(label: str, times: str, ratio: float | None = None, target: str = "") -> None:
        rows.append((label, times, "" if ratio is None else f"{ratio:.2f}", target))

    try:
        ours, bare = bench_local(scratch, n, repeat)
        add(
            f"local pool, {n:,} trivial tasks: run_tasks / Pool.map",
            f"{ours * 1e3:.0f} / {bare * 1e3:.0f} ms",
            ours / bare,
            "<= 1.5",
        )
        add("  overhead per task (storing included)", f"{(ours - bare) / n * 1e6:.0f} us")
        dask = bench_dask(scratch, n, repeat)
        if dask is not None:
            ours, bare = dask
            add(
                f"Dask LocalCluster, {n:,} trivial tasks: run_tasks / map+gather",
                f"{ours * 1e3:.0f} / {bare * 1e3:.0f} ms",
                ours / bare,
                "<= 1.5",
            )
            add("  overhead per task (storing included)", f"{(ours - bare) / n * 1e6:.0f} us")
        loops = calibrate()
        one, two = bench_scaling(scratch, cpu_items, loops, max(1, repeat // 2))
        add(
            f"{cpu_items} CPU-bound tasks of ~50 ms: 2 workers / 1 worker",
            f"{two:.1f} / {one:.1f} tasks/s",
            two / one,
            ">= 1.6",
        )
        one, two = bench_bare_scaling(cpu_items, loops, max(1, repeat // 2))
        add(
            "  the same with bare Pool.map (reference)",
            f"{two:.1f} / {one:.1f} tasks/s",
            two / one,
        )
    finally:
        scratch.cleanup()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"bench_tasks: {'small' if args.small else 'full'} run, {os.cpu_count()} CPUs, "
        f"median of {repeat}, load average {load}"
    )
    rows.insert(0, ("measurement", "times", "ratio", "target"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)
    for n, row in enumerate(rows):
        if args.rst and n in (0, 1):
            print(rule)
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip())
    if args.rst:
        print(rule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
