"""The read side: find the sessions of a data directory and read them.

Reading never writes.  Native sessions are opened with SQLite's read-only
mode, legacy shelves (:mod:`datamanager.legacy`) through ``dbm`` with flag
``'r'``; nothing in the data directory is created, truncated, locked against
writers or modified, so collation can run while simulations are still
writing.  A session that SQLite cannot read in place without writing (a hot
journal left by a killed writer, or a WAL-mode file without its ``-wal`` and
``-shm`` files) is read from a private copy whose files SQLite recovers
(:mod:`._snapshot`).
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, TypeVar, Union

from . import _format as fmt
from ._descriptors import check_descriptors, hold
from ._format import BLOB_SUFFIX, COMPANIONS, SESSION_SUFFIX
from ._snapshot import CopyChanged, PrivateCopy, needs_copy, refused_recovery
from .errors import CorruptSessionError
from .session import BUSY_TIMEOUT

__all__ = [
    "NativeReader",
    "SessionEntry",
    "SessionReader",
    "check_match",
    "key_test",
    "list_directory",
    "match_keys",
    "report",
    "session_nbytes",
    "side_bytes",
]

Match = Union[str, Callable[[str], bool]]
OnError = Callable[[CorruptSessionError], None]
T = TypeVar("T")

_GONE = object()
# Tries at a private copy of a session whose files a writer keeps changing.
_COPY_ATTEMPTS = 20


def check_match(match: Any) -> Match:
    """Return *match* if it is a key prefix (str) or a callable, else raise TypeError."""
    if not (isinstance(match, str) or callable(match)):
        raise TypeError(f"match must be a str prefix or a callable, not {type(match).__name__}")
    return match


def key_test(match: Match) -> Callable[[str], bool]:
    """The test of a key that *match* (a key prefix, or a callable) stands for."""
    if callable(check_match(match)):
        return match  # type: ignore[return-value]
    return lambda key: key.startswith(match)  # type: ignore[union-attr]


def match_keys(keys: Iterable[str], match: Match) -> list[str]:
    """The keys of *keys* that match *match* (a key prefix, or a callable), in order."""
    test = key_test(match)
    return [key for key in keys if test(key)]


class SessionReader:
    """Read-only view of one session found in a data directory.

    What every reader offers, native session or legacy shelf alike.  A
    subclass reads one storage format: it sets :attr:`created` and implements
    :meth:`keys`, :meth:`_value`, :meth:`raw_values`, :attr:`metadata`,
    :attr:`nbytes` and :meth:`close`; the rest may be made faster.
    """

    #: When the session was created, in seconds since the epoch.
    created: float

    def __init__(self, entry: SessionEntry, safe: bool = False) -> None:
        self.name, self.path, self.safe = entry.name, entry.path, safe

    # -- what a storage format implements --

    @property
    def metadata(self) -> dict[str, Any]:
        """The session's metadata (creation time, user, host, ...)."""
        raise NotImplementedError

    def keys(self) -> list[str]:
        """The session's keys, in the order they were first written."""
        raise NotImplementedError

    def _value(self, key: str) -> Any:
        """The value of *key*; KeyError if it has none."""
        raise NotImplementedError

    def raw_values(self) -> Iterator[tuple[str, bytes]]:
        """Yield ``(key, pickled bytes)`` for the values stored as pickles."""
        raise NotImplementedError

    def raw_task_records(self) -> list[tuple[str, Any]]:
        """``(key, pickled bytes)`` of the records kept apart from the keys.

        They are what :func:`~datamanager.tasks.run_tasks` stores beside its
        results (see :meth:`~datamanager.session.Session.update_records`);
        formats without them (legacy shelves) have none.
        """
        return []

    @property
    def nbytes(self) -> int:
        """Bytes on disk: every file of the session."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the session's files."""
        raise NotImplementedError

    # -- shared --

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str) -> Any:
        return self._value(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def items(
        self, keys: list[str] | None = None, on_error: OnError | None = None
    ) -> Iterator[tuple[str, Any]]:
        """Yield ``(key, value)`` pairs one at a time (all keys, or *keys*).

        A value that cannot be decoded raises :class:`CorruptSessionError`;
        given *on_error*, the error is passed to it instead and the value
        left out, so that one damaged value does not hide the others.
        """
        if keys is None:
            yield from self._all_items(on_error)
            return
        for key in keys:
            try:
                value = self[key]
            except KeyError:  # deleted by a writer meanwhile
                continue
            except CorruptSessionError as exc:
                report(exc, on_error)
                continue
            yield key, value

    def _all_items(self, on_error: OnError | None) -> Iterator[tuple[str, Any]]:
        return self.items(self.keys(), on_error)

    def task_records(self, keep: Callable[[str], bool] | None = None) -> list[tuple[str, Any]]:
        """``(key, record)`` of the records kept apart from the keys, in the order written.

        Only the records whose key passes *keep* (all when None) are unpickled.
        """
        return [
            (key, fmt.decode(data, self.path, self.name, key, self.safe))
            for key, data in self.raw_task_records()
            if keep is None or keep(key)
        ]

    def matching(self, match: Match) -> list[str]:
        """The keys that match *match* (a prefix, or a callable taking the key)."""
        return match_keys(self.keys(), match)

    def side_files(self) -> list[tuple[str, str, int]]:
        """``(key, side file path, expected size)`` for values kept beside the store."""
        return []

    def integrity(self) -> list[str]:
        """What the storage engine's own check of the file finds wrong."""
        return []

    def listed_sides(self) -> list[tuple[str | None, Any]]:
        """Every side-file name the session lists: ``(key, name)``, key None for garbage."""
        return []

    def __enter__(self) -> SessionReader:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class NativeReader(SessionReader):
    """Read-only view of one native session.

    Opened with SQLite's ``mode=ro``: it never creates, changes or locks the
    session against its writer, and sees each value whole or not at all.
    Where a killed writer left what only a writer may recover, it reads the
    last committed state from a private copy, removed by :meth:`close`.
    """

    def __init__(self, entry: SessionEntry, safe: bool = False) -> None:
        super().__init__(entry, safe)
        self._conn: sqlite3.Connection | None = None
        self._copy: PrivateCopy | None = None
        try:
            row = self._open()
        except sqlite3.DatabaseError as exc:
            row = self._open_unready(exc)
        # A session killed before its first commit is an empty file: no keys.
        try:
            self.created = (
                fmt.decode_created(row[0], self.path) if row else os.path.getmtime(self.path)
            )
        except CorruptSessionError:
            self.close()  # the caller never gets this reader to close
            raise

    def _open(self) -> Any:
        """Connect and return the row of the creation time.

        In place, with SQLite's read-only mode, where SQLite can read the file
        without writing; else from a private copy (see :mod:`._snapshot`).
        """
        for _attempt in range(_COPY_ATTEMPTS):
            self.close()
            if not needs_copy(self.path):
                self._conn = sqlite3.connect(
                    sqlite_uri(self.path, "mode=ro"),
                    uri=True,
                    timeout=BUSY_TIMEOUT,
                    isolation_level=None,
                    check_same_thread=False,
                )
                hold(self.path)
                try:
                    return self._conn.execute(fmt.CREATED).fetchone()
                except sqlite3.OperationalError as exc:
                    if not refused_recovery(exc):
                        raise
                self.close()
            try:
                copy = PrivateCopy(self.path)
            except CopyChanged:
                continue  # a writer was at work: reading in place may work now
            self._copy, self._conn = copy, copy.connect()
            return self._conn.execute(fmt.CREATED).fetchone()
        raise CorruptSessionError(
            self.path, f"its files changed while being copied, {_COPY_ATTEMPTS} times in a row"
        )

    def _read(self, read: Callable[[sqlite3.Connection], T], key: str | None = None) -> T:
        """Run *read* on the connection; a writer killed since we opened is recovered."""
        assert self._conn is not None
        try:
            try:
                return read(self._conn)
            except sqlite3.OperationalError as exc:
                if self._copy is not None or not refused_recovery(exc):
                    raise
            self._open()
            return read(self._conn)
        except sqlite3.DatabaseError as exc:
            raise CorruptSessionError(self.path, str(exc), key) from exc

    def _open_unready(self, exc: sqlite3.DatabaseError) -> Any:
        """Handle a file without our tables: a session being created, or not ours."""
        conn = self._conn
        if conn is not None and "no such table" in str(exc):
            try:
                # One read transaction, so that both answers describe the same
                # moment: a writer may commit the schema between two queries.
                conn.execute("BEGIN")
                try:
                    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                        self.close()  # created but never committed: empty
                        return None
                    return conn.execute(fmt.CREATED).fetchone()  # committed meanwhile
                finally:
                    if self._conn is not None:
                        conn.execute("COMMIT")
            except sqlite3.DatabaseError:
                pass
        self.close()
        check_descriptors(self.path)
        raise CorruptSessionError(self.path, f"not a readable session ({exc})") from exc

    @property
    def empty(self) -> bool:
        """Whether the session's file is empty: its writer was killed before its first commit."""
        return self._conn is None

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self._conn is None:
            return []
        return self._read(lambda conn: conn.execute(sql, params).fetchall())

    @property
    def metadata(self) -> dict[str, Any]:
        if self._conn is None:
            return {"created": self.created}
        return self._read(lambda conn: fmt.read_metadata(conn, self.path))

    def keys(self) -> list[str]:
        return [r[0] for r in self._query(fmt.KEYS)]

    def __len__(self) -> int:
        rows = self._query(fmt.COUNT)
        return rows[0][0] if rows else 0

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self._query(fmt.HAS, (key,)))

    def _value(self, key: str) -> Any:
        if self._conn is None:
            raise KeyError(key)
        return self._read(
            lambda conn: fmt.read_value(conn, self.path, self.name, key, self.safe), key
        )

    def _all_items(self, on_error: OnError | None, batch: int = 64) -> Iterator[tuple[str, Any]]:
        # All keys are read in batches of rows, one query each, so memory
        # stays near one batch and no read transaction stays open while the
        # caller works on a value (a long one would keep the writer's WAL
        # growing).
        last = 0
        while True:
            rows = self._query(fmt.BATCH, (last, batch))
            for _, key, *row in rows:
                try:
                    try:
                        value = fmt.row_value(self.path, self.name, key, row, self.safe)
                    except FileNotFoundError:  # replaced meanwhile: read it again
                        value = self.get(key, _GONE)
                except CorruptSessionError as exc:
                    report(exc, on_error)
                    continue
                if value is not _GONE:
                    yield key, value
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def matching(self, match: Match) -> list[str]:
        if callable(check_match(match)):
            return super().matching(match)
        return [r[0] for r in self._query(fmt.PREFIXED, (len(match), match))]

    @property
    def nbytes(self) -> int:
        return session_nbytes(self.path)

    def side_files(self) -> list[tuple[str, str, int]]:
        """``(key, side file path, expected size)`` for values kept beside the database.

        Keys whose side-file name is not one of this session's (see
        :func:`~datamanager._format.is_side_name`) are left out: reading them
        raises :class:`~datamanager.errors.CorruptSessionError`.
        """
        rows = self._query(fmt.SIDES)
        return [(k, fmt.side_path(self.path, s, k), n) for k, s, n in rows if fmt.is_side_name(s)]

    def raw_values(self) -> Iterator[tuple[str, bytes]]:
        """Yield ``(key, pickled bytes)`` of the values stored as pickles, side files too.

        A side file that is gone (its key replaced meanwhile) or of the wrong
        size is left out: reading its key reports it.
        """
        yield from self._query(fmt.INLINE)
        for key, path, size in self.side_files():
            if path.endswith(fmt.PICKLE_SUFFIX):
                try:
                    yield key, fmt.side_pickle(path, size, self.path, key)
                except (OSError, CorruptSessionError):
                    continue

    def raw_rows(self) -> list[tuple[str, Any, Any, Any]]:
        """Every ``(key, value, side, side_size)`` row as stored, in key order, in one read."""
        return self._query(fmt.ROWS)

    def raw_metadata(self) -> list[tuple[Any, Any]]:
        """The ``(name, JSON text)`` rows of the metadata table as stored."""
        return self._query(fmt.METADATA)

    def raw_task_records(self) -> list[tuple[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, Any]]:
            # A session written before the table existed, and never opened by
            # a writer since (or on read-only media), has none.
            if conn.execute(fmt.HAS_RECORDS).fetchone() is None:
                return []
            return conn.execute(fmt.RECORDS).fetchall()

        return [] if self._conn is None else self._read(read)

    def integrity(self) -> list[str]:
        if self._conn is None:
            return []
        status = [r[0] for r in self._query("PRAGMA quick_check")]
        return [] if status == ["ok"] else status

    def listed_sides(self) -> list[tuple[str | None, Any]]:
        listed = [(key, side) for key, side, _ in self._query(fmt.SIDES)]
        return listed + [(None, side) for _, side in self._query(fmt.GARBAGE)]

    def close(self) -> None:
        conn, self._conn = self._conn, None
        copy, self._copy = self._copy, None
        if conn is not None:
            conn.close()
            if copy is None:
                hold(self.path, -1)
        if copy is not None:
            copy.remove()


class SessionEntry(NamedTuple):
    """One session found in a data directory (not yet opened)."""

    name: str
    path: str
    #: The reader class of its storage format.
    reader: type[SessionReader] = NativeReader
    #: For a legacy shelf beside a native session of the same name (its
    #: twin) that does not replace it: why not.  Collation reads the shelf.
    twin_problem: str | None = None

    @property
    def legacy(self) -> bool:
        """Whether the session is a legacy shelf, not a native session."""
        return self.reader is not NativeReader

    def open(self, safe: bool = False) -> SessionReader:
        """Open the session read-only."""
        return self.reader(self, safe)


@dataclass
class Listing:
    """What :func:`list_directory` found in a data directory."""

    #: The native sessions, sorted by name.
    native: list[SessionEntry]
    #: Files that belong to no session.
    stray: list[str]
    #: Every other name, with whether it is a folder: legacy shelves, or strays.
    other: dict[str, bool]
    #: Every name the listing saw.
    names: frozenset[str] = frozenset()


def list_directory(basepath: str) -> Listing:
    """List the native sessions of *basepath* and sort the other names out."""
    try:
        with os.scandir(basepath) as it:
            names = {e.name: e.is_dir() for e in it}
    except FileNotFoundError:
        return Listing([], [], {})
    prefix = os.path.join(basepath, "")
    native = {
        n[: -len(SESSION_SUFFIX)]
        for n, d in names.items()
        if n.endswith(SESSION_SUFFIX) and not d and not n.startswith(".")
    }
    listing = Listing(
        [SessionEntry(n, f"{prefix}{n}{SESSION_SUFFIX}") for n in sorted(native)],
        [],
        {},
        frozenset(names),
    )
    for name, is_dir in names.items():
        if (fmt.is_index_name(name) and not is_dir) or (fmt.is_store_name(name) and is_dir):
            continue  # the directory's index or file store: not a session, not a stray
        if name.startswith(".") or (is_dir and not name.endswith(BLOB_SUFFIX)):
            listing.stray.append(name)
        elif name.endswith(SESSION_SUFFIX) and not is_dir:
            continue
        elif name.endswith(COMPANIONS):
            stem = name[: name.rindex(SESSION_SUFFIX if not is_dir else BLOB_SUFFIX)]
            if stem not in native and _orphaned(basepath, name, stem + SESSION_SUFFIX):
                listing.stray.append(name)
        else:
            listing.other[name] = is_dir
    return listing


def session_nbytes(path: str) -> int:
    """Bytes on disk of the native session at *path*: database, journals, side files."""
    total = 0
    for suffix in fmt.SQLITE_DATA:
        try:
            total += os.path.getsize(path + suffix)
        except OSError:
            pass
    return total + side_bytes(path)


def side_bytes(path: str) -> int:
    """Bytes of the side files of the native session at *path* (0 if it has none)."""
    try:
        with os.scandir(fmt.blob_dir(path)) as it:
            return sum(e.stat().st_size for e in it)
    except OSError:
        return 0


def sqlite_uri(path: str, query: str) -> str:
    """The SQLite URI of *path*, a file name in any encoding the filesystem allows."""
    # Percent-encoding the bytes (not the str) keeps an undecodable name,
    # e.g. one copied from a Latin-1 machine, pointing at the same file.
    return f"file:{urllib.parse.quote(os.fsencode(path))}?{query}"


def _orphaned(basepath: str, name: str, owner: str) -> bool:
    """Whether file *name* of *basepath* still exists and its *owner* still does not.

    A directory listing is not a snapshot: a session created during it can
    show its ``-wal`` file or blob folder but not its ``.sqlite`` file, and a
    session removed during it the reverse.  Asked after the listing, these
    two questions name only real strays.
    """
    return os.path.lexists(os.path.join(basepath, name)) and not os.path.lexists(
        os.path.join(basepath, owner)
    )


def report(exc: CorruptSessionError, on_error: OnError | None) -> None:
    """Raise *exc*, or pass it to *on_error* if given (see :meth:`SessionReader.items`)."""
    if on_error is None:
        raise exc
    on_error(exc)
