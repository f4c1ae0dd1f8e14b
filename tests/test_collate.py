"""Collation across sessions: Brian's API, order, stray and corrupt files,
legacy shelves, safe mode, verify and migrate."""

from __future__ import annotations

import contextlib
import dbm.dumb
import glob
import hashlib
import os
import pickle
import shelve
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from datamanager import (
    CorruptSessionError,
    DataManager,
    DataManagerWarning,
    UnsafeValueError,
)
from datamanager._format import blob_dir

from conftest import METADATA_FIELDS, can_mount_read_only, run_python

WRITER = """
import sys, numpy as np
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1])
i = int(sys.argv[2])
with dm.session() as s:
    s["rate"] = [float(i), float(i) + 0.5]
    s["trace"] = np.full((2, 3), i)
    s["param/%d" % i] = i
    s["name"] = "worker %d" % i
"""


@pytest.fixture
def swept(tmp_path):
    """A data directory written by four real processes, one after another."""
    for i in range(4):
        run_python(WRITER, str(tmp_path), str(i))
    return DataManager("sweep", str(tmp_path))


def test_brian_api_on_sessions_of_several_processes(swept):
    dm = swept
    names = [os.path.basename(p)[: -len(".sqlite")] for p in dm.session_filenames()]
    assert len(names) == 4
    assert list(dm.get("rate")) == names  # creation order
    assert dm.get_merged("rate") == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    merged = dm.get_merged("trace")
    assert merged.shape == (8, 3) and merged[::2, 0].tolist() == [0, 1, 2, 3]
    assert dm.get("missing") == {} and dm.get_merged("missing") == []
    assert dm.keys() == ["name", "param/0", "param/1", "param/2", "param/3", "rate", "trace"]
    matching = dm.get_matching("param/")
    assert list(matching) == ["param/0", "param/1", "param/2", "param/3"]
    assert matching["param/2"] == {names[2]: 2}
    assert dm.get_matching(lambda k: k.endswith("/3")) == {"param/3": {names[3]: 3}}
    assert dm.get_merged_matching("ra") == dm.get_merged("rate")
    assert dm.get_flat_matching("param/") == [0, 1, 2, 3]
    assert dm.itemcount() == 16
    assert len(dm.items()) == 16 and dm.values()[0] == [0.0, 0.5]
    it = dm.iteritems()
    assert next(it) == ("rate", [0.0, 0.5])  # lazy: one value at a time
    it.close()
    assert sorted(v for v in dm.itervalues() if isinstance(v, str))[0] == "worker 0"


def test_get_matching_keys_lists_each_matching_key_once(swept):
    params = ["param/0", "param/1", "param/2", "param/3"]
    assert swept.get_matching_keys("param/") == params  # one session each, sorted
    assert swept.get_matching_keys("na") == ["name"]  # in all four sessions, listed once
    assert swept.get_matching_keys(lambda k: k.endswith("/3") or k == "rate") == [
        "param/3",
        "rate",
    ]
    assert swept.get_matching_keys("nothing") == []


def test_merge_errors_name_the_session(dm):
    with dm.session("a") as s:
        s["x"] = [1]
        s["arr"] = np.zeros((2, 2))
    with dm.session("b") as s:
        s["x"] = 5
        s["arr"] = np.zeros((2, 3))
    with pytest.raises(TypeError, match="session 'b' holds a int"):
        dm.get_merged("x")
    with pytest.raises(TypeError, match="session 'b'"):
        dm.get_merged_matching("x")
    with pytest.raises(ValueError, match="shapes differ"):
        dm.get_merged("arr")


def test_order_is_creation_order_with_ties_by_name(dm):
    for name in ["zeta", "alpha", "mid"]:
        dm.session(name)["v"] = [name]
    assert dm.get_merged("v") == ["zeta", "alpha", "mid"]
    for name in ["zeta", "alpha", "mid"]:
        dm.session(name).update_metadata({"created": 1.0})
    assert dm.get_merged("v") == ["alpha", "mid", "zeta"]


def test_sessions_dataframe(swept):
    frame = swept.sessions()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 4
    for column in ("name", *METADATA_FIELDS, "keys", "size"):
        assert column in frame.columns, column
    assert (frame["keys"] == 4).all() and (frame["size"] > 0).all()
    assert frame["created"].is_monotonic_increasing
    assert len(set(frame["pid"])) == 4


def test_session_filenames_one_per_session(dm):
    with dm.session("big") as s:
        s["a"] = np.zeros(200_000)  # a side file
    open_writer = dm.session("open")
    open_writer["x"] = 1  # still open: -wal and -shm files exist
    locked = dm.locking_session("locked")
    locked["y"] = 2  # a .lock file
    _write_legacy(os.path.join(dm.basepath, "legacy"), {"z": [3]})
    files = dm.session_filenames()
    assert sorted(map(os.path.basename, files)) == [
        "big.sqlite",
        "legacy",
        "locked.sqlite",
        "open.sqlite",
    ]
    assert dm.itemcount() == 4
    open_writer.close()


def test_stray_files_warn_once_each_and_are_ignored(dm):
    dm.session("s")["x"] = [1]
    for name in ["README", ".DS_Store", "other.lock", "half.sqlite.part", "notes.txt"]:
        with open(os.path.join(dm.basepath, name), "w") as f:
            f.write("not a session\n")
    os.mkdir(os.path.join(dm.basepath, "subdir"))
    with pytest.warns(DataManagerWarning) as record:
        assert dm.get_merged("x") == [1]
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 6
    for name in ["README", ".DS_Store", "other.lock", "half.sqlite.part", "notes.txt", "subdir"]:
        assert sum(name in m for m in messages) >= 1, name


def test_corrupt_session_is_skipped_or_raises_in_strict_mode(dm):
    dm.session("good")["x"] = [1]
    with open(os.path.join(dm.basepath, "bad.sqlite"), "wb") as f:
        f.write(b"this is not SQLite" * 100)
    truncated = dm.session("truncated")
    truncated["x"] = [2]
    truncated.close()
    with open(truncated.path, "r+b") as f:  # a half-copied file
        f.truncate(100)
    with pytest.warns(DataManagerWarning) as record:
        assert dm.get_merged("x") == [1]
    assert any("bad.sqlite" in str(w.message) for w in record)
    assert any("truncated.sqlite" in str(w.message) for w in record)
    with pytest.raises(CorruptSessionError, match=r"bad\.sqlite|truncated\.sqlite"):
        dm.get("x", strict=True)


def _date(path: str, seconds_from_now: float) -> None:
    """Set the access and modification times of *path* relative to now."""
    when = time.time() + seconds_from_now
    os.utime(path, (when, when))


def _snapshot(path):
    state = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.stat(full)
            digest = None
            if os.path.isfile(full):
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            state[full] = (st.st_size, st.st_mtime_ns, st.st_mode, digest)
    return state


def _everything(dm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataManagerWarning)
        return (
            dm.keys(),
            dm.get("a"),
            dm.get_merged_matching("a"),
            dm.items(),
            dm.itemcount(),
            dm.sessions(),
            dm.session_filenames(),
            dm.verify(),
        )


@pytest.fixture(params=["dumb", "sqlite"])
def mixed(dm, tmp_path, request):
    """A closed session with a side file, a session whose writer was killed
    (its -wal and -shm files left behind) and a legacy shelf (either format),
    all holding 'a'."""
    with dm.session("closed") as s:
        s["a"] = [1]
        s["big"] = np.ones(200_000)
    code = (
        "import os, signal, sys\nfrom datamanager import DataManager\n"
        "s = DataManager('sweep', sys.argv[1]).session('killed')\ns['a'] = [2]\n"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True)
    assert proc.returncode == -9
    assert os.path.exists(os.path.join(dm.basepath, "killed.sqlite-wal"))
    _write_legacy(os.path.join(dm.basepath, "legacy"), {"a": [3]}, request.param)
    return dm


def test_collation_modifies_nothing(mixed):
    dm = mixed
    with open(os.path.join(dm.basepath, "README"), "w") as f:
        f.write("hello")
    # Everything dated an hour back: a write by collation, however soon,
    # would date its file now, whatever the file system's clock resolution.
    for root, dirs, files in os.walk(dm.basepath):
        for name in dirs + files:
            _date(os.path.join(root, name), -3600)
    before = _snapshot(dm.basepath)
    result = _everything(dm)
    assert result[1] == {"closed": [1], "killed": [2], "legacy": [3]}
    # Readers take their WAL read locks inside the -shm file (SQLite's
    # shared-memory index, not data): that is how they avoid locking out a
    # writer, so it alone may change.
    after = _snapshot(dm.basepath)
    assert {p: v for p, v in after.items() if not p.endswith("-shm")} == {
        p: v for p, v in before.items() if not p.endswith("-shm")
    }
    assert set(after) == set(before)


def test_collation_on_a_read_only_filesystem(mixed, tmp_path):
    # Permission bits do not stop root, so the reader runs in a private mount
    # namespace where the data directory is a read-only bind mount: any
    # attempt to create, write or lock a file there fails for real.
    if not can_mount_read_only(tmp_path):
        pytest.skip("needs unshare and mount (root)")
    reader = (
        "import sys\nfrom datamanager import DataManager\n"
        "dm = DataManager('sweep', sys.argv[1])\n"
        "print(sorted(dm.get('a').values()), dm.get('big')['closed'].sum())"
    )
    script = (
        f"mount --bind -o ro {tmp_path} {tmp_path} && "
        f"exec {shlex.quote(sys.executable)} -W error -c {shlex.quote(reader)} {tmp_path}"
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[[1],", "[2],", "[3]]", "200000.0"]


class Custom:
    def __init__(self, x):
        self.x = x


def test_safe_mode(tmp_path):
    dm = DataManager("safe", str(tmp_path))
    values = {
        "none": None,
        "bool": True,
        "int": 3,
        "float": 1.5,
        "complex": 1 + 2j,
        "str": "s",
        "bytes": b"b",
        "list": [1, [2.0]],
        "tuple": (1, "a"),
        "dict": {"a": {1, 2}},
        "frozenset": frozenset([1]),
        "array": np.arange(4.0),
        "big": np.ones(200_000, dtype=np.float32),
        "scalar": np.float32(2.5),
        "int64": np.int64(3),
        "objects": np.array(["a", 1], dtype=object),
        "record": np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]),
    }
    with dm.session("mine") as s:
        s.update(values)
        s["custom"] = Custom(1)
    safe = DataManager("safe", str(tmp_path), safe=True)
    for key, value in values.items():
        got = safe.get(key)["mine"]
        assert type(got) is type(value), key
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got, value)
        else:
            assert got == value
    with pytest.raises(UnsafeValueError) as info:
        safe.get("custom")
    message = str(info.value)
    assert "'mine'" in message and "'custom'" in message and "test_collate.Custom" in message
    assert dm.get("custom")["mine"].x == 1  # the default trusts the user's own data


def _write_legacy(path, values, kind="dumb"):
    """A shelf as Brian's DataManager left it: ``shelve`` on ``dbm.dumb`` (a
    Python without gdbm), or on ``dbm.sqlite3`` (Python >= 3.13's default),
    whose layout is written here with sqlite3 so that any Python can make it."""
    if kind == "dumb":
        with shelve.Shelf(dbm.dumb.open(path, "c")) as sh:
            sh.update(values)
        return
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = wal")  # as dbm.sqlite3 leaves it
    conn.execute("CREATE TABLE Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
    conn.executemany(
        "REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))",
        [(k.encode(), pickle.dumps(v, protocol=3)) for k, v in values.items()],
    )
    conn.commit()
    conn.close()


def test_sqlite_shelves_read_while_open_and_after(dm):
    # Python >= 3.13 shelves (dbm.sqlite3): one SQLite file left in WAL mode.
    os.makedirs(dm.basepath)
    path = os.path.join(dm.basepath, "py313")
    _write_legacy(path, {"rate": [1.0]}, "sqlite")
    before = _snapshot(dm.basepath)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray files, no other warning
        assert dm.get("rate") == {"py313": [1.0]}
        assert dm.session_filenames() == [path]
    assert _snapshot(dm.basepath) == before  # opened immutable: nothing created
    # A writer still at work: its -wal and -shm files belong to the shelf.
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("REPLACE INTO Dict VALUES (CAST(? AS BLOB), ?)", (b"rate", pickle.dumps([2.0])))
    assert os.path.exists(path + "-wal")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dm.get("rate") == {"py313": [2.0]}
    writer.close()
    if sys.version_info >= (3, 13):  # the real thing, where Python has it
        import dbm.sqlite3

        with shelve.Shelf(dbm.sqlite3.open(os.path.join(dm.basepath, "real"), "c")) as sh:
            sh["rate"] = (3.0,)
        assert dm.get_merged("rate") == [2.0, 3.0]


def test_key_deleted_from_an_open_shelf_is_missing_as_in_a_session(dm):
    os.makedirs(dm.basepath)
    path = os.path.join(dm.basepath, "py313")
    _write_legacy(path, {"rate": [1.0], "kept": 2}, "sqlite")
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("SELECT count(*) FROM Dict").fetchone()  # its -wal file appears
        for session in dm.iter_sessions():
            with session:
                writer.execute("DELETE FROM Dict WHERE key = CAST(? AS BLOB)", (b"rate",))
                assert sorted(session.keys()) == ["kept", "rate"]  # listed when opened
                with pytest.raises(KeyError) as info:
                    session["rate"]
                assert info.value.args == ("rate",)  # the key asked for, as a session says
                assert dict(session.items(["rate", "kept"])) == {"kept": 2}
    finally:
        writer.close()


def test_legacy_shelves_collate_read_only_and_migrate(dm):
    os.makedirs(dm.basepath)
    # A shelf was created when its files were last written: dated apart, so
    # that the order of creation does not hang on the clock's resolution.
    for name, values, age in [
        ("old1", {"rate": [1.0], "arr": np.arange(3)}, -20),
        ("old2", {"rate": (2.0,), "obj": Custom(5)}, -10),
    ]:
        _write_legacy(os.path.join(dm.basepath, name), values)
        for path in glob.glob(os.path.join(dm.basepath, name + ".*")):
            _date(path, age)
    dm.session("new")["rate"] = [3.0]
    assert sorted(os.listdir(dm.basepath))[:3] == ["new.sqlite", "old1.bak", "old1.dat"]
    before = _snapshot(dm.basepath)
    assert dm.get_merged("rate") == [1.0, 2.0, 3.0]
    assert len(dm.session_filenames()) == 3  # not one per .dat/.dir/.bak
    assert dm.verify() == []
    with pytest.raises(UnsafeValueError, match="Custom"):
        DataManager("sweep", dm.datapath, safe=True).get("obj")
    legacy_files = {p: v for p, v in before.items() if "old" in p}
    assert dm.migrate() == ["old1", "old2"]
    after = _snapshot(dm.basepath)
    assert {p: v for p, v in after.items() if "old" in p and "sqlite" not in p} == legacy_files
    assert dm.get_merged("rate") == [1.0, 2.0, 3.0]  # order kept: created = the shelf's mtime
    assert len(dm.session_filenames()) == 3
    assert all(p.endswith(".sqlite") for p in dm.session_filenames())
    assert dm.get("obj")["old2"].x == 5
    np.testing.assert_array_equal(dm.get("arr")["old1"], np.arange(3))
    assert dm.migrate() == []


def test_legacy_shelf_killed_before_close_is_reported(dm):
    os.makedirs(dm.basepath)
    path = os.path.join(dm.basepath, "old")
    _write_legacy(path, {"a": [1] * 10})
    with open(path + ".dir", "a") as f:  # an index line pointing past the data
        f.write("'b', (4096, 200)\n")
    with pytest.warns(DataManagerWarning, match="old"):
        assert dm.get("b") == {}
    problems = dm.verify()
    assert len(problems) == 1 and "old" in problems[0].path


def test_verify_reports_damaged_sessions(dm):
    with dm.session("s") as s:
        s["big"] = np.ones(200_000)
        s["big2"] = np.ones(200_000)
        s["small"] = [1, 2, 3]
    assert dm.verify() == []
    sides = sorted(os.listdir(blob_dir(s.path)))
    with open(os.path.join(blob_dir(s.path), sides[0]), "r+b") as f:
        f.truncate(1000)
    os.unlink(os.path.join(blob_dir(s.path), sides[1]))
    conn = sqlite3.connect(s.path)
    conn.execute("UPDATE items SET value = ? WHERE key = 'small'", (b"\x80\x05garbage",))
    conn.commit()
    conn.close()
    problems = dm.verify()
    text = "\n".join(map(str, problems))
    assert len(problems) == 3, text
    assert "missing" in text and "expected" in text and "malformed pickle" in text
    with pytest.raises(CorruptSessionError, match="small"):
        dm.get("small", strict=True)


def test_verify_reports_old_side_files_no_key_refers_to(dm):
    with dm.session("s") as s:
        s["big"] = np.ones(200_000)
    # What a writer killed between np.save and the commit of its key leaves.
    orphan = os.path.join(blob_dir(s.path), "0123abcd.npy")
    np.save(orphan, np.zeros(200_000))
    assert dm.verify() == []  # young: maybe a write about to commit
    _date(orphan, -3600)
    [problem] = dm.verify()
    assert problem.path == orphan and "no key refers to" in problem.message
    np.testing.assert_array_equal(dm.get("big", strict=True)["s"], np.ones(200_000))


def test_truncated_side_file_is_an_error_not_a_short_array(dm):
    with dm.session("s") as s:
        s["big"] = np.ones(200_000)
    side = os.path.join(blob_dir(s.path), os.listdir(blob_dir(s.path))[0])
    with open(side, "r+b") as f:
        f.truncate(os.path.getsize(side) - 8)
    with pytest.raises(CorruptSessionError, match="expected"):
        dm.get("big", strict=True)
    shutil.rmtree(blob_dir(s.path))
    with pytest.raises(CorruptSessionError, match="missing"):
        dm.get("big", strict=True)


def test_migrate_keeps_an_object_array_holding_nan(dm):
    # A table mixing text and numbers, with a missing number: read back,
    # NaN must count as equal to NaN or the migration is rolled back.
    table = np.array([["a", 1.0], ["b", float("nan")]], dtype=object)
    os.makedirs(dm.basepath)
    _write_legacy(os.path.join(dm.basepath, "old"), {"table": table})
    assert dm.migrate() == ["old"]
    [(name, value)] = dm.get("table").items()
    assert name == "old" and value[1, 0] == "b" and value[1, 1] != value[1, 1]
    assert dm.session_filenames() == [os.path.join(dm.basepath, "old.sqlite")]


def test_python2_pickles_in_legacy_shelves(dm):
    # Brian ran on Python 2: its shelves hold protocol-2 pickles of byte
    # strings, which load as str (latin-1), numpy's convention.
    import dbm.dumb

    os.makedirs(dm.basepath)
    with dbm.dumb.open(os.path.join(dm.basepath, "py2"), "c") as db:
        db[b"label"] = b"\x80\x02U\x03abcq\x00."  # SHORT_BINSTRING 'abc'
        db[b"rates"] = b"\x80\x02]q\x00(G?\xf0\x00\x00\x00\x00\x00\x00K\x02e."  # [1.0, 2]
    safe = DataManager("sweep", dm.datapath, safe=True)
    assert safe.get("label") == {"py2": "abc"}
    assert safe.get_merged("rates") == [1.0, 2]


def _can_mount_tmpfs(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    cmd = f"mount -t tmpfs -o size=1m tmpfs {probe}"
    return (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True).returncode == 0
    )


DISK_FILLER = """
import sys, numpy as np
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1])
s = dm.session("filler")
written = 0
try:
    for i in range(10_000):
        value = np.full(150_000, i, dtype=np.float64) if i % 2 else [i] * 1000
        s["k%05d" % i] = value
        written = i + 1
except Exception as exc:
    print("ERROR", type(exc).__name__, exc)
print("WRITTEN", written)
dm = DataManager("sweep", sys.argv[1])
for i in range(written):
    v = dm.get("k%05d" % i, strict=True)["filler"]
    assert (v == i).all() if i % 2 else v == [i] * 1000, i
print("VERIFIED", dm.verify())
"""


def test_full_disk_ends_in_a_clear_error_and_keeps_what_was_written(tmp_path):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs unshare and mount (root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        f"mount -t tmpfs -o size=8m tmpfs {disk} && "
        f"exec {shlex.quote(sys.executable)} -c {shlex.quote(DISK_FILLER)} {disk}"
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ERROR") and ("full" in lines[0] or "space" in lines[0]), lines
    assert int(lines[1].split()[1]) > 5
    assert lines[2] == "VERIFIED []"


def _open_sessions(folder: str) -> set[str]:
    """The sessions in *folder* whose files this process holds open."""
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if os.path.dirname(target) == folder:
            names.add(os.path.basename(target).split(".")[0])
    return names


@contextlib.contextmanager
def _spare_descriptors(spare: int | None) -> Iterator[None]:
    """Leave the process only *spare* free descriptors (no change for None)."""
    if spare is None:
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + spare, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see open files")
@pytest.mark.parametrize("spare", [None, 12])
def test_iter_sessions_hands_over_open_readers_in_order(dm, spare):
    for name in ["c", "a", "b"]:
        with dm.session(name) as s:
            s["v"] = name
    folder = os.path.realpath(dm.basepath)
    # With descriptors to spare the readers stay open from the pass that
    # orders them; with few, each is opened again when its turn comes.
    first_open = {"c"} if spare else {"a", "b", "c"}
    with _spare_descriptors(spare):
        names = []
        for reader in dm.iter_sessions():
            with reader:
                names.append((reader.name, reader["v"]))
        assert names == [("c", "c"), ("a", "a"), ("b", "b")]
        assert _open_sessions(folder) == set()
        it = dm.iter_sessions()
        first = next(it)
        assert _open_sessions(folder) == first_open
        it.close()  # the readers not handed over are closed; the first is the caller's
        assert _open_sessions(folder) == {"c"} and first["v"] == "c"
        first.close()
        assert _open_sessions(folder) == set()
        # Taking the next reader closes the one before, so a comprehension that
        # never closes anything leaves no connection open (Python 3.13 warns).
        handed = []
        for reader in dm.iter_sessions():
            assert reader.name in _open_sessions(folder)
            assert not _open_sessions(folder) & set(handed)
            handed.append(reader.name)
        assert _open_sessions(folder) == set()
