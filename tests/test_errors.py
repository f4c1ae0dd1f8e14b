"""The exception records: OSError fields that mean something, and pickling."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from datamanager import (
    CorruptSessionError,
    DataManager,
    ExportError,
    ExportFormatError,
    TransactionAbortedError,
    export_hdf5,
    load_hdf5,
)
from datamanager._format import SIDE_FILE_THRESHOLD, blob_dir


def check_os_fields(err: OSError, code: int | None, reason: str, path: str) -> None:
    """*err* says what any OSError says, and says it again after a pickle round trip."""
    for exc in (err, pickle.loads(pickle.dumps(err))):
        assert isinstance(exc, OSError) and type(exc) is type(err)
        assert (exc.errno, exc.strerror, exc.filename) == (code, reason, path)
        assert exc.filename2 is None
        assert str(exc) == str(err) and exc.args == err.args
        assert vars(exc) == vars(err)


@pytest.mark.parametrize(
    ("err", "code", "reason", "path"),
    [
        (CorruptSessionError("/d/s.sqlite", "bad", "k"), None, "bad", "/d/s.sqlite"),
        (CorruptSessionError("/d/s.sqlite", "bad"), None, "bad", "/d/s.sqlite"),
        (
            TransactionAbortedError(errno.ENOSPC, "full", "/d/s.sqlite"),
            errno.ENOSPC,
            "full",
            "/d/s.sqlite",
        ),
        (ExportError("/o.h5", "exists", errno.EEXIST), errno.EEXIST, "exists", "/o.h5"),
        (ExportError("/o.h5", "failed"), None, "failed", "/o.h5"),
        (
            ExportFormatError("/o.h5", "/sessions", "a group", "a dataset"),
            None,
            "at /sessions, expected a group, found a dataset",
            "/o.h5",
        ),
    ],
)
def test_constructed_errors_fill_the_oserror_fields(err, code, reason, path):
    check_os_fields(err, code, reason, path)
    assert err.path == path


def test_corrupt_session_fields(dm: DataManager):
    with dm.session("s") as s:
        s["x"] = 1
    path = dm.session_filename("s")
    with open(path, "r+b") as f:
        f.write(b"not a database at all" * 10)
    with pytest.raises(CorruptSessionError) as info:
        dm.get("x", strict=True)
    err = info.value
    assert err.path == path and err.key is None
    check_os_fields(err, None, err.reason, path)


def test_side_file_error_names_the_session_file(dm: DataManager):
    with dm.session("s") as s:
        s["big"] = np.zeros(SIDE_FILE_THRESHOLD // 8 + 10)
    path = dm.session_filename("s")
    [side] = os.listdir(blob_dir(path))
    with open(os.path.join(blob_dir(path), side), "r+b") as f:
        f.truncate(100)
    with pytest.raises(CorruptSessionError, match="side file") as info:
        dm.get("big", strict=True)
    err = info.value
    assert (err.path, err.key) == (path, "big")
    check_os_fields(err, None, err.reason, path)


def test_export_errors_carry_errno_and_target(dm: DataManager, tmp_path: Path):
    with dm.session("s") as s:
        s["x"] = 1
    target = tmp_path / "o.h5"
    target.write_bytes(b"precious")
    with pytest.raises(ExportError) as info:
        export_hdf5(dm, target)
    check_os_fields(info.value, errno.EEXIST, info.value.reason, str(target))
    missing = tmp_path / "no" / "o.h5"
    with pytest.raises(ExportError) as info:
        export_hdf5(dm, missing)
    check_os_fields(info.value, errno.ENOENT, info.value.reason, str(missing))


def test_export_format_error_names_the_file(tmp_path: Path):
    target = tmp_path / "plain.h5"
    with h5py.File(target, "w") as f:
        f["x"] = 1
    with pytest.raises(ExportFormatError) as info:
        load_hdf5(target)
    err = info.value
    assert err.expected in err.strerror and err.h5path in err.strerror
    check_os_fields(err, None, err.strerror, str(target))
