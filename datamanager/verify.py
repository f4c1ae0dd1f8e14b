"""Checking a data directory without changing it: what :meth:`DataManager.verify` reports."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from typing import Any

from . import _format as fmt
from ._format import BLOB_SUFFIX, SESSION_SUFFIX
from .errors import CorruptSessionError, UnsafeValueError
from .filestore import file_sha256, may_hold_stored, stored_files
from .readers import SessionEntry, SessionReader
from .safepickle import malformed

__all__ = [
    "ORPHAN_AGE",
    "Problem",
    "is_orphan_folder",
    "orphan_folders",
    "orphan_side_files",
    "verify",
    "verify_store",
]

#: Seconds after which verify() reports a side file no key refers to; younger
#: ones may belong to a write that has not committed its key yet.
ORPHAN_AGE = 60.0


@dataclass(frozen=True)
class Problem:
    """One problem found by :meth:`DataManager.verify`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def verify(basepath: str, entries: list[SessionEntry]) -> list[Problem]:
    """Check the sessions *entries* of the data directory *basepath*; return the problems.

    Checks the SQLite store (``PRAGMA quick_check``), the metadata, that
    every side file is present, whole and a valid ``.npy`` file or value
    file (a value file is read whole, its description followed), that every
    stored pickle (a value or a task record) is well formed (parsed with
    :mod:`pickletools`) and decodes in safe mode (which runs no stored
    code; values of classes safe mode refuses are not unpickled), and that
    legacy shelves can be read.  A session that cannot be checked is
    reported, never raised.  Reports a
    native session that shares a shelf's name without replacing it (an
    interrupted ``migrate()`` leaves one), and side files that no key
    refers to and that are older than :data:`ORPHAN_AGE` seconds: a writer killed between
    writing a large array and committing its key leaves one; it holds no
    key's value and can be deleted.  A blob folder of no session, as old, is
    reported likewise.  Side-file names in a session's tables that are not
    names of its own side files (a damaged or hostile file) are reported;
    writers never delete such files.  Every file of the file store is read
    and checked against its sha256 (:func:`verify_store`), and a value
    referring to a stored file that is missing is reported.  Nothing is
    modified.
    """
    problems = verify_store(basepath)
    problems += [
        Problem(
            path,
            "blob folder of no session (its writer was killed before it created "
            "the session file?); it holds no value and can be deleted",
        )
        for path in orphan_folders(basepath)
    ]
    for entry in entries:
        if entry.twin_problem:
            problems.append(Problem(entry.path + SESSION_SUFFIX, entry.twin_problem))
        try:
            with entry.open(safe=True) as reader:
                problems.extend(Problem(path, msg) for path, msg in _check(reader))
        except CorruptSessionError as exc:
            problems.append(Problem(entry.path, exc.reason))
        except Exception as exc:  # a check that fails is a finding, never a crash
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                raise  # this process is out of descriptors: nothing was checked
            reason = f"cannot be checked ({type(exc).__name__}: {exc})"
            problems.append(Problem(entry.path, reason))
    return problems


def _check(reader: SessionReader) -> list[tuple[str, str]]:
    found = []
    status = reader.integrity()
    if status:
        found.append((reader.path, "integrity check failed: " + "; ".join(status[:5])))
    found.extend(_bad_side_names(reader))
    referenced = set()
    for key, path, size in reader.side_files():
        referenced.add(os.path.basename(path))
        message = _check_side(reader, key, path, size)
        if message:
            found.append((path, f"side file of key {key!r}: {message}"))
    found.extend(
        (
            path,
            "side file that no key refers to (left by a writer killed before it "
            "committed the key?); it holds no value and can be deleted",
        )
        for path in orphan_side_files(fmt.blob_dir(reader.path), referenced)
    )
    try:
        _ = reader.metadata
    except CorruptSessionError as exc:
        found.append((reader.path, exc.reason))
    for key, data in reader.raw_values():
        message = _check_value(reader, key, data)
        if message:
            found.append((reader.path, f"key {key!r}: {message}"))
    for key, data in reader.raw_task_records():
        message = _check_value(reader, key, data)
        if message:
            found.append((reader.path, f"task record {key!r}: {message}"))
    return found


def _bad_side_names(reader: SessionReader) -> list[tuple[str, str]]:
    found = []
    for key, side in reader.listed_sides():
        if fmt.is_side_name(side):
            continue
        if key is None:
            message = (
                f"garbage table lists {side!r}, not a file of this session's blob "
                "folder; writers leave it alone"
            )
        else:
            message = (
                f"key {key!r}: side file name {side!r} is not a file of this "
                "session's blob folder; the value cannot be read"
            )
        found.append((reader.path, message))
    return found


def _check_value(reader: SessionReader, key: str, data: Any) -> str | None:
    """Why one stored value is damaged, or None: parsed, then safely decoded.

    A small value file in its row is decoded whole, as one in a side file is.
    """
    if type(data) is not bytes:
        return f"holds {type(data).__name__}, not a pickle"
    reason = None if fmt.holds_value_file(data) else malformed(data)
    if reason:
        return f"malformed pickle ({reason})"
    try:
        value = fmt.decode(data, reader.path, reader.name, key, safe=True)
    except UnsafeValueError:
        return None  # well formed; checking it further would run its code
    except CorruptSessionError as exc:
        return exc.reason
    if may_hold_stored(data):
        for f in stored_files(value):
            if not os.path.isfile(f.path):
                return (
                    f"refers to stored file {f.name} (sha256 {f.sha256}), missing from the store"
                )
    return None


def verify_store(basepath: str) -> list[Problem]:
    """Check the file store of *basepath*: every stored file against its name, and leftovers.

    Reads every stored file.  Reports a file whose content does not match
    its sha256 (it was damaged: the store never modifies a file), a
    temporary file older than :data:`ORPHAN_AGE` seconds (a store
    interrupted by a killed process; it can be deleted), and names the
    store does not make.
    """
    store = os.path.join(basepath, fmt.STORE_DIR)
    try:
        top = sorted(os.listdir(store))
    except (FileNotFoundError, NotADirectoryError):
        return []
    problems, now = [], time.time()
    for name in top:
        path = os.path.join(store, name)
        if fmt.is_store_temp_name(name):
            with contextlib.suppress(FileNotFoundError):  # renamed meanwhile: now stored
                if now - os.stat(path).st_mtime > ORPHAN_AGE:
                    problems.append(Problem(path, _PARTIAL))
        elif len(name) == 2 and os.path.isdir(path):
            problems.extend(_check_stored(path))
        else:
            problems.append(Problem(path, "not a file of the file store"))
    return problems


_PARTIAL = (
    "partial copy left by an interrupted store (its writer was killed?); "
    "it holds nothing and can be deleted"
)


def _check_stored(folder: str) -> list[Problem]:
    problems = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        sha256 = os.path.basename(folder) + name
        if not fmt.is_stored_name(os.path.basename(folder), name):
            problems.append(Problem(path, "not a file of the file store"))
            continue
        try:
            found, _size = file_sha256(path)
        except OSError as exc:
            problems.append(Problem(path, f"stored file cannot be read ({exc})"))
            continue
        if found != sha256:
            problems.append(
                Problem(path, f"stored file is damaged: its content has sha256 {found}")
            )
    return problems


def orphan_folders(basepath: str) -> list[str]:
    """The blob folders of *basepath* that belong to no session, sorted.

    Only those older than :data:`ORPHAN_AGE` (see :func:`is_orphan_folder`):
    a session being created makes its folder right after its file, and a
    listing may show the one without the other.
    """
    try:
        with os.scandir(basepath) as it:
            folders = sorted(
                e.path
                for e in it
                if e.name.endswith(BLOB_SUFFIX) and not e.name.startswith(".") and e.is_dir()
            )
    except (FileNotFoundError, NotADirectoryError):
        return []
    now = time.time()
    return [folder for folder in folders if is_orphan_folder(folder, now)]


def is_orphan_folder(folder: str, now: float) -> bool:
    """Whether blob folder *folder* has no session file, and nothing in it changed lately.

    "Lately" is :data:`ORPHAN_AGE` seconds before *now*: the folder and every
    file in it must be older.
    """
    if os.path.lexists(folder[: -len(BLOB_SUFFIX)] + SESSION_SUFFIX):
        return False
    try:
        with os.scandir(folder) as it:
            newest = max([os.stat(folder).st_mtime, *(e.stat().st_mtime for e in it)])
    except (FileNotFoundError, NotADirectoryError):
        return False  # removed meanwhile
    return now - newest > ORPHAN_AGE


def orphan_side_files(folder: str, referenced: set[str]) -> list[str]:
    """The files of blob folder *folder* not named in *referenced*, older than ORPHAN_AGE.

    *referenced* holds the side-file names the session's keys refer to; a
    younger file may belong to a write that has not committed its key yet.
    Every such file is listed, whatever its name.
    """
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    now, old = time.time(), []
    for name in names:
        path = os.path.join(folder, name)
        if name not in referenced:
            try:
                if now - os.stat(path).st_mtime > ORPHAN_AGE:
                    old.append(path)
            except FileNotFoundError:
                pass  # deleted since the listing: garbage collected
    return old


def _check_side(reader: SessionReader, key: str, path: str, size: int) -> str | None:
    """Why the side file *path* of *key* is damaged, or None.

    A value file is read whole: a description naming what its parts do not
    hold is found only by building the value, which runs no stored code.
    """
    message = _check_npy(path, size)
    if message is None and path.endswith(fmt.VALUE_SUFFIX):
        try:
            fmt.load_side_file(path, size, reader.path, key, reader.name, safe=True)
        except FileNotFoundError:
            return "missing"
        except CorruptSessionError as exc:
            return f"not a valid value file ({exc.__cause__ or exc.reason})"
    return message


def _check_npy(path: str, expected_size: int) -> str | None:
    try:
        with open(path, "rb") as f:
            fmt.check_side_file(f, expected_size)
    except FileNotFoundError:
        return "missing"
    except fmt.WrongSize as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        kind = "value file" if path.endswith(fmt.VALUE_SUFFIX) else ".npy file"
        return f"not a valid {kind} ({exc})"
    return None
