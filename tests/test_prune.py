"""Pruning a data directory: exactly the leftovers go, every value and every live writer stays."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datamanager import DataManager
from datamanager import _format as fmt
from datamanager.errors import DataManagerWarning
from datamanager.prune import REMOVES_LOCKS

from conftest import start_python, stress_size

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="which files are held open is read from /proc"
)

SHELVES = Path(__file__).parent / "data" / "legacy_shelves" / "py2_dumbdbm.data"
BIG = 300_000  # float64 items: a side file
OLD = time.time() - 3600

# A writer that keeps its session open across the prune, then writes again.
WRITER = """
import sys
import numpy as np
from datamanager import DataManager

dm = DataManager.from_path(sys.argv[1], journal_mode=sys.argv[3])
big = int(sys.argv[5])
locking = sys.argv[4] in ("locking", "holding")
s = dm.locking_session(sys.argv[2]) if locking else dm.session(sys.argv[2])
if sys.argv[4] == "empty":
    s.update_metadata({"started": 1})  # the file exists, with no key yet
elif sys.argv[4] == "transaction":
    t = s.transaction()
    t.__enter__()
    s["big"] = np.arange(float(big))  # its side file is written, its key not committed
else:
    s["first"] = 1
    s["big"] = np.arange(float(big))
if sys.argv[4] == "holding":
    s.acquire()
print("ready", flush=True)
sys.stdin.readline()
if sys.argv[4] == "transaction":
    t.__exit__(None, None, None)
elif sys.argv[4] == "holding":
    s.release()
s["late"] = 2
s["late_big"] = np.arange(float(big)) + 1
print("wrote", flush=True)
sys.stdin.readline()
s.close()
"""

# An export killed while it writes: it leaves its temporary file.
EXPORT = """
import sys
from datamanager import DataManager
from datamanager.hdf5 import export_hdf5

dm = DataManager.from_path(sys.argv[1])


class Paused:
    def iter_sessions(self, strict=False):
        print("writing", flush=True)
        sys.stdin.readline()  # killed here
        yield from dm.iter_sessions()


export_hdf5(Paused(), sys.argv[2], progress=False)
"""

HOLD_LOCK = """
import sys
from filelock import FileLock

with FileLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def _age(*paths: str) -> None:
    for path in paths:
        os.utime(path, (OLD, OLD))


def _age_tree(top: str, keep: set[str]) -> None:
    """Make every file and folder under *top* an hour old, except those in *keep*."""
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(root, name)
            if path not in keep:
                _age(path)


def _values(dm: DataManager) -> dict[str, dict[str, object]]:
    with pytest.warns(DataManagerWarning):  # the user's own files are reported, not read
        return {r.name: dict(r.items()) for r in dm.iter_sessions()}


def _same(a: dict[str, dict[str, object]], b: dict[str, dict[str, object]]) -> bool:
    if a.keys() != b.keys():
        return False
    for name in a:
        if a[name].keys() != b[name].keys():
            return False
        for key, value in a[name].items():
            other = b[name][key]
            if isinstance(value, np.ndarray):
                if not np.array_equal(value, other):
                    return False
            elif value != other:
                return False
    return True


def _add(path: str, data: bytes = b"") -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _side(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, fmt.new_side_name())
    np.save(path, np.zeros(10))
    return path


def _prune_cli(basepath: str, *flags: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "datamanager", "prune", basepath, *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("removed " if "--apply" in flags else "dry run: ")
    return lines[:-1]


def test_prune_removes_exactly_the_leftovers_while_writers_write(dm, tmp_path):
    base = dm.basepath
    j = lambda *parts: os.path.join(base, *parts)  # noqa: E731
    with dm.session("kept") as s:
        s["small"] = [1, 2]
        s["big"] = np.ones(BIG)
        s["text"] = "x"
    with dm.locking_session("shared") as s:
        s["n"] = 1
    with dm.session("empty") as s:  # a key written and deleted: no key, an empty blob folder
        s["gone"] = np.ones(BIG)
        del s["gone"]
    with dm.session("empty-young") as s:
        s.update_metadata({"note": "just made"})
    for name in ("erin.lab.dat", "erin.lab.dir", "erin.lab.bak"):
        shutil.copy2(SHELVES / name, j(name))
    assert dm.migrate() == ["erin.lab"]
    for name in ("erin.lab.c0ffee.dat", "erin.lab.c0ffee.dir", "erin.lab.c0ffee.bak"):
        shutil.copy2(SHELVES / name, j(name))  # not migrated

    orphan = _side(j("kept.blobs"))
    young_orphan = _side(j("kept.blobs"))
    _add(j("kept.blobs", "notes.txt"), b"a user's note")
    killed_folder = os.path.dirname(_side(j("killed.blobs")))
    os.mkdir(j("odd.blobs"))
    _add(j("odd.blobs", "readme.txt"), b"not put there by a writer")
    _add(j("README.txt"), b"what this sweep is")
    _add(j("data.csv"), b"1,2\n")
    _add(j(".index.sqlite"), b"the index")
    index_temp = _add(j(fmt.new_index_temp_name()))
    index_journal = _add(index_temp + "-journal")
    young_index_temp = _add(j(fmt.new_index_temp_name()))
    recording_temp = _add(j(fmt.RECORDING_TEMP_PREFIX + "ab12cd_9"), b"0.1\t2\n")
    not_an_export = _add(j(".notes.txt.abcd1234" + fmt.EXPORT_TEMP_SUFFIX), b"plain text")
    stray_lock = _add(j("nobody.sqlite.lock"))

    export = start_python(EXPORT, base, j("results.h5"), stdin=subprocess.PIPE)
    live = {
        name: start_python(WRITER, base, name, journal, kind, str(BIG), stdin=subprocess.PIPE)
        for name, journal, kind in [
            ("live-wal", "wal", "plain"),
            ("live-idle", "delete", "empty"),
            ("live-txn", "delete", "transaction"),
            ("live-locking", "delete", "locking"),
            ("live-holding", "delete", "holding"),
        ]
    }
    holder = start_python(HOLD_LOCK, j("held.sqlite.lock"), stdin=subprocess.PIPE)
    try:
        assert export.stdout.readline() == "writing\n"
        export.send_signal(signal.SIGKILL)
        export.wait()
        [export_temp] = [j(n) for n in os.listdir(base) if n.startswith(".results.h5.")]
        for name, proc in live.items():
            assert proc.stdout.readline() == "ready\n", f"{name}: {proc.stderr.read()}"
        assert holder.stdout.readline() == "held\n"

        # Everything an hour old, writers and held files too: age alone must
        # protect nothing that is in use.
        young = {young_orphan, young_index_temp, j("empty-young.sqlite")}
        _age_tree(base, young)
        before = _values(dm)
        flags = ("--empty-sessions", "--migrated-shelves")
        dry = _prune_cli(base, *flags)  # lists, removes nothing
        assert _same(_values(dm), before) and all(os.path.lexists(p) for p in dry)

        removed = _prune_cli(base, "--apply", *flags)

        expected = {
            orphan,
            killed_folder,
            index_temp,
            index_journal,
            recording_temp,
            export_temp,
            j("empty.sqlite"),
            j("empty.blobs"),
            j("erin.lab.dat"),
            j("erin.lab.dir"),
            j("erin.lab.bak"),
        }
        locks = [stray_lock, j("shared.sqlite.lock"), j("live-locking.sqlite.lock")]
        if REMOVES_LOCKS:  # the last one is not held between operations
            expected.update(locks)
        assert removed == dry == sorted(expected)
        for path in expected:
            assert not os.path.lexists(path), path
        kept = [young_orphan, young_index_temp, not_an_export, j("kept.blobs", "notes.txt")]
        kept += [j("odd.blobs", "readme.txt"), j("README.txt"), j("data.csv"), j(".index.sqlite")]
        kept += [j("held.sqlite.lock"), j("live-holding.sqlite.lock"), j("erin.lab.c0ffee.dat")]
        kept += [] if REMOVES_LOCKS else locks
        kept += [j(f"{name}.sqlite") for name in live]
        for path in kept:
            assert os.path.lexists(path), path
        # The migrated shelf's values are read from its twin, as before.
        del before["empty"]
        assert _same(_values(dm), before)

        for name, proc in live.items():
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "wrote\n", f"{name}: {proc.stderr.read()}"
        after = _values(dm)
        for name in live:
            assert after[name]["late"] == 2, name
            assert np.array_equal(after[name]["late_big"], np.arange(float(BIG)) + 1), name
        assert np.array_equal(after["live-txn"]["big"], np.arange(float(BIG)))
        assert np.array_equal(after["live-wal"]["big"], np.arange(float(BIG)))
    finally:
        for proc in [export, *live.values(), holder]:
            proc.kill()
            proc.communicate()


def test_dry_default_removes_nothing_and_paths_are_sorted_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dm = DataManager("sweep", "rel")  # a relative datapath
    with dm.session("kept") as s:
        s["x"] = 1
    leftovers = [
        _add(os.path.join(dm.basepath, fmt.new_index_temp_name())),
        _side(os.path.join(dm.basepath, "kept.blobs")),
    ]
    if REMOVES_LOCKS:  # else left in place, they would be strays
        leftovers += [
            _add(os.path.join(dm.basepath, n)) for n in ("b.sqlite.lock", "a.sqlite.lock")
        ]
    _age_tree(dm.basepath, set())
    expected = sorted(os.path.abspath(p) for p in leftovers)
    assert dm.prune() == expected
    assert dm.prune(empty_sessions=True, migrated_shelves=True) == expected
    assert all(os.path.exists(p) for p in leftovers)
    assert dm.prune(dry=False) == expected
    assert not any(os.path.exists(p) for p in leftovers)
    assert dm.prune(dry=False) == [] and dm.get("x") == {"kept": 1}


def test_a_changed_migrated_shelf_and_a_session_with_task_records_stay(dm):
    os.makedirs(dm.basepath)
    for name in ("erin.lab.dat", "erin.lab.dir", "erin.lab.bak"):
        shutil.copy2(SHELVES / name, os.path.join(dm.basepath, name))
    assert dm.migrate() == ["erin.lab"]
    with dm.session("records") as s:
        s.update_records({"sweep.items/1": 3})  # no key, but a task record
    _age_tree(dm.basepath, set())
    # Written after the migration was verified: the twin lacks what changed.
    os.utime(os.path.join(dm.basepath, "erin.lab.dat"))
    assert dm.prune(empty_sessions=True, migrated_shelves=True) == []


# Increments a counter under a LockingSession's lock, checking a second way
# that no other process is inside at the same time.
INCREMENT = """
import os, sys
from datamanager.locking import LockingSession

s = LockingSession(sys.argv[1])
inside = sys.argv[1] + ".inside"
print("ready", flush=True)
sys.stdin.readline()
for _ in range(int(sys.argv[2])):
    s.acquire()
    try:
        fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        sys.exit("two processes held the lock at once")
    os.close(fd)
    s["n"] = s["n"] + 1
    os.unlink(inside)
    s.release()
"""


@pytest.mark.stress
@pytest.mark.skipif(not REMOVES_LOCKS, reason="this filelock cannot have its lock files removed")
def test_removing_lock_files_keeps_locking_sessions_exclusive(dm):
    rounds, workers = stress_size(full=1000, ci=200), 4
    with dm.locking_session("counter") as s:
        s["n"] = 0
    lock = s.path + fmt.LOCK_SUFFIX
    procs = [
        start_python(INCREMENT, s.path, str(rounds), stdin=subprocess.PIPE) for _ in range(workers)
    ]
    removed = 0
    try:
        for proc in procs:
            assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        while any(proc.poll() is None for proc in procs):
            try:
                _age(lock)  # every lock file old: only whether it is held decides
            except FileNotFoundError:
                continue
            removed += len(dm.prune(dry=False))
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    assert [p.returncode for p in procs] == [0] * workers
    assert removed > 0  # the hazard was met
    with dm.session("counter") as s:
        assert s["n"] == rounds * workers


# Killed inside the transaction that writes its first key: it leaves a
# -journal, as a writer on another machine does while it writes.
KILLED_MIDWAY = """
import sys
from datamanager import DataManager

dm = DataManager.from_path(sys.argv[1], journal_mode="delete")
s = dm.session("midway")
s.update_metadata({"started": 1})
t = s.transaction()
t.__enter__()
s["x"] = 1
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_session_with_a_journal_is_not_taken_for_empty(dm):
    with dm.session("empty") as s:
        s.update_metadata({"note": 1})
    proc = start_python(KILLED_MIDWAY, dm.basepath, stdin=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate()
    midway = dm.session_filename("midway")
    assert os.path.exists(midway + "-journal")
    _age_tree(dm.basepath, set())
    assert dm.prune(dry=False, empty_sessions=True) == [dm.session_filename("empty")]
    assert os.path.exists(midway)


# Makes sessions and removes them, as a user cleaning up by hand would, with
# every file an hour old at once so that prune looks at each of them.
CHURN = """
import os, shutil, sys, time
import numpy as np
from datamanager import DataManager

dm = DataManager.from_path(sys.argv[1])
old = time.time() - 3600
for i in range(int(sys.argv[2])):
    with dm.session(f"s{i}") as s:
        s["i"] = i
        s["big"] = np.full(int(sys.argv[3]), float(i))
    folder = os.path.join(dm.basepath, f"s{i}.blobs")
    for path in (s.path, folder, *(os.path.join(folder, n) for n in os.listdir(folder))):
        os.utime(path, (old, old))
    if i % 2:  # removed by hand, session file first: its blob folder is left alone a moment
        os.unlink(os.path.join(dm.basepath, f"s{i}.sqlite"))
        shutil.rmtree(os.path.join(dm.basepath, f"s{i}.blobs"), ignore_errors=True)
"""


@pytest.mark.stress
def test_sessions_coming_and_going_while_prune_runs(dm):
    n = stress_size(full=200, ci=40)
    with dm.session("first") as s:
        s["i"] = -1
    churn = start_python(CHURN, dm.basepath, str(n), str(BIG))
    try:
        while churn.poll() is None:
            dm.prune(dry=False, empty_sessions=True)
    finally:
        _, err = churn.communicate()
    assert churn.returncode == 0, err
    dm.prune(dry=False, empty_sessions=True)
    values = dm.get("i", strict=True)
    assert values == {"first": -1, **{f"s{i}": i for i in range(0, n, 2)}}
    for i in range(0, n, 2):
        assert np.array_equal(dm.get("big")[f"s{i}"], np.full(BIG, float(i)))
