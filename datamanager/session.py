"""Session: one crash-safe on-disk shelf, a persistent dict of str keys.

A session is an SQLite database ``<name>.sqlite`` in the data directory.  Every
write is an SQLite transaction, so a process killed at any moment leaves each
key with its previous value or its new one, never half of either.  Large numpy
arrays do not crawl through SQLite: they are written whole with ``np.save`` to
a side file in ``<name>.blobs/`` first and only then referenced from the
database, so a reader sees either no reference or a complete file.

On local disks a session is in SQLite's WAL mode while open and switched back
to a rollback journal by :meth:`Session.close`, after every committed value was
copied into the main file: a closed session is one self-contained file. On
network filesystems it keeps the rollback journal (see
:mod:`datamanager.filesystem`). A kill in the middle of a rollback-journal
transaction, including the header change of either switch, leaves a hot
``-journal``: the next writer rolls it back in place, readers in a private copy
(:mod:`datamanager._snapshot`).
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from . import safepickle
from ._npyheader import read_npy_header
from .errors import (
    CorruptSessionError,
    InvalidNameError,
    TransactionAbortedError,
    UnsafeValueError,
)
from .filesystem import choose_journal_mode
from .provenance import session_metadata

__all__ = ["SESSION_SUFFIX", "SIDE_FILE_THRESHOLD", "Session", "validate_session_name"]

SESSION_SUFFIX = ".sqlite"
BLOB_SUFFIX = ".blobs"
#: numpy arrays of at least this many bytes are stored in a side file.
SIDE_FILE_THRESHOLD = 1 << 20
#: SQLite page size of new sessions; see _open.
PAGE_SIZE = 2048
#: How long a writer waits for another process holding the same session.
BUSY_TIMEOUT = 60.0
#: The name of every side file: what _write_side makes, a uuid4 in hex.
_SIDE_NAME = re.compile(r"[0-9a-f]{32}\.npy")
#: SQLite's result code for a full disk (or an exceeded quota).
_SQLITE_FULL = 13
_NO_SPACE = os.strerror(errno.ENOSPC)
#: How long close() waits for a reader of an older state before copying the WAL into the file.
CHECKPOINT_TIMEOUT = 10.0

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS items (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB,         -- the pickled value, or NULL when it lives in a side file
        side TEXT,          -- name of the side file in <name>.blobs/, or NULL
        side_size INTEGER)""",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
    # Side files that no row references any more, to be deleted.  Triggers
    # fill it inside the very statement that replaces or deletes a row, so a
    # plain write stays one statement and a crash forgets no file.
    "CREATE TABLE IF NOT EXISTS garbage (side TEXT NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS replaced_side AFTER UPDATE OF side ON items
        WHEN old.side IS NOT NULL AND old.side IS NOT new.side
        BEGIN INSERT INTO garbage (side) VALUES (old.side); END""",
    """CREATE TRIGGER IF NOT EXISTS deleted_side AFTER DELETE ON items
        WHEN old.side IS NOT NULL
        BEGIN INSERT INTO garbage (side) VALUES (old.side); END""",
]
_UPSERT = (
    "INSERT INTO items (key, value, side, side_size) VALUES (?, ?, ?, ?) "
    # An upsert (not INSERT OR REPLACE) keeps the row id, so a key keeps its
    # place in iteration order when it is overwritten, as in a dict.
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, side = excluded.side, "
    "side_size = excluded.side_size"
)

# Connections opened before a fork belong to the parent: the child must never
# use or close them (closing could disturb the parent's locks), so they are
# parked here for the child's lifetime.
_ABANDONED: list[sqlite3.Connection] = []

# How many SQLite connections this process has open to each session file.
# SQLite locks files with POSIX locks, which the kernel drops as soon as the
# process closes *any* descriptor of that file: code that reads a session file
# with plain open() must not do so while SQLite may hold locks on it here.
_HELD: dict[str, int] = {}
_HELD_LOCK = threading.Lock()


def hold(path: str, count: int = 1) -> None:
    """Count one connection of this process to *path* opened (or, with -1, closed)."""
    if not os.path.isabs(path):
        path = os.path.abspath(path)  # a relative datapath names the same file
    with _HELD_LOCK:
        left = _HELD.get(path, 0) + count
        if left > 0:
            _HELD[path] = left
        else:
            _HELD.pop(path, None)


def held(path: str) -> bool:
    """Whether this process has a connection open to the session file *path*."""
    return bool(_HELD) and os.path.abspath(path) in _HELD


def validate_session_name(name: Any) -> str:
    """Return *name* if it can name a session file, else raise InvalidNameError."""
    if not isinstance(name, str):
        raise InvalidNameError(name, f"must be a str, not {type(name).__name__}")
    if not name or not name.strip():
        raise InvalidNameError(name, "must not be empty")
    for bad, why in (("/", "a path separator"), ("\\", "a path separator"), ("\0", "NUL")):
        if bad in name:
            raise InvalidNameError(name, f"contains {why} ({bad!r})")
    if ".." in name:
        raise InvalidNameError(name, "contains '..'")
    if name.startswith("."):
        raise InvalidNameError(name, "must not start with '.' (hidden files are not sessions)")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate is no text: it comes from a file name in another
        # encoding (os.listdir keeps such bytes with surrogateescape) and
        # neither an export nor another machine could store or show it.
        raise InvalidNameError(name, "cannot be encoded as UTF-8") from None
    if len(encoded) > 200:
        raise InvalidNameError(name, "is longer than 200 bytes")
    return name


def blob_dir(path: str) -> str:
    """Return the side-file folder of the session stored at *path*."""
    return path[: -len(SESSION_SUFFIX)] + BLOB_SUFFIX


def is_side_name(name: Any) -> bool:
    """Whether *name* is a side-file name as the writer makes them.

    A session's tables name its side files, and a session received from
    elsewhere may name anything there: an absolute path, ``../..``.  Only
    the exact form the writer uses (32 lowercase hex digits and ``.npy``)
    is accepted, so a name can only ever mean one plain file inside the
    session's own blob folder; being stricter than "no separator" costs no
    genuine session anything.
    """
    return type(name) is str and _SIDE_NAME.fullmatch(name) is not None


def side_path(path: str, side: Any, key: str) -> str:
    """Return the path of side file *side* of key *key* of the session at *path*.

    Raises
    ------
    CorruptSessionError
        If *side* is not a side-file name (see :func:`is_side_name`).
    """
    if not is_side_name(side):
        raise CorruptSessionError(
            path, f"side file name {side!r} is not a file of this session's blob folder", key
        )
    return os.path.join(blob_dir(path), side)


def _is_side_array(value: Any) -> bool:
    return (
        type(value) is np.ndarray
        and value.nbytes >= SIDE_FILE_THRESHOLD
        and not value.dtype.hasobject
    )


def load_side_file(path: str, expected_size: int | None, session_path: str, key: str) -> Any:
    """Load side file *path* of key *key*, checking it is whole and its header describes it.

    Its damage is reported as a :class:`CorruptSessionError` of the session at
    *session_path*, which owns the file.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if expected_size is not None and size != expected_size:
            raise CorruptSessionError(
                session_path, f"side file {path} has {size} bytes, expected {expected_size}", key
            )
        try:
            header = read_npy_header(f)
            if header.size != size:
                raise ValueError(f"{size} bytes, but its header describes {header.size}")
            count = math.prod(header.shape)
            array = np.fromfile(f, header.dtype, count)
            if array.size != count:
                raise ValueError(f"{array.size} of {count} items could be read")
        except ValueError as exc:
            raise CorruptSessionError(session_path, f"side file {path}: {exc}", key) from exc
    return array.reshape(header.shape, order="F" if header.fortran_order else "C")


class Session(MutableMapping):
    """A persistent dict of str keys to picklable values, safe against crashes.

    Obtain one from :meth:`DataManager.session` or
    :meth:`DataManager.computer_session` rather than directly.  Nothing is
    written to disk until the first value: the session file, and the data
    directory, are created by the first write.

    Each ``session[key] = value`` is durable once it returns: a process killed
    afterwards (even by SIGKILL) leaves the value readable.  Use
    :meth:`transaction` to make several writes one atomic step (and faster).
    Several processes may open the same named session; their writes are
    serialised by SQLite.

    Parameters
    ----------
    path : str
        The session file, ``<data directory>/<name>.sqlite``.
    journal_mode : {'wal', 'delete'}, optional
        SQLite journal; chosen from the filesystem when omitted (see
        :func:`datamanager.filesystem.choose_journal_mode`).

    Examples
    --------
    >>> import os, tempfile
    >>> s = Session(os.path.join(tempfile.mkdtemp(), "demo.sqlite"))
    >>> s["rates"] = [1.5, 2.5]
    >>> s["rates"], len(s), "rates" in s
    ([1.5, 2.5], 1, True)
    >>> s.close()
    """

    def __init__(self, path: str, journal_mode: str | None = None) -> None:
        path = os.fspath(path)
        if not path.endswith(SESSION_SUFFIX):
            raise ValueError(f"a session file name ends with {SESSION_SUFFIX!r}: {path!r}")
        self.path = os.path.abspath(path)
        self.name = os.path.basename(path)[: -len(SESSION_SUFFIX)]
        self._requested_journal = journal_mode
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._depth = 0  # nesting depth of transaction()
        self._new_sides: list[str] = []  # side files written by the open transaction
        # TransactionAbortedError arguments while the open transaction is lost.
        self._aborted: tuple[int | None, str, str] | None = None

    # -- pickling carries configuration, never a connection --

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "journal_mode": self._requested_journal}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["path"], state["journal_mode"])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} at {self.path!r}>"

    # -- connection management --

    def _connection(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None and self._pid != os.getpid():
            _ABANDONED.append(self._conn)
            self._conn, self._depth = None, 0
            self._pid = os.getpid()
        if self._conn is None:
            if not create and not os.path.exists(self.path):
                return None
            self._conn = self._open()
            hold(self.path)
        return self._conn

    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        self.journal_mode = choose_journal_mode(directory, self._requested_journal)
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            # WAL + NORMAL is durable against a killed process (only a power cut
            # can lose the newest commits); on a network filesystem we fsync.
            # Set before the journal mode, so creating the file syncs less.
            sync = "NORMAL" if self.journal_mode == "wal" else "FULL"
            conn.execute(f"PRAGMA synchronous={sync}")
            # Smaller pages mean fewer bytes in the WAL per small write, about
            # 10% more durable writes per second; this only takes
            # effect on a new file.
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            # Changing the journal mode needs a lock the busy handler does not
            # always wait for, so retry while a twin process initialises the
            # same named session at the same instant.
            _retry_locked(lambda: conn.execute(f"PRAGMA journal_mode={self.journal_mode}"))
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in session_metadata().items()],
            )
            conn.execute("COMMIT")
            self._collect_garbage(conn)  # left behind by a process killed mid-way
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _disk_full(exc):  # not damage: say so, as any other write would
                why = f"{_NO_SPACE}: cannot create or open the session"
                raise OSError(errno.ENOSPC, why, self.path) from exc
            raise CorruptSessionError(self.path, str(exc)) from exc
        return conn

    def close(self) -> None:
        """Close the session; it reopens by itself if used again."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid != os.getpid():
                _ABANDONED.append(conn)  # the parent's: never close it here
                return
            if conn is None:
                return
            if self._depth:
                # Closed inside a block: undo it (SQLite may have done so
                # already, after a full disk).
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._depth, self._aborted = 0, None
            if self.journal_mode == "wal":
                self._leave_whole(conn)
            conn.close()
            hold(self.path, -1)

    def _leave_whole(self, conn: sqlite3.Connection) -> None:
        """Leave the session as one self-contained file, back in rollback-journal mode.

        Every committed value is first copied from the WAL into the main file:
        another process holding the session open (a reader too) makes the
        switch out of WAL fail, and the file must still be whole if copied
        alone. The switch spares later readers the ``-wal`` and ``-shm`` files
        a WAL-mode file needs (on read-only media too); it changes the header
        through a rollback journal, which a kill may leave hot: readers then
        recover the last commit in a private copy, the next writer in place.
        """
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            # Waits for no one, and copies every frame unless a reader is in
            # the middle of reading an older state.
            _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if copied != frames:
                # Our readers never read for long: wait for them, bounded.
                conn.execute(f"PRAGMA busy_timeout = {int(CHECKPOINT_TIMEOUT * 1000)}")
                conn.execute("PRAGMA wal_checkpoint(FULL)")
                conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA journal_mode=DELETE")  # fails while others have it open
        except sqlite3.OperationalError:
            pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- writing --

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Group writes into one atomic, durable step.

        Inside the block the session is locked against other writers of the
        same session file; on an exception every write of the block is undone.
        Blocks nest: only the outermost one commits.

        A fault that loses the transaction (a full disk: SQLite then rolls it
        back by itself) undoes the whole block: the write that met it raises
        :class:`~datamanager.errors.TransactionAbortedError` (an ``OSError``,
        ``errno.ENOSPC`` for a full disk), and so does every later write in
        the block and the end of the block, even if the block caught the
        first one.  Nothing of the block is stored.

        Examples
        --------
        >>> import os, tempfile
        >>> s = Session(os.path.join(tempfile.mkdtemp(), "demo.sqlite"))
        >>> with s.transaction():
        ...     s["a"], s["b"] = 1, 2
        >>> sorted(s)
        ['a', 'b']
        """
        with self._lock:
            conn = self._connection(create=True)
            assert conn is not None
            if self._aborted is not None:
                raise TransactionAbortedError(*self._aborted)  # a block nested in a lost one
            if self._depth == 0:
                conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException as exc:
                # update() and update_metadata() write through the connection
                # directly: their failures are first seen here.
                failure = self._failure(conn, exc) if isinstance(exc, sqlite3.Error) else None
                self._depth -= 1
                if self._depth == 0:
                    self._finish(conn, commit=False)
                if failure is not None:
                    raise failure from exc
                raise
            self._depth -= 1
            if self._depth == 0:
                self._finish(conn, commit=True)

    def _finish(self, conn: sqlite3.Connection, commit: bool) -> None:
        new, self._new_sides = self._new_sides, []
        aborted, self._aborted = self._aborted, None
        if aborted is not None:  # already rolled back, its side files removed
            if commit:
                raise TransactionAbortedError(*aborted)
            return
        try:
            conn.execute("COMMIT" if commit else "ROLLBACK")
        except sqlite3.Error as exc:
            # Only a failed statement may remove the side files: after a
            # COMMIT that returned, committed rows refer to them.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._unlink_sides(new)  # written for rows that were never committed
            if _disk_full(exc):
                raise TransactionAbortedError(errno.ENOSPC, _NO_SPACE, self.path) from exc
            raise
        if commit:
            self._collect_garbage(conn)
        else:
            self._unlink_sides(new)

    def _failure(self, conn: sqlite3.Connection, exc: sqlite3.Error) -> Exception | None:
        """The error to raise instead of *exc*, a failed write; None to raise *exc*.

        SQLite may roll a whole transaction back by itself after an error (it
        does on a full disk); a block that went on would then store each later
        write alone.  So a transaction that met a full disk, or that is gone,
        is rolled back whole and the block refuses every later write.
        """
        full = _disk_full(exc)
        if self._depth and full:
            return self._abort(conn, errno.ENOSPC, _NO_SPACE)
        if self._depth and not conn.in_transaction:
            return self._abort(conn, None, str(exc))
        if full:
            return OSError(errno.ENOSPC, f"{_NO_SPACE}: the write was not stored", self.path)
        return None

    def _abort(
        self, conn: sqlite3.Connection, code: int | None, reason: str
    ) -> TransactionAbortedError:
        """Roll the open transaction back whole and refuse writes until its block ends."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        new, self._new_sides = self._new_sides, []
        self._unlink_sides(new)
        self._aborted = (code, reason, self.path)
        return TransactionAbortedError(*self._aborted)

    def _unlink_sides(self, names: list[str]) -> None:
        for name in names:
            try:
                os.unlink(os.path.join(blob_dir(self.path), name))
            except OSError:
                pass  # gone already; any other failure leaves an orphan verify() lists

    def _collect_garbage(self, conn: sqlite3.Connection) -> None:
        """Delete the side files that committed writes left unreferenced.

        Only names that :func:`is_side_name` accepts are deleted: a session
        received from elsewhere can list any path in its ``garbage`` table.
        Other names stay listed, unused, so that ``verify()`` keeps reporting
        them instead of a writer wiping out the trace of the damage.
        """
        if not any(is_side_name(r[0]) for r in conn.execute("SELECT side FROM garbage")):
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                listed = conn.execute("SELECT rowid, side FROM garbage").fetchall()
                rows = [(rowid, side) for rowid, side in listed if is_side_name(side)]
                # Files go before their rows: a crash in between leaves names of
                # missing files (skipped next time), never an unlisted orphan.
                self._unlink_sides([side for _, side in rows])
                conn.executemany("DELETE FROM garbage WHERE rowid = ?", [(r,) for r, _ in rows])
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.OperationalError:
            # The write that made the garbage is committed, so it must not
            # look failed (on a full disk, or when another writer holds the
            # session too long): what is left is collected next time.
            pass

    def _writable(self) -> sqlite3.Connection:
        """The connection to write with, opened (and the file created) if need be."""
        if self._aborted is not None:
            raise TransactionAbortedError(*self._aborted)
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            conn = self._connection(create=True)
            assert conn is not None
        return conn

    def _write(self, sql: str, params: tuple[Any, ...], new_side: str | None = None) -> int:
        """Run one writing statement, alone or inside the open transaction.

        Returns the number of rows it changed (not counting trigger rows).
        """
        with self._lock:
            conn = None
            try:
                conn = self._writable()
                before = conn.total_changes
                changed = conn.execute(sql, params).rowcount
            except BaseException as exc:
                if new_side is not None:
                    self._unlink_sides([new_side])
                failed = isinstance(exc, sqlite3.Error) and conn is not None
                failure = self._failure(conn, exc) if failed else None
                if failure is not None:
                    raise failure from exc
                raise
            if new_side is not None and self._depth:
                self._new_sides.append(new_side)
            # total_changes counts the garbage rows the triggers added.
            if conn.total_changes - before > changed and not self._depth:
                self._collect_garbage(conn)
            return changed

    def __setitem__(self, key: str, value: Any) -> None:
        # The common case (a str key, a small value) is kept short: it is the
        # hot path of every simulation.
        if type(key) is not str:
            _check_key(key)
        if type(value) is np.ndarray and _is_side_array(value):
            side, size = self._write_side(key, value)
            self._write(_UPSERT, (key, None, side, size), new_side=side)
        else:
            self._write(_UPSERT, (key, safepickle.dumps(key, value), None, None))

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Store several items at once: one transaction, all of them or none.

        Takes what :meth:`dict.update` takes. Small values go to SQLite in
        one batch, several times faster than one ``s[key] = value`` each.
        Inside an enclosing :meth:`transaction`, that block decides: it keeps
        what was written if it catches the error and goes on (unless the error
        is a :class:`~datamanager.errors.TransactionAbortedError`).

        Examples
        --------
        >>> import os, tempfile
        >>> s = Session(os.path.join(tempfile.mkdtemp(), "demo.sqlite"))
        >>> s.update({"a": 1}, b=2)
        >>> dict(s)
        {'a': 1, 'b': 2}
        """
        if isinstance(other, Mapping):
            pairs = other.items()
        elif hasattr(other, "keys"):  # dict.update's protocol
            pairs = ((k, other[k]) for k in other.keys())  # noqa: SIM118
        else:
            pairs = other
        with self.transaction():
            conn = self._conn
            assert conn is not None
            rows: list[tuple[Any, ...]] = []
            for key, value in itertools.chain(pairs, kwargs.items()):
                if type(key) is not str:
                    _check_key(key)
                if type(value) is np.ndarray and _is_side_array(value):
                    conn.executemany(_UPSERT, rows)  # keep the order of the keys
                    rows = []
                    self[key] = value
                else:
                    rows.append((key, safepickle.dumps(key, value), None, None))
            conn.executemany(_UPSERT, rows)

    def _write_side(self, key: str, array: np.ndarray) -> tuple[str, int]:
        with self._lock:
            # The session file, with its tables, exists before any side file:
            # a writer killed in between leaves an empty session, never a
            # blob folder that belongs to no session.
            conn = self._writable()
        directory = blob_dir(self.path)
        name = uuid.uuid4().hex + ".npy"
        try:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, name), "xb") as f:
                np.save(f, array, allow_pickle=False)
                size = f.tell()
        except BaseException as exc:
            self._unlink_sides([name])
            if not isinstance(exc, OSError):
                raise
            code = exc.errno
            if code is None:
                # numpy reports a short write without an errno; say what it means.
                full = shutil.disk_usage(directory).free < array.nbytes
                code = errno.ENOSPC if full else errno.EIO
            with self._lock:
                if code == errno.ENOSPC and self._depth:
                    # A full disk loses the whole transaction, as when SQLite meets it.
                    raise self._abort(conn, code, _NO_SPACE) from exc
            if exc.errno is None:
                why = _NO_SPACE if code == errno.ENOSPC else "short write"
                path = os.path.join(directory, name)
                raise OSError(code, f"cannot store key {key!r}: {why} ({exc})", path) from exc
            raise
        return name, size

    def __delitem__(self, key: str) -> None:
        _check_key(key)
        if self._conn is None and not os.path.exists(self.path):
            raise KeyError(key)  # never written: do not create it just to say so
        if not self._write("DELETE FROM items WHERE key = ?", (key,)):
            raise KeyError(key)

    def update_metadata(self, entries: Mapping[str, Any]) -> None:
        """Add or replace metadata entries (JSON-able values), stored apart from the keys."""
        rows = [(str(k), json.dumps(v)) for k, v in entries.items()]
        with self.transaction() as s:
            assert s._conn is not None
            s._conn.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", rows)

    # -- reading --

    def __getitem__(self, key: str) -> Any:
        _check_key(key)
        with self._lock:
            conn = self._connection(create=False)
            if conn is None:
                raise KeyError(key)
            return read_value(conn, self.path, self.name, key, safe=False)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            conn = self._connection(create=False)
            keys = [] if conn is None else [r[0] for r in conn.execute(_KEYS)]
        return iter(keys)

    def __len__(self) -> int:
        with self._lock:
            conn = self._connection(create=False)
            return 0 if conn is None else conn.execute(_COUNT).fetchone()[0]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            conn = self._connection(create=False)
            return conn is not None and conn.execute(_HAS, (key,)).fetchone() is not None

    @property
    def metadata(self) -> dict[str, Any]:
        """The session's metadata: who wrote it, when, where, with what."""
        with self._lock:
            conn = self._connection(create=False)
            return {} if conn is None else read_metadata(conn, self.path)


_KEYS = "SELECT key FROM items ORDER BY rowid"
_COUNT = "SELECT count(*) FROM items"
_HAS = "SELECT 1 FROM items WHERE key = ?"
_VALUE = "SELECT value, side, side_size FROM items WHERE key = ?"


def _check_key(key: Any) -> None:
    if type(key) is not str and not isinstance(key, str):
        raise TypeError(f"session keys must be str, not {type(key).__name__} ({key!r})")


def _disk_full(exc: BaseException) -> bool:
    """Whether an SQLite error reports a full disk (SQLITE_FULL)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is None:
        return "disk is full" in str(exc)  # SQLite's own message for SQLITE_FULL
    return code & 0xFF == _SQLITE_FULL


def _retry_locked(operation: Any, attempts: int = 200) -> Any:
    for attempt in range(attempts):
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01 + 0.001 * attempt)
    return None  # pragma: no cover - the loop returns or raises


def read_metadata(conn: sqlite3.Connection, path: str) -> dict[str, Any]:
    """Return the metadata table of an open session connection as a dict."""
    rows = conn.execute("SELECT name, value FROM meta")
    return {name: decode_metadata(name, value, path) for name, value in rows}


def decode_metadata(name: Any, text: Any, path: str) -> Any:
    """Parse one metadata entry (JSON text), or raise CorruptSessionError."""
    if type(name) is not str or type(text) is not str:
        found = type(text if type(name) is str else name).__name__
        raise CorruptSessionError(path, f"metadata entry {name!r:.40} holds {found}, not text")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CorruptSessionError(path, f"metadata entry {name!r} is not JSON ({exc})") from exc


def decode_created(text: Any, path: str) -> float:
    """The creation time of a session from its metadata entry 'created'."""
    if type(text) is str:
        # Every reader asks this once: a plain number (what the writer
        # stores) skips the JSON decoder.
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(seconds):
                return seconds
    created = decode_metadata("created", text, path)
    if type(created) not in (int, float):
        raise CorruptSessionError(path, f"metadata entry 'created' is {created!r:.40}, not a time")
    return float(created)


def read_value(conn: sqlite3.Connection, path: str, session: str, key: str, safe: bool) -> Any:
    """Read one value from an open session connection (writer or reader)."""
    for _attempt in range(5):
        row = conn.execute(_VALUE, (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        data, side, side_size = row
        if side is None:
            return decode(data, path, session, key, safe)
        try:
            return load_side_file(side_path(path, side, key), side_size, path, key)
        except FileNotFoundError:
            # A writer may have replaced the value and removed its old side
            # file between our two reads: read the row again.
            continue
    raise CorruptSessionError(path, f"side file {side} is missing", key)


def decode(data: bytes, path: str, session: str, key: str, safe: bool) -> Any:
    """Unpickle one stored value, turning damaged bytes into CorruptSessionError.

    Unpickling damaged bytes can raise almost any exception type (and in
    unsafe mode so can the code a pickle runs): each becomes a
    CorruptSessionError naming the key and the original error.  A
    MemoryError does only when the pickle is malformed (a damaged length or
    memo index asks for absurd sizes); from a well-formed pickle it means
    the value does not fit in the memory left, and stays a MemoryError.
    """
    try:
        return safepickle.loads(data, safe=safe, session=session, key=key)
    except UnsafeValueError:
        raise
    except MemoryError as exc:
        reason = safepickle.malformed(data) if type(data) is bytes else "not bytes"
        if reason is None:
            raise
        reason = f"cannot unpickle the value (MemoryError from a malformed pickle: {reason})"
        raise CorruptSessionError(path, reason, key) from exc
    except Exception as exc:
        reason = f"cannot unpickle the value ({type(exc).__name__}: {exc})"
        raise CorruptSessionError(path, reason, key) from exc
