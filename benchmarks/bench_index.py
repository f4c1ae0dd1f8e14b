"""Benchmark collation through a data directory's index against collation without it.

Every figure is a ratio measured in the same run, on the same disk: the same
calls on the same data directory with its index in place and with the index
moved out of the directory (renamed aside and back between runs; nothing of
the data is deleted), index builds against one unindexed ``items()``, and
collecting one key from 1,000 one-run sessions against the peers a user
might pick instead, diskcache (one shared ``Cache``) and signac (one job per
run), when they are installed (``pip install ".[bench]"``).

Run ``python benchmarks/bench_index.py`` (``--quick`` for a small run).  The
data directories are written once, by several processes, into
``bench_index/`` beside the repository (``--dir``) and reused by later runs
of the same shape; remove that folder to reclaim the space.  Each
measurement is repeated, the two sides interleaved, with ``os.sync()`` before
every timed run, and the best time of each is kept.  ``--scaling`` adds a
directory of 100,000 sessions to the scaling table (long to write).  The
script always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import _checkout  # noqa: F401  (measure this checkout)
from datamanager import DataManager

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
#: Bumped when what the writers put in a directory changes, so an old one is not reused.
SHAPE_VERSION = 1
#: The key every session of the main directory holds, with a small value.
SMALL_KEY = "rate/exc"
#: 12,800 floats pickle to about 115 KiB: over the index's cache limit, kept inline.
BIG_LIST = [float(i) for i in range(12_800)]
#: 1 MiB of float64: stored in a side file.
BIG_ARRAY = np.arange(MiB // 8, dtype=np.float64)


# -- the data directories -------------------------------------------------------------------


def session_values(kind: str, i: int, n: int) -> dict[str, Any]:
    """The keys and values of session *i* of *n* in a directory of *kind*."""
    small = [float(i + j) for j in range(10)]
    if kind == "main":
        # Five keys each; "rare" replaces "extra" in 10 sessions spread over the directory.
        fifth = "rare" if i % max(1, n // 10) == 0 else "extra"
        return {
            "rate/exc": small,
            "rate/inh": small,
            "seed": i,
            "spikes": np.arange(50, dtype=np.float64) + i,
            fifth: small,
        }
    if kind == "large":
        return {"big/list": BIG_LIST, "big/array": BIG_ARRAY, SMALL_KEY: small}
    if kind == "peer":
        return {"result": small}
    raise ValueError(kind)


def write_part(basepath: str, kind: str, n: int, indices: range) -> int:
    """Write sessions *indices* of the directory: one process's share."""
    dm = DataManager.from_path(basepath)
    for i in indices:
        with dm.session() as s, s.transaction():
            s.update(session_values(kind, i, n))
    return len(indices)


def session_files(basepath: str) -> list[str]:
    return sorted(
        name
        for name in os.listdir(basepath)
        if name.endswith(".sqlite") and not name.startswith(".")
    )


def data_dir(root: str, kind: str, n: int, workers: int) -> str:
    """The data directory of *n* sessions of *kind* under *root*, written if missing.

    A directory is reused only if the marker written after its last session
    names the same shape and it still holds *n* sessions; one that does not
    match is left alone, and the script stops.
    """
    basepath = os.path.join(root, f"{kind}-{n}.data")
    marker = basepath[: -len(".data")] + ".json"
    shape = {"kind": kind, "sessions": n, "version": SHAPE_VERSION}
    if os.path.exists(basepath):
        try:
            with open(marker) as f:
                found = json.load(f)
        except (OSError, ValueError):
            found = None
        if found != shape or len(session_files(basepath)) != n:
            sys.exit(f"{basepath} exists but is not {n} '{kind}' sessions: remove it or use --dir")
        return basepath
    started = time.perf_counter()
    print(f"writing {n:,} '{kind}' sessions into {basepath} ...", flush=True)
    os.makedirs(basepath)
    # Each process writes its own sessions, as the simulations of a sweep do.
    shares = [range(w, n, workers) for w in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        written = sum(
            pool.map(write_part, [basepath] * workers, [kind] * workers, [n] * workers, shares)
        )
    assert written == n
    with open(marker, "w") as f:
        json.dump(shape, f)
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return basepath


def dir_bytes(basepath: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(basepath) if e.is_file())


class IndexSwitch:
    """Moves a data directory's index out of the directory and back.

    The index is renamed to a file beside the directory (same disk), never
    deleted, so that "unindexed" is the same directory without its index.
    """

    def __init__(self, basepath: str) -> None:
        self.index = os.path.join(basepath, ".index.sqlite")
        self.aside = basepath[: -len(".data")] + ".index-aside.sqlite"
        if os.path.exists(self.aside) and not os.path.exists(self.index):
            self.show()  # left aside by an interrupted run

    def show(self) -> None:
        if os.path.exists(self.aside):
            os.replace(self.aside, self.index)

    def hide(self) -> None:
        if os.path.exists(self.index):
            os.replace(self.index, self.aside)

    def drop_aside(self) -> None:
        """Forget the index moved aside: a newer build has replaced it."""
        if os.path.exists(self.aside):
            os.unlink(self.aside)


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One side of a comparison: *call* timed, *setup* and *after* not."""

    call: Callable[[], Any]
    setup: Callable[[], Any] = lambda: None
    after: Callable[[], Any] = lambda: None


def interleaved(runs: dict[str, Run], repeats: int, warmup: bool = True) -> dict[str, float]:
    """The best wall time of each run, the runs taking turns in a rotating order.

    Rotating which one goes first keeps a burst of load from another process
    from always landing on the same side.  The page cache is flushed to disk
    (``os.sync``) before each timed call, so no call pays for another's writes.
    """
    names = list(runs)
    if warmup:
        for name in names:
            runs[name].setup()
            runs[name].call()
            runs[name].after()
    best = dict.fromkeys(names, float("inf"))
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            run = runs[name]
            run.setup()
            os.sync()
            start = time.perf_counter()
            run.call()
            best[name] = min(best[name], time.perf_counter() - start)
            run.after()
    return best


@dataclass
class Row:
    measurement: str
    ours: float
    base: float
    #: How the ratio is formed, e.g. "unindexed / indexed".
    ratio_of: str
    ratio: float

    def cells(self) -> list[str]:
        return [self.measurement, ms(self.ours), ms(self.base), self.ratio_of, f"{self.ratio:.2f}"]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def print_table(header: list[str], lines: list[list[str]]) -> None:
    table = [header, *lines]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for n, line in enumerate(table):
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            print("-+-".join("-" * w for w in widths))


# -- indexed against unindexed --------------------------------------------------------------


def speedup(label: str, basepath: str, call: Callable[[DataManager], Any], repeats: int) -> Row:
    """*call* on the directory with its index against without it; ratio unindexed / indexed."""
    switch = IndexSwitch(basepath)
    dm = DataManager.from_path(basepath)
    answers = Answers(label)
    times = interleaved(
        {
            "indexed": Run(lambda: answers.keep(call(dm)), switch.show, answers.check),
            "unindexed": Run(lambda: answers.keep(call(dm)), switch.hide, answers.check),
        },
        repeats,
    )
    switch.show()
    return Row(
        label,
        times["indexed"],
        times["unindexed"],
        "unindexed / indexed",
        times["unindexed"] / times["indexed"],
    )


class Answers:
    """Checks, untimed, that every run gave the first run's answer."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.first: Any = None
        self.last: Any = None

    def keep(self, answer: Any) -> None:
        self.last = answer

    def check(self) -> None:
        if self.first is None:
            self.first = self.last
            return
        first, last = self.first, self.last
        if hasattr(first, "equals"):
            same = first.equals(last)
        elif isinstance(first, np.ndarray):
            same = np.array_equal(first, last)
        else:
            same = first == last
        if not same:
            raise AssertionError(f"{self.label}: the answers with and without index differ")
        self.last = None


def collation_rows(main: str, large: str, repeats: int) -> list[Row]:
    n = len(session_files(main))
    n_large = len(session_files(large))
    where = f"{n:,} sessions"
    rows = [
        speedup(f"get('rare'), {where}", main, lambda dm: dm.get("rare"), repeats),
        speedup(f"sessions(), {where}", main, lambda dm: dm.sessions(), repeats),
        speedup(f"keys(), {where}", main, lambda dm: dm.keys(), repeats),
        speedup(f"itemcount(), {where}", main, lambda dm: dm.itemcount(), repeats),
        speedup(
            f"get_merged of a small key every session holds, {where}",
            main,
            lambda dm: dm.get_merged(SMALL_KEY),
            repeats,
        ),
        speedup(
            f"get_merged_matching('rate/'), 2 small keys, {where}",
            main,
            lambda dm: dm.get_merged_matching("rate/"),
            repeats,
        ),
        speedup(
            f"get_merged of a 115 KiB pickled list, {n_large:,} sessions",
            large,
            lambda dm: dm.get_merged("big/list"),
            repeats,
        ),
        speedup(
            f"get_merged of a 1 MiB array in a side file, {n_large:,} sessions",
            large,
            lambda dm: dm.get_merged("big/array"),
            repeats,
        ),
    ]
    return rows


# -- building -------------------------------------------------------------------------------


def rewrite_some(basepath: str, names: list[str], start: int, count: int) -> None:
    """Change one value in *count* sessions, taking them in turn from *start*."""
    dm = DataManager.from_path(basepath)
    for k in range(start, start + count):
        name = names[k % len(names)][: -len(".sqlite")]
        with dm.session(name) as s:
            s["seed"] = -k


def build_rows(main: str, repeats: int) -> list[Row]:
    """Full build against one unindexed items(); incremental after 1% changed against full."""
    switch = IndexSwitch(main)
    dm = DataManager.from_path(main)
    n = len(session_files(main))
    summaries = {}

    def full() -> None:
        summaries["full"] = dm.build_index()

    times = interleaved(
        {
            "build": Run(full, switch.hide, switch.drop_aside),
            "items": Run(dm.items, switch.hide, switch.show),
        },
        repeats,
    )
    assert summaries["full"].read == n, summaries["full"]
    rows = [
        Row(
            f"full build_index(), {n:,} sessions, against one unindexed items()",
            times["build"],
            times["items"],
            "build / items()",
            times["build"] / times["items"],
        ),
    ]

    names = session_files(main)
    changed = max(1, n // 100)
    turn = [0]

    def change() -> None:
        rewrite_some(main, names, turn[0] * changed, changed)
        turn[0] += 1

    def incremental() -> None:
        summaries["incremental"] = dm.build_index()

    times = interleaved(
        {
            "incremental": Run(incremental, change),
            "full": Run(full, switch.hide, switch.drop_aside),
        },
        repeats,
    )
    summary = summaries["incremental"]
    assert (summary.read, summary.kept) == (changed, n - changed), summary
    rows.append(
        Row(
            f"build_index() after {changed:,} of {n:,} sessions changed, against a full build",
            times["incremental"],
            times["full"],
            "incremental / full",
            times["incremental"] / times["full"],
        ),
    )
    return rows


# -- the peers ------------------------------------------------------------------------------


def peer_stores(root: str, n: int) -> dict[str, str]:
    """The same *n* one-run results in diskcache and signac, where installed, written once."""
    stores = {}
    try:
        import diskcache
    except ImportError:
        pass
    else:
        path = os.path.join(root, f"peer-{n}.diskcache")
        if not os.path.exists(path + ".done"):
            shutil.rmtree(path, ignore_errors=True)  # ours, from an interrupted run
            with diskcache.Cache(path) as cache:
                for i in range(n):
                    cache[f"run-{i}"] = session_values("peer", i, n)["result"]
            open(path + ".done", "w").close()
        stores["diskcache"] = path
    try:
        import signac
    except ImportError:
        pass
    else:
        path = os.path.join(root, f"peer-{n}.signac")
        if not os.path.exists(path + ".done"):
            shutil.rmtree(path, ignore_errors=True)
            project = signac.init_project(path)
            for i in range(n):
                job = project.open_job({"run": i}).init()
                job.document["result"] = session_values("peer", i, n)["result"]
            open(path + ".done", "w").close()
        stores["signac"] = path
    return stores


def collect_diskcache(path: str) -> list[Any]:
    import diskcache

    with diskcache.Cache(path) as cache:
        return sorted(cache[key] for key in cache)


def collect_signac(path: str) -> list[Any]:
    import signac

    project = signac.get_project(path)
    return sorted(job.document()["result"] for job in project.find_jobs())


def peer_rows(peer: str, stores: dict[str, str], repeats: int) -> tuple[list[Row], list[str]]:
    """Collecting one key from one-run sessions: datamanager with and without index, and peers."""
    n = len(session_files(peer))
    switch = IndexSwitch(peer)
    dm = DataManager.from_path(peer)
    answers = Answers("collecting one key")

    def ours() -> None:
        answers.keep(sorted(dm.get("result").values()))

    def unindexed_done() -> None:
        switch.show()
        answers.check()

    runs = {
        "indexed": Run(ours, switch.show, answers.check),
        "unindexed": Run(ours, switch.hide, unindexed_done),
    }
    collect = {"diskcache": collect_diskcache, "signac": collect_signac}
    for name, path in stores.items():
        runs[name] = Run(lambda c=collect[name], p=path: answers.keep(c(p)), after=answers.check)
    times = interleaved(runs, repeats)
    what = f"collect one key from {n:,} one-run sessions"
    rows = [
        Row(
            f"{what}: datamanager",
            times["indexed"],
            times["unindexed"],
            "unindexed / indexed",
            times["unindexed"] / times["indexed"],
        ),
    ]
    notes = []
    for peer_name in ("diskcache", "signac"):
        if peer_name in times:
            rows.append(
                Row(
                    f"{what}: against {peer_name}",
                    times["indexed"],
                    times[peer_name],
                    f"{peer_name} / indexed",
                    times[peer_name] / times["indexed"],
                )
            )
            rows.append(
                Row(
                    f"{what}: unindexed against {peer_name}",
                    times["unindexed"],
                    times[peer_name],
                    f"{peer_name} / unindexed",
                    times[peer_name] / times["unindexed"],
                )
            )
        else:
            notes.append(f"{peer_name} is not installed: its rows are skipped")
    return rows, notes


# -- scaling --------------------------------------------------------------------------------


def stat_sessions(basepath: str) -> int:
    """The floor of validating an index: list the directory and stat each session file."""
    count = 0
    with os.scandir(basepath) as it:
        for entry in it:
            if entry.name.endswith(".sqlite") and not entry.name.startswith("."):
                entry.stat()
                count += 1
    return count


def scaling_line(basepath: str, repeats: int) -> list[str]:
    """Validating the index (an indexed itemcount()) at one size, and the index's size."""
    dm = DataManager.from_path(basepath)
    IndexSwitch(basepath).show()
    dm.build_index()  # up to date, so that every session is served
    n = len(session_files(basepath))
    times = interleaved(
        {"itemcount": Run(dm.itemcount), "scandir+stat": Run(lambda: stat_sessions(basepath))},
        repeats,
    )
    t, floor = times["itemcount"], times["scandir+stat"]
    index_size = os.path.getsize(os.path.join(basepath, ".index.sqlite"))
    return [
        f"{n:,}",
        ms(t),
        f"{t / n * 1e6:.1f} us",
        ms(floor),
        f"{t / floor:.1f}",
        f"{index_size / MiB:.1f} MiB",
        f"{index_size / n:,.0f} B",
        f"{dir_bytes(basepath) / n:,.0f} B",
    ]


# -- the report -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (a minute)")
    parser.add_argument("--sessions", type=int, help="sessions of the main directory (10,000)")
    parser.add_argument("--repeat", type=int, help="best of N interleaved runs (5; 3 if --quick)")
    parser.add_argument(
        "--scaling", action="store_true", help="add 100,000 sessions to the scaling table (slow)"
    )
    parser.add_argument(
        "--dir",
        default=os.path.dirname(REPO),
        help="folder that holds bench_index/ (default: beside the repository, same disk)",
    )
    args = parser.parse_args(argv)
    n = args.sessions or (1_000 if args.quick else 10_000)
    n_large = 50 if args.quick else 200
    n_peer = 200 if args.quick else 1_000
    repeats = args.repeat or (3 if args.quick else 5)
    workers = os.cpu_count() or 1
    root = os.path.join(args.dir, "bench_index")
    os.makedirs(root, exist_ok=True)

    started = time.perf_counter()
    main_dir = data_dir(root, "main", n, workers)
    large_dir = data_dir(root, "large", n_large, workers)
    peer_dir = data_dir(root, "peer", n_peer, workers)
    stores = peer_stores(root, n_peer)
    for path in (main_dir, large_dir, peer_dir):
        IndexSwitch(path).show()
        DataManager.from_path(path).build_index()  # up to date before the rows read it

    rows = collation_rows(main_dir, large_dir, repeats)
    rows += build_rows(main_dir, repeats)
    peer, notes = peer_rows(peer_dir, stores, repeats)
    rows += peer

    sizes = sorted({1_000, n} | ({100_000} if args.scaling else set()))
    scaling = []
    for size in sizes:
        if size == 100_000 and not os.path.exists(os.path.join(root, f"main-{size}.data")):
            # Sessions of the main directory, times two for the index and headroom.
            need = 2 * size * dir_bytes(main_dir) // n
            free = shutil.disk_usage(root).free
            if need > free:
                notes.append(
                    f"100,000 sessions need ~{need >> 30} GiB, {free >> 30} GiB free: skipped"
                )
                continue
        scaling.append(scaling_line(data_dir(root, "main", size, workers), repeats))

    print(
        f"\ndatamanager index benchmark ({'quick' if args.quick else 'full'} run, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, data in {root})"
    )
    print(
        f"Best of {repeats} interleaved runs each, os.sync() before each; warm page cache. "
        "Unindexed: the same directory with its index moved out.\n"
    )
    print_table(
        ["measurement", "datamanager", "baseline", "ratio of", "ratio"],
        [row.cells() for row in rows],
    )
    print(
        "\nValidating the index: an indexed itemcount() against listing + stat of the sessions\n"
    )
    print_table(
        [
            "sessions",
            "itemcount()",
            "per session",
            "scandir+stat",
            "ratio",
            "index",
            "index/session",
            "data/session",
        ],
        scaling,
    )
    for note in notes:
        print(f"note: {note}")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
