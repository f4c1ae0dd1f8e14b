"""Side files: when their folder appears, and names read from a session's tables."""

from __future__ import annotations

import os
import sqlite3
import time
import warnings

import numpy as np
import pytest

from datamanager import CorruptSessionError, DataManager, DataManagerWarning
from datamanager._format import SIDE_FILE_THRESHOLD, blob_dir
from datamanager.legacy import find_sessions

from conftest import start_python, stress_size

BIG = SIDE_FILE_THRESHOLD // 8 + 10  # float64 elements: just over the side-file threshold

# Each session's first value is a side file.
FIRST_WRITES = f"""
import sys, numpy as np
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1])
for i in range(int(sys.argv[2])):
    with dm.session("s%d" % i) as s:
        s["big"] = np.zeros({BIG})
"""


@pytest.mark.stress
def test_blob_folder_never_exists_without_its_session(dm):
    n = stress_size(full=40, ci=8)
    os.makedirs(dm.basepath)
    bases = [os.path.join(dm.basepath, f"s{i}") for i in range(n)]
    bare, warned, listings = set(), [], 0
    child = start_python(FIRST_WRITES, dm.datapath, str(n))
    try:
        while child.poll() is None:
            for i, base in enumerate(bases):
                # The folder first, then the file: once the session file is
                # created before the folder (and never removed), seeing the
                # folder means the file exists at the second look.
                if os.path.isdir(base + ".blobs") and not os.path.exists(base + ".sqlite"):
                    bare.add(i)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                find_sessions(dm.basepath)
            warned += [str(w.message) for w in caught]
            listings += 1
    finally:
        child.kill()
        _, stderr = child.communicate()
    assert child.returncode == 0, stderr
    assert bare == set(), f"blob folders seen without their session: {sorted(bare)}"
    assert warned == [], f"{len(warned)} warnings in {listings} listings: {warned[:3]}"
    assert len(find_sessions(dm.basepath)) == n


# New sessions, as fast as they can be created.
NEW_SESSIONS = """
import sys
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1])
for i in range(int(sys.argv[2])):
    dm.session("s%d" % i)["x"] = i
"""


@pytest.mark.stress
def test_listing_while_sessions_are_created_warns_about_nothing(dm):
    # A directory too big for one read of its entries: a listing then sees
    # files created meanwhile in hash order, a new session's -wal or
    # -journal file without its .sqlite file, now and then.
    os.makedirs(dm.basepath)
    for i in range(1500):
        open(os.path.join(dm.basepath, f"p{i}.sqlite"), "w").close()
    n = stress_size(full=150, ci=30)
    warned, listings = [], 0
    child = start_python(NEW_SESSIONS, dm.datapath, str(n))
    try:
        while child.poll() is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                find_sessions(dm.basepath)
            warned += [str(w.message) for w in caught]
            listings += 1
    finally:
        child.kill()
        _, stderr = child.communicate()
    assert child.returncode == 0, stderr
    assert warned == [], f"{len(warned)} warnings in {listings} listings: {warned[:3]}"
    assert len(find_sessions(dm.basepath)) == 1500 + n


def test_verify_reports_an_old_blob_folder_of_no_session(dm):
    with dm.session("kept") as s:
        s["big"] = np.ones(BIG)
    # What a writer killed before it created its session file would leave.
    folder = os.path.join(dm.basepath, "killed.blobs")
    os.mkdir(folder)
    np.save(os.path.join(folder, "0123456789abcdef0123456789abcdef.npy"), np.zeros(BIG))
    assert dm.verify() == []  # young: maybe a session being created
    old = time.time() - 3600
    for path in (os.path.join(folder, os.listdir(folder)[0]), folder):
        os.utime(path, (old, old))
    [problem] = dm.verify()
    assert problem.path == folder and "no session" in problem.message
    assert "can be deleted" in problem.message
    with pytest.warns(DataManagerWarning, match="killed.blobs"):
        assert dm.get("big", strict=True).keys() == {"kept"}


def _received_session(dm: DataManager) -> str:
    """A session written by the library, as it arrives from elsewhere: closed."""
    with dm.session("received") as s:
        s["big"] = np.ones(BIG)
        s["small"] = [1, 2]
    return s.path


def _edit(path: str, sql: str, rows: list[tuple[object, ...]]) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(sql, rows)
    conn.close()


def test_garbage_names_outside_the_blob_folder_are_never_deleted(dm, tmp_path):
    path = _received_session(dm)
    victims = [tmp_path / "victim.txt", tmp_path / "other.npy"]
    for victim in victims:
        victim.write_text("keep me")
    bad = [
        str(victims[0]),  # absolute
        "../../other.npy",  # relative to the blob folder, out of it
        "../received.sqlite",  # the session itself
        "",
        ".",
        b"0123456789abcdef0123456789abcdef.npy",
        7,
    ]
    _edit(path, "INSERT INTO garbage (side) VALUES (?)", [(b,) for b in bad])
    assert len(dm.verify()) == len(bad)
    s = dm.session("received")  # opening for writing collects the garbage
    s["small"] = [3]
    s["big"] = np.zeros(BIG)  # its old side file is garbage, and is collected
    assert all(v.read_text() == "keep me" for v in victims)
    assert os.path.exists(path) and len(os.listdir(blob_dir(path))) == 1
    assert s["big"][0] == 0.0 and s["small"] == [3]
    s.close()
    problems = dm.verify()
    assert len(problems) == len(bad), problems
    assert all(p.path == path and "garbage table lists" in p.message for p in problems)
    assert any(repr(str(victims[0])) in p.message for p in problems)


def test_item_side_names_outside_the_blob_folder_are_corrupt(dm, tmp_path):
    path = _received_session(dm)
    secret = tmp_path / "secret.npy"
    np.save(secret, np.arange(5))
    _edit(
        path,
        "UPDATE items SET side = ?, side_size = ? WHERE key = 'big'",
        [(str(secret), secret.stat().st_size)],
    )
    with pytest.raises(CorruptSessionError, match=r"secret\.npy") as info:
        dm.get("big", strict=True)
    assert info.value.key == "big"
    with pytest.warns(DataManagerWarning, match="'big'"):
        assert dm.get("big") == {}
    assert dm.get("small", strict=True) == {"received": [1, 2]}
    [entry] = find_sessions(dm.basepath)
    with entry.open() as reader:
        assert reader.side_files() == []
        with pytest.raises(CorruptSessionError, match="'big'"):
            dict(reader.items())
    [problem] = dm.verify()
    assert problem.path == path and "'big'" in problem.message and "secret.npy" in problem.message
    s = dm.session("received")
    with pytest.raises(CorruptSessionError, match="'big'"):
        s["big"]
    s["big"] = 1  # replacing the key lists the bad name as garbage: still not deleted
    s.close()
    np.testing.assert_array_equal(np.load(secret), np.arange(5))
    [problem] = dm.verify()
    assert "garbage table lists" in problem.message
