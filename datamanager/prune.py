"""What may be removed from a data directory, and removing it: :meth:`DataManager.prune`.

Only files the library made and that hold nothing any more are removed, and
each is checked again right before it goes:

* side files no key refers to, and blob folders of no session (what
  :meth:`DataManager.verify` reports), older than :data:`GRACE`;
* leftovers of interrupted writes the library names itself (an index being
  built, an HDF5 export, a recording file; see
  :func:`~datamanager._format.temp_kind`), older than :data:`GRACE`;
* lock files of :class:`~datamanager.locking.LockingSession` that no process
  holds, older than :data:`GRACE`;
* when asked, sessions without keys or task records, and legacy shelves whose
  native twin records a verified migration.

Never anything else: no file of an unknown name, no file a key refers to, no
index.  Whether a process holds a file open is read from ``/proc`` (Linux);
see :func:`open_files` for what that can and cannot see.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterable
from typing import FrozenSet, Optional, Tuple

import filelock

from . import _format as fmt
from . import legacy
from ._format import LOCK_SUFFIX, SESSION_SUFFIX, SQLITE_COMPANIONS
from .errors import CorruptSessionError
from .readers import NativeReader, SessionEntry, list_directory, sqlite_uri
from .verify import ORPHAN_AGE, is_orphan_folder, orphan_folders, orphan_side_files

try:
    import fcntl
except ImportError:  # Windows: no flock, and an open file cannot be removed anyway
    fcntl = None  # type: ignore[assignment]

__all__ = ["GRACE", "REMOVES_LOCKS", "open_files", "prune"]

#: Seconds a file must have been left unchanged before prune removes it: the
#: in-flight grace period of :meth:`DataManager.verify`.
GRACE = ORPHAN_AGE


def _filelock_drops_unlinked() -> bool:
    """Whether the installed filelock drops a lock it won on a removed file (3.20.4 on)."""
    # Its own version string: already imported (by locking), unlike package
    # metadata, whose lookup would cost every `import datamanager` ~15 ms.
    numbers = [int(part) for part in re.findall(r"\d+", filelock.__version__)[:3]]
    return tuple(numbers) >= (3, 20, 4)


#: Whether prune removes lock files no process holds.  Only where flock
#: exists, and only with a filelock that, having won the lock on a file
#: removed meanwhile, locks the file at the path instead; an older one (the
#: last for Python 3.9 is 3.19) would then hold a lock that excludes nobody.
REMOVES_LOCKS = fcntl is not None and _filelock_drops_unlinked()
#: The first bytes of every HDF5 file (h5py writes no user block).
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

#: ``(device, inode)`` of the files processes hold open; None if unknown.
Held = Optional[FrozenSet[Tuple[int, int]]]


def prune(
    basepath: str, dry: bool = True, empty_sessions: bool = False, migrated_shelves: bool = False
) -> list[str]:
    """Remove what is left over in the data directory *basepath*; return the paths, sorted.

    See :meth:`DataManager.prune` for what is removed.  With *dry*, nothing
    is: the paths that would be are returned.  Each function below checks
    its candidate and, with *apply*, removes it right after.
    """
    basepath, apply = os.path.abspath(basepath), not dry
    done: list[str] = []
    held = open_files()
    for entry in list_directory(basepath).native:
        done += _side_files(entry.path, held, apply)
    for folder in orphan_folders(basepath):
        done += _orphan_folder(folder, held, apply)
    try:
        names = sorted(os.listdir(basepath))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    for name in names:
        path = os.path.join(basepath, name)
        kind = fmt.temp_kind(name)
        if kind is not None:
            done += _temp_file(path, kind, held, apply)
        elif name.endswith(SESSION_SUFFIX + LOCK_SUFFIX) and not name.startswith("."):
            done += _lock_file(path, apply)
    if empty_sessions or migrated_shelves:
        held = open_files()  # again: a writer may have opened one meanwhile
    if empty_sessions:
        for entry in list_directory(basepath).native:
            done += _empty_session(entry, held, apply)
    if migrated_shelves:
        for _shelf, verified, files in legacy.migrated_shelves(basepath):
            done += _migrated_shelf(files, verified, held, apply)
    return sorted(done)


# -- what a process holds --


def open_files() -> Held:
    """``(device, inode)`` of every file the processes of this machine hold open.

    Read from ``/proc/<pid>/fd`` (Linux); None where there is no such
    thing, and nothing is known.  It cannot see processes whose descriptors
    this user may not list (another user's, unless run as root), nor any
    process of another machine sharing the filesystem, nor a process that
    opens a file after the look.
    """
    if not os.path.isdir("/proc/self/fd"):
        return None
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        folder = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(folder)
        except OSError:  # exited, or another user's
            continue
        for fd in fds:
            try:
                info = os.stat(os.path.join(folder, fd))  # the file the descriptor is open on
            except OSError:
                continue
            found.add((info.st_dev, info.st_ino))
    return frozenset(found)


def _is_held(paths: Iterable[str], held: Held) -> bool:
    """Whether a process of this machine holds one of *paths* open, as far as *held* knows."""
    if held is None:
        return False
    for path in paths:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if (info.st_dev, info.st_ino) in held:
            return True
    return False


def _old(path: str, now: float) -> bool:
    """Whether *path* exists and was last changed more than GRACE seconds before *now*."""
    try:
        return now - os.lstat(path).st_mtime > GRACE
    except FileNotFoundError:
        return False


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


# -- side files and blob folders --


def _side_files(path: str, held: Held, apply: bool) -> list[str]:
    """The side files of the session at *path* that no key refers to, old ones.

    Decided under the session's write lock, taken without waiting: a writer
    inside a transaction holds it from before it writes a side file until it
    commits the key, however long that takes.  A session a process of this
    machine holds open is left alone: its writer may be about to commit.
    """
    folder = fmt.blob_dir(path)
    if not os.path.isdir(folder) or _is_held([path], held):
        return []
    try:
        conn = sqlite3.connect(
            sqlite_uri(path, "mode=rw"), uri=True, timeout=0, isolation_level=None
        )
    except sqlite3.Error:
        return []
    try:
        conn.execute("BEGIN IMMEDIATE")
        referenced = {side for _, side, _ in conn.execute(fmt.SIDES)}
        found = _orphans(folder, referenced)
        if apply:
            found = [p for p in found if _unlink(p)]
        return found
    except sqlite3.Error:  # busy, being created, or not ours: nothing is decided
        return []
    finally:
        conn.close()  # ends the transaction, which wrote nothing


def _orphans(folder: str, referenced: set[str]) -> list[str]:
    """The old side files of *folder* not in *referenced*; files of other names stay."""
    found = orphan_side_files(folder, referenced)
    return [p for p in found if fmt.is_side_name(os.path.basename(p))]


def _orphan_folder(folder: str, held: Held, apply: bool) -> list[str]:
    """The blob folder of no session, checked again: a session of that name may have appeared."""
    if not is_orphan_folder(folder, time.time()):
        return []
    return _side_folder(folder, held, apply)


def _side_folder(folder: str, held: Held, apply: bool) -> list[str]:
    """A blob folder that holds only old side files that no process holds open.

    Anything else in it is not the library's, and keeps the folder.
    """
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    files = [os.path.join(folder, n) for n in names]
    now = time.time()
    if not all(fmt.is_side_name(n) and stat.S_ISREG(_mode(p)) for n, p in zip(names, files)):
        return []
    if not all(_old(p, now) for p in [folder, *files]) or _is_held(files, held):
        return []
    if not apply:
        return [folder]
    for path in files:
        _unlink(path)
    try:
        os.rmdir(folder)
    except OSError:  # a writer of a new session of that name put a file in it
        return files
    return [folder]


def _mode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


# -- leftovers of interrupted writes, and lock files --


def _temp_file(path: str, kind: str, held: Held, apply: bool) -> list[str]:
    """A file the library was writing under a temporary name, if old and not held open."""
    if not stat.S_ISREG(_mode(path)) or not _old(path, time.time()) or _is_held([path], held):
        return []
    if kind == "export" and not _may_be_hdf5(path):
        return []  # named like an export being written, but it is not one
    if apply and not _unlink(path):
        return []
    return [path]


def _may_be_hdf5(path: str) -> bool:
    """Whether *path* is empty or starts like an HDF5 file, as an export being written does."""
    try:
        with open(path, "rb") as f:
            start = f.read(len(_HDF5_SIGNATURE))
    except OSError:
        return False
    return start in (b"", _HDF5_SIGNATURE)


def _lock_file(path: str, apply: bool) -> list[str]:
    """A lock file that no process holds, old; removed while prune holds it itself.

    A process that opened the file just before it goes may win the lock on
    it just after, on a file no longer at the path that excludes nobody:
    filelock (3.20.4 and later) drops a lock won on a removed file and locks
    the file at the path instead, so mutual exclusion holds throughout; with
    an older filelock (see :data:`REMOVES_LOCKS`) no lock file is removed.
    Removing a file that a process holds would break it: the next process
    would lock a new file beside the holder.
    """
    if not REMOVES_LOCKS or not stat.S_ISREG(_mode(path)) or not _old(path, time.time()):
        return []
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held; or flock is not supported here, and nobody can tell
            return []
        if not os.path.samestat(os.fstat(fd), os.lstat(path)):
            return []  # replaced meanwhile
        if apply and not _unlink(path):
            return []
        return [path]
    except FileNotFoundError:
        return []
    finally:
        os.close(fd)  # releases our hold, after the file is gone


# -- empty sessions and migrated shelves, when asked --


def _empty_session(entry: SessionEntry, held: Held, apply: bool) -> list[str]:
    """The files of a session without keys or task records that no writer may still write.

    A writer that holds a session open may write later, and one in SQLite's
    rollback-journal mode leaves no trace while idle.  So the session must
    have no ``-wal``, ``-shm`` or ``-journal`` file, every file of it must be
    older than GRACE, and no process of this machine may hold it open; where
    that cannot be known (no ``/proc``), no session is removed.
    """
    path = entry.path
    folder = fmt.blob_dir(path)
    if held is None or any(os.path.lexists(path + s) for s in SQLITE_COMPANIONS):
        return []
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return []
    if not stat.S_ISREG(before.st_mode) or _is_held([path], held):
        return []
    if not _quiet(path, folder, held):
        return []
    try:
        with NativeReader(entry, safe=True) as reader:
            if len(reader) or reader.raw_task_records():
                return []
    except (CorruptSessionError, OSError):
        return []
    # Again right before removing: a writer may have begun meanwhile.
    try:
        after = os.lstat(path)
    except FileNotFoundError:
        return []
    unchanged = (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    if not unchanged or any(os.path.lexists(path + s) for s in SQLITE_COMPANIONS):
        return []
    if apply and not _unlink(path):
        return []
    # Its side files are orphans (no key refers to them), as old as the rest.
    return [path, *_side_folder(folder, held, apply)]


def _quiet(path: str, folder: str, held: Held) -> bool:
    """Whether the session file and its blob folder are old, and nothing in them is held."""
    now = time.time()
    try:
        inside = [os.path.join(folder, n) for n in os.listdir(folder)]
    except FileNotFoundError:
        inside = []
    except NotADirectoryError:
        return False
    parts = [path, *([folder] if os.path.isdir(folder) else []), *inside]
    return all(_old(p, now) for p in parts) and not _is_held(parts, held)


def _migrated_shelf(files: list[str], verified: float, held: Held, apply: bool) -> list[str]:
    """The files of a shelf a verified migration replaces, if none changed since.

    A file changed after the migration was verified holds what the native
    twin does not; one a process holds open may change later.  Where that
    cannot be known (no ``/proc``), no shelf is removed.
    """
    if held is None or _is_held(files, held):
        return []
    try:
        if any(os.lstat(f).st_mtime >= verified for f in files):
            return []
    except FileNotFoundError:
        return []
    if apply:
        return [f for f in files if _unlink(f)]
    return list(files)
