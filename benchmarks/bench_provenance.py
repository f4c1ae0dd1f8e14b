"""Benchmark what recording the code's provenance costs a process's first write.

A fresh process's first write creates its session, and with it the session's
metadata: ``git status`` once, and when the code is dirty ``git diff`` once,
whose text is stored in the data directory's file store.  The script runs a
writer from inside a clone of this repository, clean, with a small edit and
with an edit whose diff exceeds the 1 MiB cap, and from a folder outside any
repository (the baseline: no git answer to wait for).  The cases take turns;
the best of ``--repeat`` runs of each is kept.  Only the time of the first
write is measured, inside the writer, not the start of Python.

Run ``python benchmarks/bench_provenance.py`` (``--repeat 5`` by default);
``--baseline DIR`` also runs each case with the datamanager package found in
``DIR`` (a checkout of an older version), in turns with this one, and prints
the ratio of this one's time to it.  The script always exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

WRITER = """
import sys, time
import _checkout  # noqa: F401  (measure this checkout)
from datamanager import DataManager
dm = DataManager("bench", sys.argv[1])
s = dm.session()
start = time.perf_counter()
s["x"] = 1
print(time.perf_counter() - start)
s.close()
"""
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def first_write(folder: str, data: str, package: str) -> float:
    """Seconds of the first write of a fresh writer whose script lives in *folder*.

    *package* is the folder the writer imports datamanager from.
    """
    script = os.path.join(folder, "bench_writer.py")
    with open(script, "w") as file:
        file.write(WRITER)
    env = dict(os.environ, PYTHONPATH=package)
    done = subprocess.run(
        [sys.executable, script, data], cwd=folder, env=env, capture_output=True, text=True
    )
    shutil.rmtree(data, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", metavar="DIR", help="another checkout to compare with")
    args = parser.parse_args()
    top = tempfile.mkdtemp(prefix="bench_provenance_")
    try:
        outside = os.path.join(top, "outside")
        os.mkdir(outside)
        clones = {}
        for case in ("clean", "small edit", "edit over the cap"):
            clone = os.path.join(top, case.replace(" ", "_"))
            subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
            # The writer script is no part of the code: keep it untracked.
            with open(os.path.join(clone, ".git", "info", "exclude"), "a") as file:
                file.write("bench_writer.py\n")
            clones[case] = clone
        # A fresh clone's files are as new as its index, so git would compare
        # their contents at every status ("racily clean"); an index written
        # a second later ends that, as in a repository in daily use.
        time.sleep(1.1)
        for clone in clones.values():
            subprocess.run(["git", "-C", clone, "update-index", "-q", "--refresh"], check=True)
        with open(os.path.join(clones["small edit"], "README.rst"), "a") as file:
            file.write("\nAn edit.\n")
        with open(os.path.join(clones["edit over the cap"], "README.rst"), "a") as file:
            file.write("".join(f"line {i} of a large edit\n" for i in range(60_000)))
        cases = {"outside a repository": outside, **clones}
        packages = [ROOT] + ([os.path.abspath(args.baseline)] if args.baseline else [])
        best = {(case, p): float("inf") for case in cases for p in packages}
        data = os.path.join(top, "data")
        for _ in range(args.repeat):
            for case, folder in cases.items():
                for package in packages:
                    seconds = first_write(folder, data, package)
                    best[case, package] = min(best[case, package], seconds)
        base = best["outside a repository", ROOT]
        print(f"first write, best of {args.repeat} fresh processes:")
        header = f"{'case':<24} {'ms':>8} {'/outside':>9}"
        print(header + (f" {'baseline ms':>12} {'/baseline':>10}" if args.baseline else ""))
        for case in cases:
            seconds = best[case, ROOT]
            line = f"{case:<24} {seconds * 1e3:8.1f} {seconds / base:9.2f}"
            if args.baseline:
                old = best[case, packages[1]]
                line += f" {old * 1e3:12.1f} {seconds / old:10.2f}"
            print(line)
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
