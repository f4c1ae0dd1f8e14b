"""One session: the mapping protocol, storage, names, pickling, journal modes."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sqlite3
import subprocess

import filelock
import numpy as np
import pytest

from datamanager import (
    DataManager,
    InvalidNameError,
    LockingSession,
    Session,
    UnstorableValueError,
)
from datamanager._format import SIDE_FILE_THRESHOLD, blob_dir
from datamanager.filesystem import choose_journal_mode, filesystem_type

from conftest import METADATA_FIELDS, start_python

BIG = SIDE_FILE_THRESHOLD // 8 + 10  # float64 elements: just over the side-file threshold


def test_mapping_protocol(dm):
    s = dm.session()
    assert len(s) == 0 and list(s) == [] and "a" not in s
    s["a"] = [1.0, 2.0]
    s["b"] = {"nested": (1, "x")}
    s["a"] = "again"  # an overwritten key keeps its place, as in a dict
    assert list(s) == ["a", "b"]
    assert s["a"] == "again" and s["b"] == {"nested": (1, "x")}
    assert len(s) == 2 and "b" in s and 3 not in s
    del s["a"]
    assert dict(s) == {"b": {"nested": (1, "x")}}
    with pytest.raises(KeyError):
        s["a"]
    with pytest.raises(KeyError):
        del s["a"]
    assert s.get("missing", 7) == 7
    s.update(c=3)
    assert s.pop("c") == 3
    s.close()
    # A new session object of the same name reads what was written.
    assert Session(s.path)["b"] == {"nested": (1, "x")}


def test_sync_is_a_no_op_refused_once_closed(tmp_path):
    # Brian scripts call sync() on their shelves: every write is durable already.
    s = DataManager("sweep", str(tmp_path)).session("run")
    s.sync()  # before the first write: nothing is created
    assert not os.path.exists(s.path)
    s["a"] = 1
    s.sync()
    assert Session(s.path)["a"] == 1
    s.close()
    with pytest.raises(ValueError, match="session 'run' is closed"):
        s.sync()


@pytest.mark.parametrize("make", ["session", "locking_session"])
def test_a_closed_session_refuses_reads_and_writes_as_a_shelf(tmp_path, make):
    dm = DataManager("sweep", str(tmp_path))
    with getattr(dm, make)("run") as s:
        s["a"] = 1
    for operation in (
        lambda: s.__setitem__("b", 2),
        lambda: s.update(b=2),
        lambda: s.__getitem__("a"),
        lambda: s.__delitem__("a"),
        lambda: len(s),
        lambda: list(s),
        lambda: "a" in s,
        lambda: s.metadata,
        lambda: s.update_metadata({"x": 1}),
        lambda: s.transaction().__enter__(),
    ):
        with pytest.raises(ValueError, match="session 'run' is closed"):
            operation()
    s.close()  # closing again is harmless
    assert dm.get("a") == {"run": 1} and dm.get("b") == {}  # nothing written after close()
    # A copy sent to another process is a new, open session of the same file.
    again = pickle.loads(pickle.dumps(s))
    again["b"] = 2
    assert type(again) is type(s) and dict(again) == {"a": 1, "b": 2}
    again.close()


def test_nothing_is_created_before_the_first_write(tmp_path):
    dm = DataManager("results/run1", str(tmp_path))
    s = dm.session()
    assert len(s) == 0 and "x" not in s and list(s) == []
    with pytest.raises(KeyError):
        del s["x"]
    assert not os.path.exists(tmp_path / "results")
    s["x"] = 1
    assert os.path.isfile(tmp_path / "results" / "run1.data" / (s.name + ".sqlite"))


@pytest.mark.parametrize("key", [1, 2.5, b"bytes", ("t",), None])
def test_keys_must_be_str(dm, key):
    s = dm.session()
    with pytest.raises(TypeError, match="keys must be str"):
        s[key] = 1
    with pytest.raises(TypeError, match="keys must be str"):
        s[key]
    assert key not in s


def test_unpicklable_value_leaves_session_unchanged(dm):
    s = dm.session()
    s["x"] = 1
    with pytest.raises(UnstorableValueError, match=r"'y'.*function") as info:
        s["y"] = lambda: 0
    assert isinstance(info.value, TypeError)
    with pytest.raises(UnstorableValueError):
        s["x"] = [1, lambda: 0]
    assert dict(s) == {"x": 1}
    s["z"] = 2  # still usable
    assert dict(s) == {"x": 1, "z": 2}


def test_update_is_one_transaction_in_order(dm):
    s = dm.session()
    s.update({"a": 0, "big": np.zeros(BIG)})
    # Mappings, pairs, objects with keys() and keywords, as dict.update takes.
    s.update([("b", 1), ("big", np.ones(BIG))], c=2)
    other = dm.session("other")
    other["d"] = 3
    s.update(other)
    s.update({"a": 9, "e": 4})  # an overwritten key keeps its place
    assert list(s) == ["a", "big", "b", "c", "d", "e"] and s["a"] == 9
    np.testing.assert_array_equal(s["big"], np.ones(BIG))
    assert len(os.listdir(blob_dir(s.path))) == 1  # the replaced side file is gone
    with pytest.raises(UnstorableValueError, match="'g'"):
        s.update({"f": 5, "big": np.full(BIG, 2.0), "g": lambda: 0})
    # All or nothing: neither the small value nor the side file landed.
    assert "f" not in s and s["big"][0] == 1.0
    assert len(os.listdir(blob_dir(s.path))) == 1
    with pytest.raises(TypeError, match="str"):
        s.update({("not", "str"): 1})


def test_large_arrays_live_in_side_files(dm):
    s = dm.session()
    a = np.arange(BIG, dtype=np.float64)
    s["a"] = a
    files = os.listdir(blob_dir(s.path))
    assert len(files) == 1
    np.testing.assert_array_equal(s["a"], a)
    assert s["a"].dtype == a.dtype
    s["a"] = a[::-1].copy()  # overwrite: the old side file goes
    assert os.listdir(blob_dir(s.path)) != files and len(os.listdir(blob_dir(s.path))) == 1
    np.testing.assert_array_equal(s["a"], a[::-1])
    del s["a"]
    assert os.listdir(blob_dir(s.path)) == []
    # Small arrays and object arrays stay inline.
    s["small"] = np.arange(3)
    s["objects"] = np.array(["a", None] * BIG, dtype=object)
    assert os.listdir(blob_dir(s.path)) == []
    assert s["objects"][1] is None


def test_transaction_rolls_back_everything(dm):
    s = dm.session()
    s["keep"] = 1
    with pytest.raises(RuntimeError), s.transaction():
        s["keep"] = 2
        s["big"] = np.zeros(BIG)
        raise RuntimeError("undo")
    assert dict(s) == {"keep": 1}
    assert os.listdir(blob_dir(s.path)) == []  # the rolled-back side file is gone
    with s.transaction(), s.transaction():  # nested blocks commit once
        s["a"], s["b"] = 1, 2
    assert sorted(s) == ["a", "b", "keep"]


def test_metadata_is_recorded_but_is_not_a_key(dm):
    s = dm.session()
    s["x"] = 1
    meta = s.metadata
    for field in METADATA_FIELDS:
        assert field in meta, field
    assert meta["pid"] == os.getpid() and meta["numpy_version"] == np.__version__
    assert list(s) == ["x"]
    s.update_metadata({"note": "hello"})
    assert s.metadata["note"] == "hello" and list(s) == ["x"]


@pytest.mark.parametrize("name", ["", " ", "a/b", "a\\b", "..", "a..b", "x\0y", ".hidden", 3])
def test_bad_session_names(dm, name):
    with pytest.raises(InvalidNameError) as info:
        dm.session(name)
    assert isinstance(info.value, ValueError)
    assert repr(name) in str(info.value)


def test_default_names_are_unique_and_named_sessions_are_shared(dm):
    assert dm.session().name != dm.session().name
    assert dm.session().name.startswith(dm.computer_name + ".")
    a, b = dm.session("shared"), dm.session("shared")
    a["x"] = 1
    assert b["x"] == 1
    assert dm.computer_session().path == dm.computer_session_filename
    assert dm.computer_session_filename == dm.session_filename(dm.computer_name)


def test_closed_session_is_one_file(dm):
    with dm.session() as s:
        s["x"] = 1
    assert os.listdir(dm.basepath) == [s.name + ".sqlite"]
    conn = sqlite3.connect(s.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 2048  # small WAL frames
    conn.close()


def _write_in_child(session, key):
    session[key] = os.getpid()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_session_and_manager_travel_to_other_processes(dm, method):
    s = dm.session()
    s["parent"] = os.getpid()  # the parent holds an open connection now
    state = pickle.loads(pickle.dumps(s)).__getstate__()
    assert state == {"path": s.path, "journal_mode": None}
    pickle.loads(pickle.dumps(dm))  # a DataManager is configuration only
    ctx = multiprocessing.get_context(method)
    p = ctx.Process(target=_write_in_child, args=(s, "child"))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    s["parent2"] = 1  # the parent's connection still works after the child exits
    assert s["child"] == p.pid and s["parent"] == os.getpid()


def test_locking_session_pickles_and_locks(dm):
    s = dm.locking_session("locked")
    assert isinstance(s, LockingSession)
    s["x"] = 1
    copy = pickle.loads(pickle.dumps(s))
    assert copy["x"] == 1 and copy.lock.lock_file == s.lock.lock_file
    with s.transaction():
        assert s.lock.is_locked
        s["x"] = s["x"] + 1
    assert not s.lock.is_locked and copy["x"] == 2


HOLD_LOCK = """
import sys
from filelock import FileLock

with FileLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test is done
"""


def test_every_locking_session_operation_waits_for_the_lock(dm):
    s = dm.locking_session("guarded")
    s.update({"x": 1})
    holder = start_python(HOLD_LOCK, s.lock.lock_file, stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "held\n"
        # Instead of waiting for the other process, each operation gives up
        # at once: it must not have run without the lock.
        s.lock.timeout = 0
        operations = {
            "metadata": lambda: s.metadata,
            "update": lambda: s.update({"y": 2}),
            "update_metadata": lambda: s.update_metadata({"note": 1}),
            "getitem": lambda: s["x"],
            "setitem": lambda: s.__setitem__("x", 3),
            "delitem": lambda: s.__delitem__("x"),
            "len": lambda: len(s),
            "contains": lambda: "x" in s,
            "iter": lambda: list(s),
            "transaction": lambda: s.transaction().__enter__(),
        }
        unguarded = []
        for name, operation in operations.items():
            try:
                operation()
            except filelock.Timeout:
                continue
            unguarded.append(name)
        assert unguarded == []
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    s.lock.timeout = -1
    assert dict(s) == {"x": 1} and "note" not in s.metadata


def test_filesystem_detection():
    mounts = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/export /home nfs4 rw 0 0\n"
        "lustre@tcp:/scratch /scratch/my\\040lab lustre rw 0 0\n"
    )
    assert filesystem_type("/home/alice/runs", mounts) == "nfs4"
    assert filesystem_type("/homework", mounts) == "ext4"
    assert filesystem_type("/scratch/my lab/x", mounts) == "lustre"
    assert filesystem_type("/", "") is None


def test_journal_mode_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("DATAMANAGER_JOURNAL_MODE", raising=False)
    assert choose_journal_mode(str(tmp_path)) in ("wal", "delete")
    assert choose_journal_mode(str(tmp_path), "DELETE") == "delete"
    monkeypatch.setenv("DATAMANAGER_JOURNAL_MODE", "delete")
    assert choose_journal_mode(str(tmp_path)) == "delete"
    with pytest.raises(ValueError, match="'wal' or 'delete'"):
        choose_journal_mode(str(tmp_path), "memory")


def test_rollback_journal_sessions_work(tmp_path):
    dm = DataManager("nfs-like", str(tmp_path), journal_mode="delete")
    s = dm.session()
    s["x"] = [1]
    assert s.journal_mode == "delete"
    # WAL mode is a property of the file, so another connection would see it.
    outside = sqlite3.connect(s.path)
    try:
        assert outside.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        outside.close()
    assert not os.path.exists(s.path + "-wal")
    assert dm.get("x") == {s.name: [1]}
    s.close()


def test_session_rejects_foreign_file_names(tmp_path):
    with pytest.raises(ValueError, match=r"\.sqlite"):
        Session(str(tmp_path / "x.db"))
