"""Checking a data directory, and migrating legacy shelves into sessions."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ._npyheader import read_npy_header
from .collate import MIGRATION_VERIFIED, SessionReader, twin_state
from .errors import CorruptSessionError, DataManagerError, UnsafeValueError
from .safepickle import malformed
from .session import BLOB_SUFFIX, SESSION_SUFFIX, Session, blob_dir, decode, is_side_name

if TYPE_CHECKING:
    from .manager import DataManager, Problem

__all__ = ["migrate", "verify"]


def verify(dm: DataManager) -> list[Problem]:
    """Check every session of *dm* and return the problems found.

    Checks the SQLite store (``PRAGMA quick_check``), the metadata, that
    every side file is present, whole and a valid ``.npy`` file, that every
    stored pickle is well formed (parsed with :mod:`pickletools`) and decodes
    in safe mode (which runs no stored code; values of classes safe mode
    refuses are not unpickled), and that legacy shelves can be read.  A
    session that cannot be checked is reported, never raised.  Reports a
    native session that shares a shelf's name without replacing it (an
    interrupted :func:`migrate` leaves one), and side files that no key
    refers to and that are older than :data:`ORPHAN_AGE` seconds: a writer killed between
    writing a large array and committing its key leaves one; it holds no
    key's value and can be deleted.  A blob folder of no session, as old, is
    reported likewise.  Side-file names in a session's tables that are not
    names of its own side files (a damaged or hostile file) are reported;
    writers never delete such files.  Nothing is modified.
    """
    from .manager import Problem

    entries = dm._entries(warn=False)
    problems = [
        Problem(
            path,
            "blob folder of no session (its writer was killed before it created "
            "the session file?); it holds no value and can be deleted",
        )
        for path in _orphan_folders(dm.basepath)
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
    if reader._conn is not None:
        status = [r[0] for r in reader._query("PRAGMA quick_check")]
        if status != ["ok"]:
            found.append((reader.path, "integrity check failed: " + "; ".join(status[:5])))
    found.extend(_bad_side_names(reader))
    referenced = set()
    for key, path, size in reader.side_files():
        referenced.add(os.path.basename(path))
        message = _check_npy(path, size)
        if message:
            found.append((path, f"side file of key {key!r}: {message}"))
    found.extend(
        (
            path,
            "side file that no key refers to (left by a writer killed before it "
            "committed the key?); it holds no value and can be deleted",
        )
        for path in _orphans(blob_dir(reader.path), referenced)
    )
    try:
        _ = reader.metadata
    except CorruptSessionError as exc:
        found.append((reader.path, exc.reason))
    for key, data in reader.raw_values():
        message = _check_value(reader, key, data)
        if message:
            found.append((reader.path, f"key {key!r}: {message}"))
    return found


def _bad_side_names(reader: SessionReader) -> list[tuple[str, str]]:
    if reader._conn is None:
        return []
    found = [
        (
            reader.path,
            f"key {key!r}: side file name {side!r} is not a file of this "
            "session's blob folder; the value cannot be read",
        )
        for key, side in reader._query("SELECT key, side FROM items WHERE side IS NOT NULL")
        if not is_side_name(side)
    ]
    found.extend(
        (
            reader.path,
            f"garbage table lists {side!r}, not a file of this session's blob "
            "folder; writers leave it alone",
        )
        for (side,) in reader._query("SELECT side FROM garbage")
        if not is_side_name(side)
    )
    return found


def _check_value(reader: SessionReader, key: str, data: Any) -> str | None:
    """Why one stored pickle is damaged, or None: parsed, then safely unpickled."""
    if type(data) is not bytes:
        return f"holds {type(data).__name__}, not a pickle"
    reason = malformed(data)
    if reason:
        return f"malformed pickle ({reason})"
    try:
        decode(data, reader.path, reader.name, key, safe=True)
    except UnsafeValueError:
        pass  # well formed; checking it further would run its code
    except CorruptSessionError as exc:
        return exc.reason
    return None


#: Seconds after which verify() reports a side file no key refers to; younger
#: ones may belong to a write that has not committed its key yet.
ORPHAN_AGE = 60.0


def _orphan_folders(basepath: str) -> list[str]:
    """The blob folders in *basepath* whose session file is missing, and old."""
    try:
        with os.scandir(basepath) as it:
            folders = sorted(
                e.path
                for e in it
                if e.name.endswith(BLOB_SUFFIX) and not e.name.startswith(".") and e.is_dir()
            )
    except (FileNotFoundError, NotADirectoryError):
        return []
    now, old = time.time(), []
    for folder in folders:
        if os.path.lexists(folder[: -len(BLOB_SUFFIX)] + SESSION_SUFFIX):
            continue
        try:
            with os.scandir(folder) as it:
                newest = max([os.stat(folder).st_mtime, *(e.stat().st_mtime for e in it)])
        except FileNotFoundError:
            continue  # removed meanwhile
        if now - newest > ORPHAN_AGE:
            old.append(folder)
    return old


def _orphans(directory: str, referenced: set[str]) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    now, old = time.time(), []
    for name in names:
        path = os.path.join(directory, name)
        if name not in referenced:
            try:
                if now - os.stat(path).st_mtime > ORPHAN_AGE:
                    old.append(path)
            except FileNotFoundError:
                pass  # deleted since the listing: garbage collected
    return old


def _check_npy(path: str, expected_size: int) -> str | None:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != expected_size:
                return f"{size} bytes, expected {expected_size}"
            header = read_npy_header(f)
        if header.size != size:
            return f"{size} bytes, but its header describes {header.size}"
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as exc:
        return f"not a valid .npy file ({exc})"
    return None


def migrate(dm: DataManager) -> list[str]:
    """Convert every legacy shelf of *dm* into a native session of the same name.

    Each value is copied in one transaction, then the new session is read
    back and compared with the shelf value by value; only then does a last
    commit record the migration as verified (metadata ``migration_verified``,
    beside ``migrated_from``).  Collation reads the native session and
    ignores the shelf once, and only once, that record exists: a migration
    killed at any point leaves the shelf in use, with a warning that names
    the incomplete native session, which :func:`verify` reports too and the
    next ``migrate()`` replaces.  A native session of a shelf's name that
    holds data of its own (Brian named computer sessions as this library
    does) is left alone, and so is that shelf.  The shelf files are never
    deleted or changed.

    Returns
    -------
    list of str
        The names of the sessions migrated.

    Raises
    ------
    DataManagerError
        If a value read back differs from the original; the partial native
        session is removed and the shelf stays in use.
    CorruptSessionError
        If a native session of a shelf's name is damaged beyond what SQLite
        recovers: it is left in place for the user to move away.
    """
    migrated = []
    for entry in dm._entries(warn=False):
        if not entry.legacy:
            continue
        target = dm.session(entry.name)
        with entry.open(dm.safe) as shelf:
            if entry.twin_problem and not _discard_incomplete(target, shelf):
                continue  # verified after all, or a session of its own
            try:
                with target.transaction():
                    for key, value in shelf.items():
                        target[key] = value
                    target.update_metadata({"created": shelf.created, "migrated_from": entry.path})
                target.close()
                _compare(shelf, target.path, dm.safe)
                target.update_metadata({MIGRATION_VERIFIED: time.time()})
            except BaseException:
                target.close()
                _remove_session(target.path)
                raise
            target.close()
        migrated.append(entry.name)
    return migrated


def _discard_incomplete(twin: Session, shelf: SessionReader) -> bool:
    """Remove *twin* if an interrupted migration of *shelf* left it; say whether it did.

    Opened as a writer, which recovers what a killed transaction left (a hot
    journal stops a read-only reader), so the answer is sure.  A verified
    twin, or one holding data of its own, stays.
    """
    try:
        with twin:
            state = twin_state(twin.metadata, list(twin), shelf.keys)
    except (CorruptSessionError, sqlite3.DatabaseError, ValueError) as exc:
        raise CorruptSessionError(
            twin.path,
            f"cannot tell whether it is a migration of {shelf.path} "
            f"({getattr(exc, 'reason', exc)}); move it away and run migrate() again",
        ) from exc
    if state != "incomplete":
        return False
    _remove_session(twin.path)
    return True


def _compare(shelf: SessionReader, path: str, safe: bool) -> None:
    from .collate import SessionEntry

    with SessionEntry(shelf.name, path).open(safe) as copy:
        if sorted(copy.keys()) != sorted(shelf.keys()):
            raise DataManagerError(f"migration of {shelf.path}: keys differ after copying")
        for key in shelf.keys():  # noqa: SIM118 - a reader is not a Mapping
            if not _same(shelf[key], copy[key]):
                raise DataManagerError(
                    f"migration of {shelf.path}: key {key!r} differs after copying"
                )


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        nan = a.dtype.kind in "fc"
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=nan)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return pickle.dumps(a, 5) == pickle.dumps(b, 5)
    except Exception:
        return bool(a == b)


def _remove_session(path: str) -> None:
    # The database goes last, so that a kill part way leaves no companion
    # without it: a stale -wal or -journal would be replayed into the next
    # session of that name, and a lone side folder would be a stray.
    shutil.rmtree(blob_dir(path), ignore_errors=True)
    for suffix in ("-wal", "-shm", "-journal", ""):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
