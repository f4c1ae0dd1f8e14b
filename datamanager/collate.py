"""The read side: find the sessions of a data directory and read them.

Reading never writes.  Native sessions are opened with SQLite's read-only
mode, legacy shelves through ``dbm`` with flag ``'r'``; nothing in the data
directory is created, truncated, locked against writers or modified, so
collation can run while simulations are still writing.  A session
that SQLite cannot read in place without writing (a hot journal left by a
killed writer, or a WAL-mode file without its ``-wal`` and ``-shm`` files) is
read from a private copy whose files SQLite recovers (:mod:`._snapshot`).
"""

from __future__ import annotations

import dbm
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, Union

import numpy as np

from ._descriptors import check_descriptors
from ._snapshot import CopyChanged, PrivateCopy, needs_copy, refused_recovery
from .errors import CorruptSessionError, warn_caller
from .session import (
    _KEYS,
    BLOB_SUFFIX,
    BUSY_TIMEOUT,
    SESSION_SUFFIX,
    blob_dir,
    decode,
    decode_created,
    hold,
    is_side_name,
    load_side_file,
    read_metadata,
    read_value,
    side_path,
)

__all__ = ["SessionEntry", "SessionReader", "find_sessions", "merge_values", "twin_state"]

Match = Union[str, Callable[[str], bool]]
OnError = Callable[[CorruptSessionError], None]
T = TypeVar("T")

_COMPANIONS = (
    SESSION_SUFFIX + "-wal",
    SESSION_SUFFIX + "-shm",
    SESSION_SUFFIX + "-journal",
    SESSION_SUFFIX + ".lock",
    BLOB_SUFFIX,
)
# Suffixes of the files stdlib dbm modules make for one shelf.
_DBM_SUFFIXES = (".dat", ".dir", ".bak", ".pag", ".db")
# Files SQLite keeps beside a database in use (dbm.sqlite3 shelves).
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
_SQLITE_HEADER = b"SQLite format 3\x00"
_BATCH = (
    "SELECT rowid, key, value, side, side_size FROM items WHERE rowid > ? ORDER BY rowid LIMIT ?"
)
_GONE = object()
# Tries at a private copy of a session whose files a writer keeps changing.
_COPY_ATTEMPTS = 20
_CREATED = "SELECT value FROM meta WHERE name = 'created'"
#: Metadata entry of a session migrated from a legacy shelf, written once every
#: value was read back and compared; only then does the session hide its shelf.
MIGRATION_VERIFIED = "migration_verified"
_PREFIXED = "SELECT key FROM items WHERE substr(key, 1, ?) = ? ORDER BY rowid"


@dataclass(frozen=True)
class SessionEntry:
    """One session found in a data directory (not yet opened)."""

    name: str
    path: str
    legacy: bool = False
    #: For a legacy shelf beside a native session of the same name (its
    #: twin) that does not replace it: why not.  Collation reads the shelf.
    twin_problem: str | None = None

    def open(self, safe: bool = False) -> SessionReader:
        """Open the session read-only."""
        return (ShelfReader if self.legacy else SessionReader)(self, safe)


def find_sessions(basepath: str, warn: bool = True) -> list[SessionEntry]:
    """List the sessions stored in *basepath*, in directory order.

    Files that belong to no session are skipped with one
    :class:`~datamanager.errors.DataManagerWarning` each.  A legacy shelf whose
    name also has a native session is left out only if that twin records a
    verified migration (see :func:`twin_state`); otherwise the shelf is read,
    with one warning, and the twin too unless an interrupted ``migrate()``
    left it (it then holds nothing the shelf does not).
    """
    try:
        with os.scandir(basepath) as it:
            names = {e.name: e.is_dir() for e in it}
    except FileNotFoundError:
        return []
    native = {
        n[: -len(SESSION_SUFFIX)]
        for n, d in names.items()
        if n.endswith(SESSION_SUFFIX) and not d and not n.startswith(".")
    }
    entries = [SessionEntry(n, os.path.join(basepath, n + SESSION_SUFFIX)) for n in sorted(native)]
    stray: list[str] = []
    legacy: dict[str, list[str]] = {}
    for name, is_dir in names.items():
        if name.startswith(".") or (is_dir and not name.endswith(BLOB_SUFFIX)):
            stray.append(name)
        elif name.endswith(SESSION_SUFFIX) and not is_dir:
            continue
        elif name.endswith(_COMPANIONS):
            stem = name[: name.rindex(SESSION_SUFFIX if not is_dir else BLOB_SUFFIX)]
            if stem not in native and _orphaned(basepath, name, stem + SESSION_SUFFIX):
                stray.append(name)
        else:
            stem, ext = os.path.splitext(name)
            # The -wal or -shm file of a dbm.sqlite3 shelf belongs to that shelf.
            owners = [name[: -len(s)] for s in _SQLITE_COMPANIONS if name.endswith(s)]
            owner = next((o for o in owners if o in names), None)
            legacy.setdefault(owner or (stem if ext in _DBM_SUFFIXES else name), []).append(name)
    incomplete: set[str] = set()
    for stem, files in sorted(legacy.items()):
        path = os.path.join(basepath, stem)
        state, problem = _twin_state(path) if stem in native else ("", None)
        if state == "verified":
            continue  # migrated: the native session replaces it
        try:
            kind = dbm.whichdb(path) or _is_sqlite(path)
        except OSError:
            kind = None
        if kind:
            entries.append(SessionEntry(stem, path, legacy=True, twin_problem=problem))
            if state == "incomplete":
                incomplete.add(stem)
        elif stem not in native:
            stray.extend(files)
    entries = [e for e in entries if e.legacy or e.name not in incomplete]
    if warn:
        for name in sorted(stray):
            warn_caller(f"ignoring {os.path.join(basepath, name)}: not a datamanager session")
        for entry in entries:
            if entry.twin_problem:
                warn_caller(f"{entry.path}{SESSION_SUFFIX}: {entry.twin_problem}")
    return entries


def twin_state(
    metadata: Mapping[str, Any], keys: list[str], shelf_keys: Callable[[], list[str]]
) -> str:
    """Classify the native session that shares its name with a legacy shelf.

    Takes the session's *metadata* and *keys*, and a callable returning the
    shelf's keys (read only when needed).  Returns ``'verified'`` for a
    migration whose every value was read back and compared: it replaces the
    shelf.  ``'incomplete'`` for what an interrupted ``migrate()`` leaves, no
    keys yet or an unverified copy of the shelf's keys: the shelf is read
    instead.  ``'other'`` for a session holding data of its own (Brian named
    computer sessions as :meth:`DataManager.computer_session` does): both are
    read.
    """
    if MIGRATION_VERIFIED in metadata:
        return "verified"
    if not keys or ("migrated_from" in metadata and set(keys) <= set(shelf_keys())):
        return "incomplete"
    return "other"


_TWIN_PROBLEMS = {
    "incomplete": "incomplete migration of legacy shelf {shelf} (migrate() was interrupted, "
    "or is still running): collation reads the shelf meanwhile; run migrate() again",
    "other": "shares its name with legacy shelf {shelf} but holds data of its own: both "
    "are read, under one name; rename the shelf's files to tell them apart",
}


def _twin_state(shelf: str) -> tuple[str, str | None]:
    """The :func:`twin_state` of the native session named like *shelf*, and its problem."""
    twin, name = shelf + SESSION_SUFFIX, os.path.basename(shelf)
    try:
        with SessionEntry(name, twin).open(safe=True) as reader:
            state = twin_state(reader.metadata, reader.keys(), lambda: _shelf_keys(name, shelf))
    except (OSError, ValueError) as exc:  # CorruptSessionError, or a damaged metadata cell
        return "unreadable", (
            f"cannot be read ({getattr(exc, 'reason', exc)}), so it shows no verified "
            f"migration of legacy shelf {shelf}: collation reads the shelf; run migrate() again"
        )
    return state, (None if state == "verified" else _TWIN_PROBLEMS[state].format(shelf=shelf))


def _shelf_keys(name: str, path: str) -> list[str]:
    try:
        with SessionEntry(name, path, legacy=True).open(safe=True) as shelf:
            return shelf.keys()
    except CorruptSessionError:
        return []  # reported where the shelf itself is read


class SessionReader:
    """Read-only view of one native session.

    Opened with SQLite's ``mode=ro``: it never creates, changes or locks the
    session against its writer, and sees each value whole or not at all.
    Where a killed writer left what only a writer may recover, it reads the
    last committed state from a private copy, removed by :meth:`close`.
    """

    def __init__(self, entry: SessionEntry, safe: bool = False) -> None:
        self.name, self.path, self.safe = entry.name, entry.path, safe
        self._conn: sqlite3.Connection | None = None
        self._copy: PrivateCopy | None = None
        try:
            row = self._open()
        except sqlite3.DatabaseError as exc:
            row = self._open_unready(exc)
        # A session killed before its first commit is an empty file: no keys.
        try:
            self.created = (
                decode_created(row[0], self.path) if row else os.path.getmtime(self.path)
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
                    _uri(self.path, "mode=ro"),
                    uri=True,
                    timeout=BUSY_TIMEOUT,
                    isolation_level=None,
                    check_same_thread=False,
                )
                hold(self.path)
                try:
                    return self._conn.execute(_CREATED).fetchone()
                except sqlite3.OperationalError as exc:
                    if not refused_recovery(exc):
                        raise
                self.close()
            try:
                copy = PrivateCopy(self.path)
            except CopyChanged:
                continue  # a writer was at work: reading in place may work now
            self._copy, self._conn = copy, copy.connect()
            return self._conn.execute(_CREATED).fetchone()
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
                    return conn.execute(_CREATED).fetchone()  # committed meanwhile
                finally:
                    if self._conn is not None:
                        conn.execute("COMMIT")
            except sqlite3.DatabaseError:
                pass
        self.close()
        check_descriptors(self.path)
        raise CorruptSessionError(self.path, f"not a readable session ({exc})") from exc

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self._conn is None:
            return []
        return self._read(lambda conn: conn.execute(sql, params).fetchall())

    @property
    def metadata(self) -> dict[str, Any]:
        """The session's metadata (creation time, user, host, ...)."""
        if self._conn is None:
            return {"created": self.created}
        return self._read(lambda conn: read_metadata(conn, self.path))

    def keys(self) -> list[str]:
        """The session's keys, in the order they were first written."""
        return [r[0] for r in self._query(_KEYS)]

    def __len__(self) -> int:
        rows = self._query("SELECT count(*) FROM items")
        return rows[0][0] if rows else 0

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(
            self._query("SELECT 1 FROM items WHERE key = ?", (key,))
        )

    def __getitem__(self, key: str) -> Any:
        if self._conn is None:
            raise KeyError(key)
        return self._read(lambda conn: read_value(conn, self.path, self.name, key, self.safe), key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def items(
        self, keys: list[str] | None = None, on_error: OnError | None = None
    ) -> Iterator[tuple[str, Any]]:
        """Yield ``(key, value)`` pairs one at a time (all keys, or *keys*).

        All keys are read in batches of rows, one query each, so memory stays
        near one batch and no read transaction stays open while the caller
        works on a value (a long one would keep the writer's WAL growing).
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
                _report(exc, on_error)
                continue
            yield key, value

    def _all_items(self, on_error: OnError | None, batch: int = 64) -> Iterator[tuple[str, Any]]:
        last = 0
        while True:
            rows = self._query(_BATCH, (last, batch))
            for _, key, data, side, side_size in rows:
                try:
                    value = self._row_value(key, data, side, side_size)
                except CorruptSessionError as exc:
                    _report(exc, on_error)
                    continue
                if value is not _GONE:
                    yield key, value
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def _row_value(self, key: str, data: Any, side: Any, side_size: Any) -> Any:
        if side is None:
            return decode(data, self.path, self.name, key, self.safe)
        try:
            path = side_path(self.path, side, key)
            return load_side_file(path, side_size, self.path, key)
        except FileNotFoundError:  # replaced meanwhile: read it again
            return self.get(key, _GONE)

    def matching(self, match: Match) -> list[str]:
        """The keys that match *match* (a prefix, or a callable taking the key)."""
        if callable(check_match(match)):
            return [k for k in self.keys() if match(k)]
        rows = self._query(_PREFIXED, (len(match), match))
        return [r[0] for r in rows]

    @property
    def nbytes(self) -> int:
        """Bytes on disk: the database, its journal and its side files."""
        total = 0
        for path in (self.path, self.path + "-wal", self.path + "-journal"):
            try:
                total += os.path.getsize(path)
            except OSError:
                pass
        try:
            with os.scandir(blob_dir(self.path)) as it:
                total += sum(e.stat().st_size for e in it)
        except OSError:
            pass
        return total

    def side_files(self) -> list[tuple[str, str, int]]:
        """``(key, side file path, expected size)`` for values kept beside the database.

        Keys whose side-file name is not one of this session's (see
        :func:`~datamanager.session.is_side_name`) are left out: reading them
        raises :class:`~datamanager.errors.CorruptSessionError`.
        """
        rows = self._query("SELECT key, side, side_size FROM items WHERE side IS NOT NULL")
        return [(k, side_path(self.path, s, k), n) for k, s, n in rows if is_side_name(s)]

    def raw_values(self) -> Iterator[tuple[str, bytes]]:
        """Yield ``(key, pickled bytes)`` for the values stored inline."""
        yield from self._query("SELECT key, value FROM items WHERE side IS NULL")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        copy, self._copy = self._copy, None
        if conn is not None:
            conn.close()
            if copy is None:
                hold(self.path, -1)
        if copy is not None:
            copy.remove()

    def __enter__(self) -> SessionReader:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def check_match(match: Any) -> Match:
    """Return *match* if it is a key prefix (str) or a callable, else raise TypeError."""
    if not (isinstance(match, str) or callable(match)):
        raise TypeError(f"match must be a str prefix or a callable, not {type(match).__name__}")
    return match


def _uri(path: str, query: str) -> str:
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


def _report(exc: CorruptSessionError, on_error: OnError | None) -> None:
    if on_error is None:
        raise exc
    on_error(exc)


def _is_sqlite(path: str) -> bool:
    """Whether *path* is an SQLite file: a ``dbm.sqlite3`` shelf (Python >= 3.13)."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == _SQLITE_HEADER
    except (IsADirectoryError, FileNotFoundError):
        return False


class _SqliteShelf:
    """The ``dbm.sqlite3`` files of a shelf, read without writing a byte.

    Python 3.13 shelves are SQLite files left in WAL mode, and a read-only
    reader of a WAL file creates ``-wal`` and ``-shm`` files beside it (on a
    read-only filesystem it fails). A shelf whose writer closed it has no
    ``-wal`` file: it is opened ``immutable``, which needs neither. Readable
    on any Python, also one older than the dbm.sqlite3 module itself.
    """

    def __init__(self, path: str) -> None:
        mode = "ro" if os.path.exists(path + "-wal") else "ro&immutable=1"
        uri = _uri(path, f"mode={mode}")
        self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            self._keys = [bytes(r[0]) for r in self._conn.execute("SELECT key FROM Dict")]
        except sqlite3.DatabaseError:
            self._conn.close()
            raise

    def keys(self) -> list[bytes]:
        return self._keys

    def __getitem__(self, key: bytes) -> bytes:
        row = self._conn.execute(
            "SELECT value FROM Dict WHERE key = CAST(? AS BLOB)", (key,)
        ).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def close(self) -> None:
        self._conn.close()


class ShelfReader(SessionReader):
    """Read-only view of a legacy shelf written through stdlib ``shelve``.

    Brian's DataManager stored sessions with ``shelve``; on a Python without
    gdbm that is a ``dbm.dumb`` triplet ``<name>.dat/.dir/.bak``, and since
    Python 3.13 one SQLite file (``dbm.sqlite3``, read by :class:`_SqliteShelf`).
    Values are read as raw bytes through ``dbm`` (flag ``'r'``) and unpickled
    here, so safe mode applies to them too.  Its creation time is its files'
    mtime.
    """

    def __init__(self, entry: SessionEntry, safe: bool = False) -> None:
        self.name, self.path, self.safe = entry.name, entry.path, safe
        self._conn = None
        try:
            if _is_sqlite(self.path):
                self._db: Any = _SqliteShelf(self.path)
            else:
                self._db = dbm.open(self.path, "r")  # noqa: SIM115 - closed by close()
        except Exception as exc:  # dbm.dumb raises SyntaxError/ValueError on a bad index
            check_descriptors(self.path)
            raise CorruptSessionError(self.path, f"unreadable legacy shelf ({exc})") from exc
        candidates = [self.path + s for s in ("", *_DBM_SUFFIXES)]
        self._files = [f for f in candidates if os.path.isfile(f)]
        self.created = min(os.path.getmtime(f) for f in self._files)
        self._index = {k.decode("utf-8", "surrogateescape"): k for k in self._db.keys()}  # noqa: SIM118

    @property
    def metadata(self) -> dict[str, Any]:
        return {"created": self.created, "legacy": "shelve", "files": self._files}

    def keys(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __getitem__(self, key: str) -> Any:
        data = self._raw(key)
        return decode(data, self.path, self.name, key, self.safe)

    def _raw(self, key: str) -> bytes:
        stored = self._index[key]  # a key the shelf never had
        try:
            return self._db[stored]
        except KeyError:  # deleted by a writer since we opened, as in a session
            raise KeyError(key) from None
        except Exception as exc:
            raise CorruptSessionError(self.path, f"cannot read the value ({exc})", key) from exc

    def _all_items(self, on_error: OnError | None, batch: int = 64) -> Iterator[tuple[str, Any]]:
        return self.items(self.keys(), on_error)

    def raw_values(self) -> Iterator[tuple[str, bytes]]:
        for key in self._index:
            yield key, self._raw(key)

    def matching(self, match: Match) -> list[str]:
        if callable(check_match(match)):
            return [k for k in self._index if match(k)]
        return [k for k in self._index if k.startswith(match)]

    def side_files(self) -> list[tuple[str, str, int]]:
        return []

    @property
    def nbytes(self) -> int:
        return sum(os.path.getsize(f) for f in self._files)

    def close(self) -> None:
        db, self._db = getattr(self, "_db", None), None
        if db is not None:
            db.close()


def merge_values(key: str, values: list[tuple[str, Any]]) -> Any:
    """Merge one key's values across sessions, as :meth:`DataManager.get_merged`.

    Lists and tuples are concatenated into one list; where every value is a
    numpy array the result is one array, concatenated along axis 0.
    """
    if values and all(isinstance(v, np.ndarray) for _, v in values):
        for session, v in values:
            if v.ndim == 0:
                raise TypeError(f"cannot merge key {key!r}: session {session!r} holds a 0-d array")
        try:
            return np.concatenate([v for _, v in values], axis=0)
        except ValueError as exc:
            shapes = ", ".join(f"{s}: {v.shape}" for s, v in values)
            raise ValueError(f"cannot merge key {key!r}: shapes differ ({shapes})") from exc
    merged: list[Any] = []
    for session, v in values:
        if not isinstance(v, (list, tuple)):
            raise TypeError(
                f"cannot merge key {key!r}: session {session!r} holds a "
                f"{type(v).__name__}, but merging needs list or tuple values in every "
                "session (or numpy arrays in every session); use get() and merge by hand"
            )
        merged.extend(v)
    return merged
