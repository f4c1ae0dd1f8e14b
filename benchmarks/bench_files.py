"""Benchmark hashing and storing files against the standard library.

Baselines, measured in the same run on the same files, the two taking turns:

* ``hashlib.file_digest(f, "sha256")`` (Python >= 3.11) for
  :func:`datamanager.hash_files` on one core;
* ``shutil.copyfile`` then ``hashlib.file_digest`` of the copy, then
  ``os.fsync``, for :meth:`DataManager.store_file`, which copies and hashes
  in one pass (and syncs the copy before naming it).

Run ``python benchmarks/bench_files.py`` (``--quick`` for a small run,
``--dir DIR`` for where the files go; default beside the repository, on the
same disk).  The files are written and ``os.sync()`` called before timing;
they are then read from the page cache, so the figures compare the hashing
and copying, not the disk.  Best of ``--repeat`` runs.  Always exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

import _checkout  # noqa: F401  (measure this checkout)
from datamanager import DataManager, hash_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20


def best(functions: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """The best time of each function, the functions taking turns."""
    times = {name: float("inf") for name in functions}
    for _ in range(repeat):
        for name, run in functions.items():
            start = time.perf_counter()
            run()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def digest_all(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(hashlib.file_digest(f, "sha256").hexdigest())
    return out


def copy_then_digest(paths: list[str], folder: str) -> None:
    for i, path in enumerate(paths):
        target = os.path.join(folder, f"copy{i}")
        shutil.copyfile(path, target)
        with open(target, "rb") as f:
            hashlib.file_digest(f, "sha256")
            os.fsync(f.fileno())
        os.unlink(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 files of 16 MiB")
    parser.add_argument("--dir", default=None, help="where the files go")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if not hasattr(hashlib, "file_digest"):
        print("hashlib.file_digest needs Python >= 3.11; nothing to compare against")
        return 0
    count, size = (4, 16) if args.quick else (8, 64)
    with tempfile.TemporaryDirectory(dir=args.dir or os.path.dirname(REPO)) as folder:
        paths = []
        for i in range(count):
            path = os.path.join(folder, f"param{i}.bin")
            with open(path, "wb") as f:
                f.write(os.urandom(size * MiB))
            paths.append(path)
        os.sync()
        assert list(hash_files(paths, processes=1)["sha256"]) == digest_all(paths)
        total = count * size
        hashing = best(
            {
                "file_digest": lambda: digest_all(paths),
                "hash_files": lambda: hash_files(paths, processes=1),
            },
            args.repeat,
        )
        small = []
        os.makedirs(os.path.join(folder, "small"))
        for i in range(2000):
            small.append(os.path.join(folder, "small", f"param{i}.txt"))
            with open(small[-1], "wb") as f:
                f.write(os.urandom(1000))
        os.sync()
        many = best(
            {
                "file_digest": lambda: digest_all(small),
                "hash_files": lambda: hash_files(small, processes=1),
            },
            args.repeat,
        )
        dm = DataManager("bench", folder)
        scratch = os.path.join(folder, "scratch")
        os.makedirs(scratch)

        def store_all() -> None:
            for path in paths:
                dm.store_file(path)
            shutil.rmtree(os.path.join(dm.basepath, ".files"))  # store anew each time

        storing = best(
            {"copy+digest": lambda: copy_then_digest(paths, scratch), "store_file": store_all},
            args.repeat,
        )
    rows = [
        ("hash_files, 1 process, MiB/s", total / hashing["hash_files"]),
        ("hashlib.file_digest, MiB/s", total / hashing["file_digest"]),
        ("  ratio hash_files / file_digest", hashing["file_digest"] / hashing["hash_files"]),
        ("2,000 files of 1 kB: hash_files, 1 process, files/s", 2000 / many["hash_files"]),
        ("2,000 files of 1 kB: hashlib.file_digest, files/s", 2000 / many["file_digest"]),
        ("  ratio hash_files / file_digest", many["file_digest"] / many["hash_files"]),
        ("store_file (copy and hash in one pass, fsync), MiB/s", total / storing["store_file"]),
        ("copyfile + file_digest + fsync, MiB/s", total / storing["copy+digest"]),
        ("  ratio store_file / copy + digest", storing["copy+digest"] / storing["store_file"]),
    ]
    print(f"{count} files of {size} MiB, Python {sys.version.split()[0]}, best of {args.repeat}")
    for name, value in rows:
        print(f"{name:<60} {value:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
