"""The index of a data directory: building it, its tables, and what it may never do."""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import subprocess

import pytest

from datamanager import DataManager, DataManagerWarning
from datamanager._format import INDEX_NAME

from conftest import start_python
from test_index_consistency import (
    SMALL,
    build_directory,
    collate_all,
    index_aside,
    remove_session,
    snapshot,
    write_session,
)


def _index(dm: DataManager) -> str:
    return os.path.join(dm.basepath, INDEX_NAME)


def _answers(dm: DataManager) -> dict:
    """What collation answers, without the warnings it gives."""
    return {name: answer for name, (answer, _) in collate_all(dm, stricts=(False,)).items()}


# -- building --


def test_a_second_build_reads_only_changed_sessions_and_drops_gone_ones(dm):
    for i in range(5):
        write_session(dm, f"s{i}", i)
    first = dm.build_index()
    assert (first.sessions, first.read, first.kept, first.dropped) == (5, 5, 0, 0)
    assert first.path == _index(dm) and first.unsettled == 0 and first.skipped == []
    again = dm.build_index()
    assert (again.sessions, again.read, again.kept, again.dropped) == (5, 0, 5, 0)
    with dm.session("s1") as s:
        s["int"] = 8  # the same size
    remove_session(dm, "s2")
    remove_session(dm, "s3")
    write_session(dm, "s5", 5)
    third = dm.build_index()
    assert (third.sessions, third.read, third.kept, third.dropped) == (4, 2, 2, 2)
    assert "4 sessions (2 read, 2 unchanged, 2 gone, 0 still being written)" in str(third)
    assert sorted(dm.index_tables()["sessions"]["name"]) == ["s0", "s1", "s4", "s5"]


def test_sessions_that_cannot_be_indexed_are_listed_and_read_directly(dm):
    write_session(dm, "good", 1)
    with open(dm.session_filename("garbage"), "wb") as f:
        f.write(b"not a database" * 100)
    open(dm.session_filename("killed"), "wb").close()  # killed before its first commit
    summary = dm.build_index()
    assert (summary.sessions, summary.read) == (1, 1)
    assert [name for name, _ in summary.skipped] == ["garbage"]
    assert "not indexed: garbage" in str(summary)
    with pytest.warns(DataManagerWarning, match="garbage"):
        assert dm.get("int") == {"good": 7}


def test_the_index_is_replaced_whole_and_an_open_reader_keeps_the_old_one(dm):
    for i in range(3):
        write_session(dm, f"s{i}", i)
    dm.build_index()
    before = os.stat(_index(dm))
    items = dm.iteritems()
    first = next(items)  # a collation under way holds the index it started with
    write_session(dm, "s3", 3)
    with dm.session("s0") as s:
        s["p/0"] = 100
    dm.build_index()
    after = os.stat(_index(dm))
    assert after.st_ino != before.st_ino  # renamed into place, not rewritten
    assert sorted(os.listdir(dm.basepath)) == sorted(
        [INDEX_NAME, "s0.sqlite", "s1.sqlite", "s2.sqlite", "s3.sqlite"]
    )  # no temporary file left
    rest = [first, *items]
    assert len(rest) == 3 * (len(SMALL) + 3)  # the sessions it started with, whole
    assert ("p/0", 0) in rest or ("p/0", 100) in rest


#: Holds a transaction open on session "held" until a line comes on stdin.
HELD_WRITER = """
import sys
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1], journal_mode=sys.argv[2])
with dm.session("held") as s:
    s["value"] = 1
    with s.transaction():
        s["value"] = 2
        print("inside", flush=True)
        sys.stdin.readline()
print("committed", flush=True)
"""
#: Writes session "busy" without pause until killed.
BUSY_WRITER = """
import sys
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1], journal_mode=sys.argv[2])
with dm.session("busy") as s:
    i = 0
    while True:
        i += 1
        s["value"] = i
        if i == 1:
            print("writing", flush=True)
"""


def _files_of(dm: DataManager, names: tuple[str, ...], ctime: bool = True) -> dict:
    """Bytes, inode and times of the files of sessions *names* (not SQLite's -shm,
    the readers' shared memory); with *ctime* false, the change time left out."""
    return {
        path: state if ctime else state[:3] + state[4:]
        for path, state in snapshot(dm.basepath).items()
        if os.path.basename(path).startswith(names) and not path.endswith("-shm")
    }


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_building_never_blocks_or_modifies_a_session(tmp_path, journal_mode):
    """A build beside a writer inside a transaction (and, in WAL mode, one writing all along).

    The build finishes while the transaction holds its lock, indexes only
    what was committed, and leaves every file as it was: the closed
    sessions' down to their inode and times, the held one's but for its
    change time (SQLite running as root chowns a ``-wal`` file to its
    database's owner on every open, which sets it).
    """
    dm = DataManager("sweep", str(tmp_path), journal_mode=journal_mode)
    for i in range(3):
        write_session(dm, f"quiet{i}", i)
    args = (str(tmp_path), journal_mode)
    with contextlib.ExitStack() as stack:
        held = stack.enter_context(start_python(HELD_WRITER, *args, stdin=subprocess.PIPE))
        assert held.stdout.readline() == "inside\n", held.stderr.read()
        if journal_mode == "wal":
            # (A writer without pause starves rollback-journal readers for seconds.)
            busy = stack.enter_context(start_python(BUSY_WRITER, *args))
            stack.callback(busy.kill)
            assert busy.stdout.readline() == "writing\n", busy.stderr.read()
        quiet, before = _files_of(dm, ("quiet",)), _files_of(dm, ("held",), ctime=False)
        summary = dm.build_index()
        tables = dm.index_tables()
        assert _files_of(dm, ("quiet",)) == quiet
        assert _files_of(dm, ("held",), ctime=False) == before
        held.stdin.write("go\n")
        held.stdin.flush()
        assert held.stdout.readline() == "committed\n", held.stderr.read()
    assert summary.sessions == 4 + (journal_mode == "wal")
    assert tables["items"].set_index(["session", "key"]).loc[("held", "value"), "cached"]
    # The index holds what "held" had committed; what it committed since is read directly.
    assert pickle.loads(_cached(dm, "held", "value")) == 1
    assert dm.get("value")["held"] == 2


def _cached(dm: DataManager, session: str, key: str) -> bytes:
    """The value of *key* of *session* as the index holds it."""
    conn = sqlite3.connect(f"file:{_index(dm)}?mode=ro", uri=True)
    try:
        (cached,) = conn.execute(
            "SELECT i.value FROM items AS i JOIN sessions AS s ON s.id = i.session "
            "WHERE s.name = ? AND i.key = ?",
            (session, key),
        ).fetchone()
    finally:
        conn.close()
    return cached


# -- an index that cannot be used --


def _damage_index(dm: DataManager, how: str) -> None:
    path = _index(dm)
    if how == "garbage":
        with open(path, "r+b") as f:
            f.seek(0)
            f.write(b"garbage!" * 16)  # the SQLite header is gone
    elif how == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    else:
        conn = sqlite3.connect(path)
        with conn:
            if how == "other version":
                conn.execute("UPDATE info SET value = '99' WHERE name = 'version'")
            else:  # a row of the wrong type where a number belongs
                conn.execute("UPDATE sessions SET created = 'yesterday'")
        conn.close()


@pytest.mark.parametrize("how", ["garbage", "truncated", "other version", "damaged row"])
def test_a_damaged_or_foreign_index_is_ignored_with_a_warning(tmp_path, how):
    dm = DataManager("sweep", str(tmp_path))
    build_directory(dm, legacy=False)
    dm.build_index()
    with index_aside(dm):
        expected = collate_all(dm, stricts=(False,))
    _damage_index(dm, how)
    damaged = snapshot(dm.basepath)
    with pytest.warns(DataManagerWarning, match=r"ignoring the index .*build_index\(\)"):
        dm.get("int")
    for name, (answer, warned) in collate_all(dm, stricts=(False,)).items():
        assert answer == expected[name][0], name
        ignoring = [w for w in warned if "ignoring the index" in w[1]]
        assert len(ignoring) == 1, name  # once per call, beside what it says anyway
        assert [w for w in warned if w not in ignoring] == expected[name][1], name
    assert snapshot(dm.basepath) == damaged  # left for build_index to replace
    assert len(dm.index_tables()["sessions"]) == 8  # built afresh in memory
    summary = dm.build_index()
    assert (summary.sessions, summary.read, summary.kept) == (8, 8, 0)  # nothing kept
    assert collate_all(dm, stricts=(False,)) == expected
