"""A full disk, for real: a small tmpfs filled up, then sessions written on it."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from datamanager import CorruptSessionError, DataManager, TransactionAbortedError
from datamanager._format import SIDE_FILE_THRESHOLD, blob_dir

BIG = SIDE_FILE_THRESHOLD // 8 + 10  # float64 elements: just over the side-file threshold


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A 4 MiB filesystem of its own (a tmpfs; mounting one needs root)."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"a real full disk needs a tmpfs mount, which failed: {proc.stderr.strip()}")
    yield mountpoint
    # Lazy: a file still open in the test must not keep the mount alive.
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill *disk* with one file, then free *leave* bytes of it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))


def written_before(disk: Path, journal_mode: str = "wal") -> tuple[DataManager, object]:
    dm = DataManager("sweep", str(disk), journal_mode=journal_mode)
    s = dm.session("s")
    s["before"] = [1, 2, 3]
    s["big"] = np.arange(BIG, dtype=np.float64)
    return dm, s


def assert_unchanged(dm: DataManager, s: object) -> None:
    assert list(s) == ["before", "big"] and s["before"] == [1, 2, 3]
    assert len(os.listdir(blob_dir(s.path))) == 1
    assert dm.get("before", strict=True) == {"s": [1, 2, 3]}
    np.testing.assert_array_equal(dm.get("big", strict=True)["s"], np.arange(BIG))


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_transaction_that_fills_the_disk_stores_nothing(disk, journal_mode):
    dm, s = written_before(disk, journal_mode)
    fill(disk, leave=64 << 10)
    with pytest.raises(TransactionAbortedError) as at_exit, s.transaction():
        with pytest.raises(OSError) as first:  # what a block that goes on catches
            for i in range(2_000):
                s[f"k{i}"] = bytes(4096)
        # Each later write in the block fails too, instead of being
        # stored alone as if the block still held a transaction.
        later = [
            lambda: s.__setitem__("after", 1),
            lambda: s.__delitem__("before"),
            lambda: s.update(more=2),
            lambda: s.update_metadata({"m": 1}),
        ]
        for write in later:
            with pytest.raises(TransactionAbortedError):
                write()
    for error in (first.value, at_exit.value):
        assert isinstance(error, TransactionAbortedError) and error.errno == errno.ENOSPC
        assert "none of its writes were stored" in str(error)
    copy = pickle.loads(pickle.dumps(at_exit.value))  # as it leaves a worker process
    assert (copy.errno, copy.path, str(copy)) == (errno.ENOSPC, s.path, str(at_exit.value))
    assert_unchanged(dm, s)
    os.unlink(disk / "filler")
    s["after"] = 1  # the session is usable again once there is room
    assert list(s) == ["before", "big", "after"]
    s.close()


def test_commit_on_a_full_disk_stores_nothing(disk):
    dm, s = written_before(disk)
    fill(disk)
    with pytest.raises(TransactionAbortedError) as info, s.transaction():
        s["a"] = 1
        s["b"] = bytes(300_000)  # fits in SQLite's cache: it fails at the commit
    assert info.value.errno == errno.ENOSPC
    assert_unchanged(dm, s)
    s.close()


def test_side_file_on_a_full_disk_undoes_its_transaction(disk):
    dm, s = written_before(disk)
    fill(disk, leave=64 << 10)
    with pytest.raises(TransactionAbortedError) as info, s.transaction():
        s["small"] = 1
        s["big2"] = np.ones(BIG)
    assert info.value.errno == errno.ENOSPC
    assert_unchanged(dm, s)
    with pytest.raises(OSError) as info:  # outside a transaction: this write alone
        s["big2"] = np.ones(BIG)
    assert info.value.errno == errno.ENOSPC and not isinstance(info.value, TransactionAbortedError)
    assert_unchanged(dm, s)
    s.close()


def test_writes_and_new_sessions_on_a_full_disk_raise_enospc(disk):
    dm, s = written_before(disk)
    fill(disk)
    for write in (
        lambda: s.__setitem__("x", bytes(300_000)),
        lambda: dm.session("new").__setitem__("x", 1),
    ):
        with pytest.raises(OSError) as info:
            write()
        assert info.value.errno == errno.ENOSPC, info.value
        assert not isinstance(info.value, CorruptSessionError)
    assert_unchanged(dm, s)
    s.close()
