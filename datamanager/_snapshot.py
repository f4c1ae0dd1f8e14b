"""Private copies of sessions that SQLite cannot read in place without writing.

Two states of a session file stop a read-only reader:

* a *hot journal*: ``<name>.sqlite-journal`` left by a writer killed inside a
  transaction (any write in rollback-journal mode, or the header change that
  switches a session into or out of WAL).  Only a read-write connection may
  roll it back, so a read-only one fails with "attempt to write a readonly
  database".  A journal that belongs to a live writer is not hot (the writer
  holds its lock) and never gets here.
* a WAL-mode file without its ``-wal`` and ``-shm`` files (copied alone, or
  left by a writer killed while switching journal modes): a read-only reader
  would create them in the data directory, and fails where it cannot.

Such a session is read from a private copy: its files are copied into a new
temporary directory, checked not to have changed meanwhile, and opened there
read-write, so that SQLite itself recovers the last committed state in the
copy, exactly as the next writer will in place.  Nothing in the data directory
is created, changed or locked.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import weakref

from ._descriptors import held
from ._format import SESSION_SUFFIX, SQLITE_DATA

__all__ = ["CopyChanged", "PrivateCopy", "needs_copy", "refused_recovery"]

# Offset of the file format version bytes in the database header: 2 means WAL.
_VERSION_BYTES = 18


class CopyChanged(Exception):
    """The session's files changed while they were copied: a writer is at work."""


def needs_copy(path: str) -> bool:
    """Whether *path* is in WAL mode without the ``-wal`` and ``-shm`` files it needs."""
    if held(path):
        # Closing the descriptor read below would drop SQLite's locks on the
        # file in this process. A connection open here has the file in
        # rollback mode, or in WAL mode with both files: nothing to copy.
        return False
    try:
        fd = os.open(path, os.O_RDONLY)  # cheaper than open(): every reader asks
    except OSError:
        return False  # reading in place reports it
    try:
        wal = os.read(fd, _VERSION_BYTES + 2)[_VERSION_BYTES:] == b"\x02\x02"
    finally:
        os.close(fd)
    return wal and not (os.path.exists(path + "-wal") and os.path.exists(path + "-shm"))


def refused_recovery(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused to recover a file because the connection is read-only."""
    name = getattr(exc, "sqlite_errorname", None)  # Python >= 3.11
    if name is not None:
        return bool(name.startswith("SQLITE_READONLY"))
    return "readonly database" in str(exc)


def _identity(path: str) -> list[tuple[int, ...] | None]:
    """What changes whenever any of the files of *path* is written, replaced or removed."""
    found: list[tuple[int, ...] | None] = []
    for suffix in SQLITE_DATA:
        try:
            st = os.stat(path + suffix)
        except FileNotFoundError:
            found.append(None)
        else:
            found.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return found


class PrivateCopy:
    """The files of one session, copied into a private temporary directory.

    Parameters
    ----------
    source : str
        The session file; its ``-journal`` and ``-wal`` files are copied too.

    Raises
    ------
    CopyChanged
        If any of the files changed during the copy (nothing is left behind).
    """

    def __init__(self, source: str) -> None:
        self.directory = tempfile.mkdtemp(prefix="datamanager-")
        # Removed with the copy even if its owner is never closed.
        self._remove = weakref.finalize(self, shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "session" + SESSION_SUFFIX)
        try:
            before = _identity(source)
            for suffix, stat in zip(SQLITE_DATA, before):
                if stat is not None:
                    shutil.copyfile(source + suffix, self.path + suffix)
            if _identity(source) != before:
                raise CopyChanged(source)
        except FileNotFoundError as exc:  # removed while we copied
            self.remove()
            raise CopyChanged(source) from exc
        except BaseException:
            self.remove()
            raise

    def connect(self) -> sqlite3.Connection:
        """Open the copy; its first read recovers the last committed state."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=OFF")  # a throwaway copy needs no fsync
        conn.execute("PRAGMA query_only=1")  # recovery still runs, nothing else writes
        return conn

    def remove(self) -> None:
        """Delete the copy (its connection must be closed first)."""
        self._remove()
