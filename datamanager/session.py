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
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from . import _format as fmt
from ._descriptors import hold
from ._format import (
    SESSION_SUFFIX,
    UPSERT,
    SideValue,
    blob_dir,
    is_side_name,
    stored_form,
)
from .errors import CorruptSessionError, TransactionAbortedError
from .filesystem import check_journal_mode, choose_journal_mode
from .provenance import session_metadata

__all__ = ["Session"]

#: SQLite page size of new sessions; see _open.
PAGE_SIZE = 2048
#: How long a writer waits for another process holding the same session.
BUSY_TIMEOUT = 60.0
#: SQLite's result code for a full disk (or an exceeded quota).
_SQLITE_FULL = 13
_NO_SPACE = os.strerror(errno.ENOSPC)
#: How long close() waits for a reader of an older state before copying the WAL into the file.
CHECKPOINT_TIMEOUT = 10.0

# Connections opened before a fork belong to the parent: the child must never
# use or close them (closing could disturb the parent's locks), so they are
# parked here for the child's lifetime.
_ABANDONED: list[sqlite3.Connection] = []


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

    Like a closed shelf, a closed session refuses every read and write with
    ``ValueError``; :meth:`close` itself may be called again.  A copy
    unpickled in another process is a new, open session of the same file.

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
        check_journal_mode(journal_mode)
        self._requested_journal = journal_mode
        self._closed = False
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

    def _guard(self) -> AbstractContextManager[Any]:
        """What every read and write of the session holds while it runs.

        The one hook for a subclass that must hold more (a cross-process
        lock): every operation, transactions included, enters it.  Here, the
        lock that serialises the threads of this process.
        """
        return self._lock

    # -- connection management --

    def _connection(self, create: bool) -> sqlite3.Connection | None:
        self._check_open()
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
            for statement in fmt.SCHEMA:
                conn.execute(statement)
            # Only a new session records who writes it: a process opening an
            # existing one would describe itself, and would store its diff and
            # history for no session to refer to.
            if conn.execute(fmt.CREATED).fetchone() is None:
                metadata = session_metadata(directory)
                conn.executemany(fmt.ADD_METADATA, fmt.metadata_rows(metadata))
            conn.execute("COMMIT")
            self._collect_garbage(conn)  # left behind by a process killed mid-way
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _disk_full(exc):  # not damage: say so, as any other write would
                why = f"{_NO_SPACE}: cannot create or open the session"
                raise OSError(errno.ENOSPC, why, self.path) from exc
            raise CorruptSessionError(self.path, str(exc)) from exc
        return conn

    def _check_open(self) -> None:
        # Reopening silently would let a script write into a session it
        # believes finished, as no shelf allows.
        if self._closed:
            raise ValueError(f"session {self.name!r} is closed")

    def sync(self) -> None:
        """Do nothing: every write is already durable when it returns.

        Kept for scripts written for shelves, which need it.

        Raises
        ------
        ValueError
            If the session is closed.
        """
        self._check_open()

    def close(self) -> None:
        """Close the session; any later read or write raises ValueError."""
        with self._lock:
            self._closed = True
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
        with self._guard():
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
        if conn.execute(fmt.HAS_GARBAGE).fetchone() is None:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                listed = conn.execute(fmt.GARBAGE).fetchall()
                rows = [(rowid, side) for rowid, side in listed if is_side_name(side)]
                # Files go before their rows: a crash in between leaves names of
                # missing files (skipped next time), never an unlisted orphan.
                self._unlink_sides([side for _, side in rows])
                conn.executemany(fmt.DELETE_GARBAGE, [(r,) for r, _ in rows])
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
        with self._guard():
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
        row, side = stored_form(key, value)
        if side is None:
            self._write(UPSERT, row)
        else:
            self._put_side(key, side)

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
                row, side = stored_form(key, value)
                if side is None:
                    rows.append(row)
                else:
                    conn.executemany(UPSERT, rows)  # keep the order of the keys
                    rows = []
                    self._put_side(key, side)
            conn.executemany(UPSERT, rows)

    def _put_side(self, key: str, side: SideValue) -> None:
        """Store *side* in a new side file, then the row of *key* that names it."""
        name, size = self._write_side(key, side)
        self._write(UPSERT, (key, None, name, size), new_side=name)

    def _write_side(self, key: str, side: SideValue) -> tuple[str, int]:
        with self._guard():
            # The session file, with its tables, exists before any side file:
            # a writer killed in between leaves an empty session, never a
            # blob folder that belongs to no session.
            conn = self._writable()
        directory = blob_dir(self.path)
        name = fmt.new_side_name(side.suffix)
        try:
            os.makedirs(directory, exist_ok=True)
            size = fmt.save_side(os.path.join(directory, name), side)
        except BaseException as exc:
            self._unlink_sides([name])
            if not isinstance(exc, OSError):
                raise
            code = exc.errno
            if code is None:
                # numpy reports a short write without an errno; say what it means.
                full = shutil.disk_usage(directory).free < side.nbytes
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
        self._check_open()
        if self._conn is None and not os.path.exists(self.path):
            raise KeyError(key)  # never written: do not create it just to say so
        if not self._write(fmt.DELETE, (key,)):
            raise KeyError(key)

    def update_metadata(self, entries: Mapping[str, Any]) -> None:
        """Add or replace metadata entries (JSON-able values), stored apart from the keys."""
        rows = fmt.metadata_rows(dict(entries))
        with self.transaction() as s:
            assert s._conn is not None
            s._conn.executemany(fmt.SET_METADATA, rows)

    def update_records(self, records: Mapping[str, Any]) -> None:
        """Store records apart from the keys, in one transaction (or the enclosing one).

        They are what :func:`~datamanager.tasks.run_tasks` keeps beside its
        results (items, failure records): collation does not see them; a
        reader lists them with
        :meth:`~datamanager.readers.SessionReader.task_records`.

        Examples
        --------
        >>> import os, tempfile
        >>> s = Session(os.path.join(tempfile.mkdtemp(), "demo.sqlite"))
        >>> s["sweep/k"] = 4
        >>> s.update_records({"sweep.items/k": 2})
        >>> dict(s)
        {'sweep/k': 4}
        """
        for key in records:
            _check_key(key)
        rows = [fmt.record_row(k, v) for k, v in records.items()]
        with self.transaction() as s:
            assert s._conn is not None
            s._conn.executemany(fmt.RECORD_UPSERT, rows)

    # -- reading --

    def __getitem__(self, key: str) -> Any:
        _check_key(key)
        with self._guard():
            conn = self._connection(create=False)
            if conn is None:
                raise KeyError(key)
            return fmt.read_value(conn, self.path, self.name, key, safe=False)

    def __iter__(self) -> Iterator[str]:
        with self._guard():
            conn = self._connection(create=False)
            keys = [] if conn is None else [r[0] for r in conn.execute(fmt.KEYS)]
        return iter(keys)

    def __len__(self) -> int:
        with self._guard():
            conn = self._connection(create=False)
            return 0 if conn is None else conn.execute(fmt.COUNT).fetchone()[0]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._guard():
            conn = self._connection(create=False)
            return conn is not None and conn.execute(fmt.HAS, (key,)).fetchone() is not None

    @property
    def metadata(self) -> dict[str, Any]:
        """The session's metadata: who wrote it, when, where, with what."""
        with self._guard():
            conn = self._connection(create=False)
            return {} if conn is None else fmt.read_metadata(conn, self.path)


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
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
