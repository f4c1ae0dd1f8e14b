"""The index of a data directory: building it, its tables, and what it may never do."""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import pickle
import shutil
import sqlite3
import struct
import subprocess
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

from datamanager import CorruptSessionError, DataManager, DataManagerWarning
from datamanager._format import INDEX_NAME, SIDE_FILE_THRESHOLD, blob_dir
from datamanager.index import CACHE_LIMIT

from conftest import ROOT, run_python, start_python, stress_size
from test_index_consistency import (
    HELD_WRITER,
    LEGACY,
    SMALL,
    assert_same_answers,
    build_directory,
    collate_all,
    index_aside,
    remove_session,
    settled,
    snapshot,
    write_session,
)


def _index(dm: DataManager) -> str:
    return os.path.join(dm.basepath, INDEX_NAME)


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


def test_migrated_shelves_collate_alike_through_the_index(tmp_path):
    """migrate() writes new sessions beside the indexed ones: read directly until a build."""
    dm = DataManager("sweep", str(tmp_path))
    shutil.copytree(LEGACY, dm.basepath)
    write_session(dm, "s0", 0)
    assert dm.build_index().sessions == 1  # shelves are not indexed
    keys = ["spikes", "label", "big", "int", "missing"]
    assert_same_answers(dm, keys, (False,))
    assert dm.migrate() == ["erin.lab", "erin.lab.c0ffee"]
    assert_same_answers(dm, keys, (False,))
    assert dm.build_index().read == 2
    assert_same_answers(dm, keys, (False,))
    assert settled(dm).all()


def test_a_data_directory_that_does_not_exist_is_not_created(tmp_path):
    dm = DataManager("nowhere", str(tmp_path))
    for method in (dm.build_index, dm.index_tables, lambda: dm.export_index(tmp_path / "t")):
        with pytest.raises(FileNotFoundError):
            method()
    assert os.listdir(tmp_path) == []


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
    readers = dm.iter_sessions()  # a collation under way: it holds the index it started with
    with next(readers) as first:
        assert first.name == "s0"
    with dm.session("s1") as s:
        s["int"] = 8
    write_session(dm, "s3", 3)
    dm.build_index()
    assert os.stat(_index(dm)).st_ino != before.st_ino  # renamed into place, not rewritten
    assert sorted(os.listdir(dm.basepath)) == sorted(
        [INDEX_NAME, "s0.sqlite", "s1.sqlite", "s2.sqlite", "s3.sqlite"]
    )  # no temporary file left
    rest = {}
    for reader in readers:
        rest[reader.name] = dict(reader.items())
    assert list(rest) == ["s1", "s2"]  # the sessions it started with, whole
    assert rest["s1"]["int"] == 7  # read from the old index, still open
    assert dm.get("int") == {"s0": 7, "s1": 8, "s2": 7, "s3": 7}  # the new one


def test_a_session_left_with_its_wal_file_is_served_after_a_quiet_build(dm):
    """As when a reader had it open while its writer closed it, or its writer was killed.

    Every process running as root that opens its ``-wal`` file, a reader
    too, sets the file's change time (SQLite chowns it to the database's
    owner), so that time cannot tell whether the session changed.
    """
    s = dm.session("s0")
    s["int"] = 7
    reader = sqlite3.connect(f"file:{dm.session_filename('s0')}?mode=ro", uri=True)
    reader.execute("SELECT count(*) FROM items").fetchone()
    s.close()  # cannot leave WAL mode while the reader has it open
    reader.close()
    assert os.path.exists(dm.session_filename("s0") + "-wal")
    dm.build_index()
    with index_aside(dm):
        assert dm.get("int") == {"s0": 7}  # read directly: opened again
    assert settled(dm)["s0"]
    with dm.session("s0") as s:
        s["int"] = 8  # the same size
    assert dm.get("int") == {"s0": 8}


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


def _files_of(dm: DataManager, prefix: str) -> dict:
    """:func:`snapshot` of the files of the sessions whose name starts with *prefix*."""
    return {
        path: state
        for path, state in snapshot(dm.basepath).items()
        if os.path.basename(path).startswith(prefix)
    }


#: Builds the index of argv[1], saying when it starts.
BUILDER = """
import sys
from datamanager import DataManager
dm = DataManager.from_path(sys.argv[1])
print("building", flush=True)
dm.build_index()
"""


@pytest.mark.stress
def test_a_build_killed_midway_leaves_the_old_index_whole(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    sessions = stress_size(400, 30)
    for i in range(sessions):
        with dm.session(f"s{i:04d}") as s:
            s.update({"i": i, "rate": [float(i)]})
    dm.build_index()
    with open(_index(dm), "rb") as f:
        old = f.read()
    for i in range(0, sessions, 2):  # work for the next build
        with dm.session(f"s{i:04d}") as s:
            s["i"] = -i
    with start_python(BUILDER, dm.basepath) as builder:
        assert builder.stdout.readline() == "building\n", builder.stderr.read()
        # Killed once its new index exists under a temporary name (or when done).
        while builder.poll() is None and not [
            name for name in os.listdir(dm.basepath) if name.startswith(INDEX_NAME + ".")
        ]:
            pass
        builder.kill()
    temps = [name for name in os.listdir(dm.basepath) if name.startswith(INDEX_NAME + ".")]
    with open(_index(dm), "rb") as f:
        assert f.read() == old or not temps  # the old one, unless the build had finished
    # Neither a stray file to warn about nor a stale answer.
    assert dm.get("i") == {f"s{i:04d}": -i if i % 2 == 0 else i for i in range(sessions)}
    summary = dm.build_index()
    assert (summary.sessions, summary.read) == (sessions, sessions // 2 if temps else 0)
    assert dm.get("i")["s0002"] == -2


def test_a_session_dated_ahead_of_the_clock_is_indexed_but_never_served(dm):
    """Its next write could keep its time, so its row may not vouch for it.

    As a session written by a host whose clock runs ahead would be; the build
    waits a second at most for the clock to pass it, then leaves it unsettled.
    """
    for i in range(2):
        write_session(dm, f"s{i}", i)
    ahead = os.stat(dm.session_filename("s1")).st_mtime_ns + 3600 * 10**9
    os.utime(dm.session_filename("s1"), ns=(ahead, ahead))
    summary = dm.build_index()
    assert (summary.sessions, summary.unsettled) == (2, 1)
    assert "1 still being written" in str(summary)
    assert settled(dm).to_dict() == {"s0": True, "s1": False}


def test_a_companion_file_listed_but_gone_leaves_its_session_unsettled(dm):
    """As a ``-journal`` its writer removes between the build's listing and its look at it.

    A dangling symbolic link is listed, and gone to ``stat``, every time.
    """
    for i in range(2):
        write_session(dm, f"s{i}", i)
    os.symlink(os.path.join(dm.basepath, "nowhere"), dm.session_filename("s1") + "-journal")
    summary = dm.build_index()
    assert (summary.sessions, summary.unsettled) == (2, 1)
    assert settled(dm).to_dict() == {"s0": True, "s1": False}
    assert_same_answers(dm, ["int", "missing"], (False,))


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_building_never_blocks_or_modifies_a_session(tmp_path, journal_mode):
    """A build beside a writer inside a transaction (and, in WAL mode, one writing all along).

    The build finishes while the transaction holds its lock, indexes only
    what was committed, and leaves every file as it was, down to its inode
    and times (see :func:`snapshot` for the two exceptions).
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
        quiet, before = _files_of(dm, "quiet"), _files_of(dm, "held")
        summary = dm.build_index()
        tables = dm.index_tables()
        assert _files_of(dm, "quiet") == quiet
        assert _files_of(dm, "held") == before
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
    for i in range(3):
        write_session(dm, f"s{i}", i)
    write_session(dm, "big", 9, inline=b"x" * (CACHE_LIMIT + 1))
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
    assert len(dm.index_tables()["sessions"]) == 4  # built afresh in memory
    summary = dm.build_index()
    assert (summary.sessions, summary.read, summary.kept) == (4, 4, 0)  # nothing kept
    assert collate_all(dm, stricts=(False,)) == expected


# -- tables --


def _stored_rows(path: str) -> list[tuple]:
    """``(key, pickle, side, side_size)`` of every value of session *path*, read by sqlite3."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT key, value, side, side_size FROM items ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()


#: How a small table's value file in its row starts: magic string, format version 1.0.
VALUE_FILE = b"\x93DMVAL\x01\x00"


def _table_kind(value: bytes) -> str | None:
    """``pandas.DataFrame`` or ``pandas.Series``, as the JSON description of a value file says."""
    (length,) = struct.unpack_from("<I", value, len(VALUE_FILE))
    start = len(VALUE_FILE) + 4
    try:
        description = json.loads(value[start : start + length])
    except ValueError:
        return None  # damaged: nothing is known of it
    return {"DataFrame": "pandas.DataFrame", "Series": "pandas.Series"}[description["kind"]]


def _describe(path: str, key: str, value: bytes | None, side: str | None, size: int) -> dict:
    """What the items table must say of one stored value, found without datamanager."""
    if side is not None:
        loaded: Any = np.load(os.path.join(blob_dir(path), side), mmap_mode="r")
        kind: type | None = np.ndarray
        stored = size
    else:
        try:
            loaded = pickle.loads(value)
            kind = type(loaded)
        except pickle.UnpicklingError:
            loaded = kind = None  # damaged: nothing is known of it
        stored = len(value)
    name = kind and (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    if side is None and value.startswith(VALUE_FILE):
        name = _table_kind(value)
    numpy = isinstance(loaded, (np.ndarray, np.generic))
    return {
        "key": key,
        "type": name,
        "dtype": loaded.dtype.str if numpy else None,
        "shape": json.dumps(list(np.shape(loaded))) if numpy else None,
        "stored_size": stored,
        "side": side,
        "cached": side is None and stored <= CACHE_LIMIT,
    }


def test_index_tables_describe_what_the_sessions_hold(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    build_directory(dm, legacy=False)
    dm.build_index()
    tables = dm.index_tables()
    sessions, items = tables["sessions"], tables["items"]
    assert list(sessions.columns) == [
        "name", "file", "created", "user", "host", "pid", "git_commit", "git_dirty", "keys",
        "bytes", "size", "mtime", "wal_size", "wal_mtime", "journal_size", "journal_mtime",
        "settled",
    ]  # fmt: skip
    assert list(items.columns) == [
        "session", "key", "type", "dtype", "shape", "stored_size", "side", "sha256", "cached",
    ]  # fmt: skip
    readers = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the damaged session
        for r in dm.iter_sessions():
            with contextlib.suppress(CorruptSessionError):  # damaged metadata: not indexed
                readers[r.name] = (r.created, r.metadata, len(r), r.nbytes)
    del readers["killed"]  # no commit: nothing to index
    readers.pop("caf\udce9", None)  # a name in another encoding: not indexed
    assert list(sessions["name"]) == list(readers)  # in creation order
    for row in sessions.itertuples():
        created, metadata, keys, nbytes = readers[row.name]
        path = dm.session_filename(row.name)
        info = os.stat(path)
        assert row.file == os.path.basename(path)
        assert row.created == pd.Timestamp(created, unit="s", tz="UTC")
        assert (row.user, row.host, row.pid) == (
            metadata["user"], metadata["host"], metadata["pid"]
        )  # fmt: skip
        assert row.git_commit == metadata.get("git_commit")
        assert (row.keys, row.bytes, row.size) == (keys, nbytes, info.st_size)
        # Kept as float seconds: exact to a fraction of a microsecond.
        assert abs(row.mtime - pd.Timestamp(info.st_mtime_ns, unit="ns", tz="UTC")).value < 1000
        assert pd.isna(row.wal_size) and pd.isna(row.journal_size)  # closed sessions
        assert row.settled
    expected = [
        {"session": name, **_describe(dm.session_filename(name), *stored), "sha256": None}
        for name in readers
        for stored in _stored_rows(dm.session_filename(name))
    ]
    assert items.astype(object).where(items.notna(), None).to_dict("records") == expected
    kinds = dict(zip(items["key"], items["type"]))
    assert kinds["obj"] == "fractions.Fraction" and pd.isna(kinds["bad"])
    assert kinds["np_float"] == "numpy.float32" and kinds["side"] == "numpy.ndarray"


def test_index_tables_are_refreshed_in_memory_without_writing(dm):
    for i in range(3):
        write_session(dm, f"s{i}", i)
    dm.build_index()
    with dm.session("s0") as s:
        s["later"] = 1
    remove_session(dm, "s1")
    write_session(dm, "s3", 3)
    before = snapshot(dm.basepath), os.listdir(dm.basepath), os.stat(dm.basepath)
    tables = dm.index_tables()
    assert (snapshot(dm.basepath), os.listdir(dm.basepath), os.stat(dm.basepath)) == before
    sessions = tables["sessions"].set_index("name")
    assert list(sessions.index) == ["s0", "s2", "s3"]
    assert sessions.loc["s0", "keys"] == len(SMALL) + 4
    assert "later" in set(tables["items"].query("session == 's0'")["key"])
    # Read again in memory, without the clock to tell: not settled.
    assert list(sessions["settled"]) == [False, True, False]
    with index_aside(dm):  # without an index: every session read in memory
        before = snapshot(dm.basepath), os.listdir(dm.basepath), os.stat(dm.basepath)
        fresh = dm.index_tables()
        assert (snapshot(dm.basepath), os.listdir(dm.basepath), os.stat(dm.basepath)) == before
    assert not fresh["sessions"]["settled"].any()
    columns = [c for c in tables["sessions"] if c != "settled"]
    pd.testing.assert_frame_equal(fresh["sessions"][columns], tables["sessions"][columns])
    pd.testing.assert_frame_equal(fresh["items"], tables["items"])


def test_export_index_writes_parquet_that_pandas_reads_back(dm, tmp_path):
    build_directory(dm, legacy=False)
    dm.build_index(hash_values=True)
    out = tmp_path / "tables"
    written = dm.export_index(out)
    assert written == [str(out / "sessions.parquet"), str(out / "items.parquet")]
    assert sorted(os.listdir(out)) == ["items.parquet", "sessions.parquet"]  # no leftovers
    tables = dm.index_tables()
    for name, path in zip(["sessions", "items"], written):
        pd.testing.assert_frame_equal(pd.read_parquet(path), tables[name])


#: Exports the index of argv[1] into argv[2] in a Python that cannot import pyarrow.
WITHOUT_PYARROW = """
import sys

class NoPyarrow:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pyarrow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoPyarrow())
from datamanager import DataManager
try:
    DataManager.from_path(sys.argv[1]).export_index(sys.argv[2])
except ImportError as exc:
    print(exc)
"""


def test_export_without_pyarrow_names_the_parquet_extra(dm, tmp_path):
    pytest.importorskip("pyarrow")  # so the refusal below is what makes the difference
    write_session(dm, "s0", 0)
    dm.build_index()
    out = tmp_path / "tables"
    message = run_python(WITHOUT_PYARROW, dm.basepath, str(out)).stdout
    assert "pyarrow" in message and "pip install 'sim-datamanager[parquet]'" in message
    assert not out.exists()
    assert dm.export_index(out)  # the same call, where pyarrow can be imported


def test_the_extra_the_error_names_installs_pyarrow():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["name"] == "sim-datamanager"
    assert "pyarrow" in config["options.extras_require"]["parquet"].split()


def test_hash_values_records_the_sha256_of_the_stored_bytes(dm):
    path = write_session(dm, "s0", 0, side=np.arange(SIDE_FILE_THRESHOLD // 8 + 1.0))
    dm.build_index()
    assert dm.index_tables()["items"]["sha256"].isna().all()
    summary = dm.build_index(hash_values=True)
    assert (summary.read, summary.kept) == (1, 0)  # hashes are not kept rows: read again
    items = dm.index_tables()["items"].set_index("key")
    stored = {key: (value, side) for key, value, side, _ in _stored_rows(path)}
    assert items.loc["int", "sha256"] == hashlib.sha256(stored["int"][0]).hexdigest()
    with open(os.path.join(blob_dir(path), stored["side"][1]), "rb") as f:
        assert items.loc["side", "sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert items["sha256"].str.fullmatch("[0-9a-f]{64}").all()
    assert dm.build_index(hash_values=True).kept == 1  # unchanged: not hashed again


def test_collation_does_consult_the_index(dm, tmp_path):
    """A wrong value written into a copy of the index comes back: the index is read.

    Only while its session is unchanged; after a write, the session is read.
    """
    for i in range(4):
        write_session(dm, f"s{i}", i)
    dm.build_index()
    assert settled(dm).all()
    copy = str(tmp_path / "index-copy.sqlite")
    shutil.copyfile(_index(dm), copy)
    conn = sqlite3.connect(copy)
    with conn:
        conn.execute(
            "UPDATE items SET value = ? WHERE key = 'int' "
            "AND session = (SELECT id FROM sessions WHERE name = 's2')",
            (pickle.dumps(12345),),
        )
    conn.close()
    with index_aside(dm):
        assert dm.get("int") == {"s0": 7, "s1": 7, "s2": 7, "s3": 7}
        shutil.copyfile(copy, _index(dm))
        try:
            assert dm.get("int") == {"s0": 7, "s1": 7, "s2": 12345, "s3": 7}
            assert dm.get_matching("in")["int"]["s2"] == 12345
            assert (("int", 12345) in dm.items()) is True
            with dm.session("s2") as s:
                s["other"] = 1
            assert dm.get("int") == {"s0": 7, "s1": 7, "s2": 7, "s3": 7}
        finally:
            os.unlink(_index(dm))
