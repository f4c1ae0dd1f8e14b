"""Migrating legacy shelves: a migrate() killed at any moment hides no shelf key."""

from __future__ import annotations

import dbm.dumb
import os
import random
import shelve
import shutil
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

from datamanager import (
    CorruptSessionError,
    DataManager,
    DataManagerError,
    DataManagerWarning,
    Session,
)
from datamanager._format import blob_dir

from conftest import start_python, stress_size

MIGRATOR = """
import sys
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1], journal_mode=sys.argv[2])
print("migrating", flush=True)
print(dm.migrate(), flush=True)
"""
#: Kills that must land while the native twin exists unverified, per journal mode.
WANTED = 1
MAX_ATTEMPTS = 20


def _shelf_values(n: int) -> dict:
    values = {f"k/{i:05d}": [i, i / 7] for i in range(n)}
    values["big"] = np.arange(150_000.0)  # over the side-file threshold: <name>.blobs/
    return values


def _run(base: Path, journal_mode: str, kill_after: int | None) -> tuple[int, int | None]:
    """Migrate *base* in a child; SIGKILL it *kill_after* polls after the twin appears.

    Returns the number of polls from the twin's appearance to the child's exit
    (when not killed) and its exit status.
    """
    twin = base / "old.sqlite"
    proc = start_python(MIGRATOR, str(base.parent), journal_mode)
    try:
        assert proc.stdout.readline() == "migrating\n", proc.stderr.read()
        while not twin.exists() and proc.poll() is None:
            pass
        polls = 0
        # Polling the directory is the randomised amount of work that moves
        # the kill along the migration: no clock decides where it lands.
        while proc.poll() is None and (kill_after is None or polls < kill_after):
            twin.exists()
            polls += 1
        proc.kill()
        _, err = proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, -9), err
    return polls, proc.returncode


def _verified(twin: Path, scratch: Path) -> bool:
    """Whether *twin* records a verified migration in its last committed state.

    Read straight from SQLite, in a copy that SQLite may recover: a hot
    journal is rolled back, a WAL replayed, as the next writer would.
    """
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for suffix in ("", "-wal", "-journal"):
        if Path(f"{twin}{suffix}").exists():
            shutil.copy(f"{twin}{suffix}", scratch / f"twin{suffix}")
    conn = sqlite3.connect(scratch / "twin")
    try:
        row = conn.execute("SELECT 1 FROM meta WHERE name = 'migration_verified'")
        return row.fetchone() is not None
    except sqlite3.OperationalError:  # no table yet: killed before the first commit
        return False
    finally:
        conn.close()


def _snapshot(base: Path) -> dict:
    # Readers of a WAL file take their read locks in its -shm index: it may change.
    return {
        p: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in base.rglob("*")
        if not p.name.endswith("-shm")
    }


def _check_after_kill(base: Path, values: dict) -> bool:
    """Every shelf key readable with its value; return whether the twin is unverified."""
    dm = DataManager.from_path(str(base))
    twin = base / "old.sqlite"
    incomplete = twin.exists() and not _verified(twin, base.parent / "scratch")
    before = _snapshot(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = dm.keys()
        pairs = dm.items()
        big = dm.get("big")
        files = dm.session_filenames()
        problems = dm.verify()
    assert _snapshot(base) == before  # reading never writes
    assert keys == sorted(values)
    assert len(pairs) == len(values)  # the twin is read instead of the shelf, never beside it
    items = dict(pairs)
    assert all(items[k] == v for k, v in values.items() if k != "big")
    assert big.keys() == {"old"}
    np.testing.assert_array_equal(big["old"], values["big"])
    np.testing.assert_array_equal(items["big"], values["big"])
    messages = [str(w.message) for w in caught]
    assert all(w.category is DataManagerWarning and str(twin) in str(w.message) for w in caught)
    # A hot journal left by the kill is recovered by the reader, never a
    # reason to call the twin unreadable.
    assert not any("cannot be read" in m for m in messages), messages
    if incomplete:
        assert files == [str(base / "old")]
        assert problems and {p.path for p in problems} == {str(twin)}
        assert len(messages) == 4, messages  # one per collation call
        assert all(m.startswith(f"{twin}: incomplete migration") for m in messages), messages
        [problem] = problems
        assert "incomplete migration" in problem.message
    else:  # no twin (killed removing it), or a verified one
        read = twin if twin.exists() else base / "old"
        assert (files, messages, problems) == ([str(read)], [], [])
    return incomplete


@pytest.mark.stress
def test_killed_migrate_hides_no_shelf_key(tmp_path):
    values = _shelf_values(stress_size(full=20_000, ci=1_000))
    template = tmp_path / "template" / "sweep.data"
    template.mkdir(parents=True)
    with shelve.Shelf(dbm.dumb.open(str(template / "old"), "c")) as sh:
        sh.update(values)
    # One migration left to finish gives the length of the window in polls.
    done = tmp_path / "done" / "sweep.data"
    shutil.copytree(template, done)
    span, status = _run(done, "wal", kill_after=None)
    assert status == 0

    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    hits = {"wal": 0, "delete": 0}
    base = None
    for attempt in range(MAX_ATTEMPTS):
        # Stop once each journal mode had its kills in the window, with the
        # last kill leaving an incomplete twin for migrate() to replace.
        if min(hits.values()) >= WANTED and base is not None:
            break
        mode = ("wal", "delete")[attempt % 2]
        if base is None:
            base = tmp_path / f"kill{attempt}" / "sweep.data"
            shutil.copytree(template, base)
        # A base kept from the last attempt holds an incomplete twin: this
        # migration first discards it, and may be killed doing so.
        _run(base, mode, kill_after=rng.randrange(span + 1))
        if _check_after_kill(base, values):
            hits[mode] += 1
        else:
            base = None
    assert min(hits.values()) >= WANTED and base, f"kills in the window: {hits} (seed {seed})"

    dm = DataManager.from_path(str(base))
    assert dm.migrate() == ["old"]
    assert not _check_after_kill(base, values)
    # The side files of killed copies went with the twin they belonged to.
    assert len(os.listdir(blob_dir(str(base / "old.sqlite")))) == 1
    assert dm.migrate() == []
    assert not _check_after_kill(done, values)  # the migration left to finish


def _shelf_and_twin(dm, twin_meta=None):
    os.makedirs(dm.basepath)
    shelf = os.path.join(dm.basepath, "old")
    with shelve.Shelf(dbm.dumb.open(shelf, "c")) as sh:
        sh.update({"a": [1], "b": [2]})
    # As versions that let dm.session() take a shelf's name wrote it.
    with Session(dm.session_filename("old")) as twin:
        twin["a"] = [1]
        if twin_meta:
            twin.update_metadata(twin_meta)
    return shelf, twin.path


def test_unverified_twin_neither_hides_nor_doubles_the_shelf(dm):
    # What a migration killed between its copy and the end of its check leaves.
    _, twin = _shelf_and_twin(dm, {"migrated_from": "old"})
    match = "incomplete migration of legacy shelf .*old .migrate.. was interrupted"
    with pytest.warns(DataManagerWarning, match=match) as caught:
        assert dm.get_merged("a") == [1] and dm.get("b") == {"old": [2]}
    assert len(caught) == 2  # one per collation call
    [problem] = dm.verify()
    assert problem.path == twin and "run migrate() again" in problem.message
    assert dm.migrate() == ["old"]
    assert dm.session_filenames() == [twin] and dm.verify() == []
    assert dm.get_merged("b") == [2]


def test_a_session_of_its_own_named_like_a_shelf_hides_neither(dm):
    # Brian named its computer sessions <user>.<host>, as computer_session() does.
    shelf, twin = _shelf_and_twin(dm)
    with pytest.warns(DataManagerWarning, match="holds data of its own") as caught:
        assert dm.get_merged("b") == [2]
        assert dm.get("a") == {"old": [1], "old (legacy shelf)": [1]}  # neither hides the other
        assert sorted(dm.session_filenames()) == [shelf, twin]
    assert len(caught) == 3
    [problem] = dm.verify()
    assert problem.path == twin and "rename the shelf's files" in problem.message
    assert dm.migrate() == []  # leaves both alone
    assert sorted(os.listdir(dm.basepath)) == ["old.bak", "old.dat", "old.dir", "old.sqlite"]


@pytest.mark.parametrize(
    "entry", ["session", "computer_session", "locking_session", "locking_computer_session"]
)
def test_no_session_takes_the_name_of_an_unmigrated_shelf(dm, entry):
    # Brian named its computer sessions <user>.<host>, as computer_session() does:
    # a twin holding data of its own would be read under the shelf's name.
    name = dm.computer_name if "computer" in entry else "old"
    args = () if "computer" in entry else (name,)
    open_it = getattr(dm, entry)
    os.makedirs(dm.basepath)
    with shelve.Shelf(dbm.dumb.open(os.path.join(dm.basepath, name), "c")) as sh:
        sh.update({"a": [1], "b": [2]})
    with pytest.raises(DataManagerError, match=r"legacy shelf .* not migrated: run migrate\(\)"):
        open_it(*args)
    assert dm.get("a") == {name: [1]} and dm.itemcount() == 2 and dm.keys() == ["a", "b"]
    assert dm.verify() == []  # no twin, nothing to report
    assert dm.migrate() == [name]
    with open_it(*args) as s:  # the migrated shelf, going on
        s["a"] += [10]
        s["c"] = [3]
    assert dm.get_merged("a") == [1, 10] and dm.get_merged("b") == [2]
    assert dm.itemcount() == 3 and dm.session_filenames() == [s.path]
    assert dm.verify() == []


def test_a_twin_written_before_the_check_keeps_its_name_refused(dm):
    _shelf_and_twin(dm)
    with pytest.raises(DataManagerError, match="not migrated"):
        dm.session("old")
    assert dm.migrate() == []  # a session of its own: both stay, and are read


def test_keys_written_into_an_unverified_twin_stay_visible(dm):
    shelf, twin = _shelf_and_twin(dm, {"migrated_from": "old"})
    with Session(dm.session_filename("old")) as s:
        s["c"] = [3]  # a computer session of that name, after a killed migration (older versions)
    assert dm.migrate() == []  # a copy no more: left alone
    with pytest.warns(DataManagerWarning, match="holds data of its own"):
        assert dm.get("c") == {"old": [3]} and dm.get_merged("b") == [2]
        assert sorted(dm.session_filenames()) == [shelf, twin]


def test_migrate_leaves_an_unreadable_twin_to_the_user(dm):
    _, twin = _shelf_and_twin(dm)
    with open(twin, "wb") as f:
        f.write(b"not a database at all" * 100)
    with pytest.warns(DataManagerWarning, match="old.sqlite") as caught:
        assert dm.get("b") == {"old": [2]}
    assert ["cannot be read" in str(w.message) for w in caught] == [True, False]
    assert {p.path for p in dm.verify()} == {twin}
    with pytest.raises(CorruptSessionError, match="move it away"):
        dm.migrate()
    assert os.path.getsize(twin) == 2100  # nothing deleted that could not be read
