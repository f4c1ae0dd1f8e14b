"""The index of a data directory: every session's metadata and keys in one file.

Without an index, every collation question ("which sessions hold key
``rare``?") opens every session.  :func:`build_index` writes one SQLite file
inside the data directory (:data:`~datamanager._format.INDEX_NAME`, a name no
session can take) with a row per session and a row per stored value; values
stored in at most :data:`CACHE_LIMIT` bytes are copied in.  Collation then
reads small values from the index and opens only the sessions that hold what
else it needs.

The index never gives a stale answer.  Each session row records the identity
of the session's files when they were read: inode, size and modification time
of the database, its ``-journal`` and its ``-wal``, and the change time of
the database (not of the others, which SQLite running as root sets on every
open, to read too).  Collation serves a session from the index only while all
of these are unchanged, and reads any other session directly, as it would
without an index.  A write always sets the modification time of a file it
changes, but a clock has ticks: a write in the same tick as the one before it
may leave the time as it was.  So a row is *settled*, and served, only if the
session's files were last modified before the build started, by the
filesystem's own clock (the modification time the build gives its own file):
any later write then carries a later time.  A session written during the
build is read again once the clock has moved on, or else left unsettled and
read directly.

Building never blocks or modifies a session: sessions are opened read-only,
the index is written under a temporary name and renamed into place, and a
reader holding the old index keeps reading it whole.  Collation never writes
the index; a stale or missing index only costs speed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _format as fmt
from ._format import INDEX_NAME
from ._npyheader import read_npy_header
from .errors import CorruptSessionError, UnsafeValueError, warn_caller
from .readers import (
    Match,
    NativeReader,
    OnError,
    SessionEntry,
    SessionReader,
    key_test,
    list_directory,
    session_nbytes,
    sqlite_uri,
)

if TYPE_CHECKING:
    import pandas

__all__ = ["CACHE_LIMIT", "IndexSummary", "IndexView", "build_index", "index_tables", "open_view"]

#: Version of the index's tables; an index of another version is ignored.
INDEX_VERSION = 1
#: Values stored in at most this many bytes are copied into the index.
CACHE_LIMIT = 1 << 16
#: Seconds a build waits for the filesystem clock to pass the last write of
#: a session written during the build (see the module docstring).
CLOCK_WAIT = 5.0

_SCHEMA = [
    "CREATE TABLE info (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
    """CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        name TEXT UNIQUE NOT NULL,
        file TEXT NOT NULL,         -- its database, relative to the data directory
        signature TEXT NOT NULL,    -- the identity of its files when read
        settled INTEGER NOT NULL,   -- 1: no write since can keep the signature
        created REAL NOT NULL,
        user TEXT, host TEXT, pid INTEGER, git_commit TEXT, git_dirty INTEGER,
        keys INTEGER NOT NULL,
        bytes INTEGER NOT NULL,     -- every file of the session, side files included
        size INTEGER NOT NULL, mtime REAL NOT NULL,
        wal_size INTEGER, wal_mtime REAL, journal_size INTEGER, journal_mtime REAL,
        meta TEXT NOT NULL)         -- its metadata rows as stored: JSON [[name, text], ...]""",
    """CREATE TABLE items (
        session INTEGER NOT NULL,   -- sessions.id
        pos INTEGER NOT NULL,       -- place in the session's key order
        key TEXT NOT NULL,
        type TEXT, dtype TEXT, shape TEXT,
        stored_size INTEGER NOT NULL,
        side TEXT, side_size INTEGER,
        sha256 TEXT,
        value BLOB,                 -- the stored pickle, if at most CACHE_LIMIT bytes
        PRIMARY KEY (session, pos)) WITHOUT ROWID""",
    "CREATE INDEX items_by_key ON items (key, session)",
]
_INSERT_SESSION = (
    "INSERT INTO sessions (name, file, signature, settled, created, user, host, pid, "
    "git_commit, git_dirty, keys, bytes, size, mtime, wal_size, wal_mtime, journal_size, "
    "journal_mtime, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ITEM = (
    "INSERT INTO items (session, pos, key, type, dtype, shape, stored_size, side, side_size, "
    "sha256, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: A signature no file can have: a file that vanished while it was looked at.
_CHANGING = "changing"


@dataclasses.dataclass(frozen=True)
class IndexSummary:
    """What :func:`build_index` did."""

    #: The index file.
    path: str
    #: Sessions indexed.
    sessions: int
    #: Of those, sessions read from their files by this build.
    read: int
    #: Of those, sessions carried over unchanged from the previous index.
    kept: int
    #: Sessions of the previous index that are gone.
    dropped: int
    #: Sessions still being written: indexed, but read directly until the next build.
    unsettled: int
    #: Sessions that could not be read, with why; collation reads them directly.
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        text = (
            f"{self.path}: {self.sessions} sessions ({self.read} read, {self.kept} unchanged, "
            f"{self.dropped} gone, {self.unsettled} still being written)"
        )
        return text + "".join(f"\n  not indexed: {name}: {why}" for name, why in self.skipped)


# -- the identity of a session's files --


@dataclasses.dataclass(frozen=True)
class _Files:
    signature: str
    #: The latest modification time of the files, in ns.
    newest: int
    stats: dict[str, os.stat_result]


def _files(path: str, names: frozenset[str]) -> _Files | None:
    """The identity of the files of the session at *path*; None if it is gone.

    *names* is a listing of the data directory: companions it does not name
    are taken as absent (one created since belongs to a write that began
    after the listing).
    """
    base = os.path.basename(path)
    stats = {}
    for suffix in fmt.SQLITE_DATA:
        if suffix and base + suffix not in names:
            continue
        try:
            stats[suffix] = os.stat(path + suffix)
        except FileNotFoundError:
            if not suffix:
                return None
            # A write is finishing right now.  The database's own stat (taken
            # first) is kept: an unsettled row still records its size and time.
            return _Files(_CHANGING, 1 << 63, stats)
    signature = ";".join(_identity(suffix, st) for suffix, st in stats.items())
    return _Files(signature, max(st.st_mtime_ns for st in stats.values()), stats)


def _identity(suffix: str, st: os.stat_result) -> str:
    # Not the change time of a -wal or -journal file: SQLite running as root
    # chowns it to its database's owner whenever it opens it, to read too,
    # which sets that time.  A write still sets its modification time, and a
    # copy put in place of the session sets the database's change time.
    ctime = "" if suffix else st.st_ctime_ns
    return f"{suffix}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{ctime}"


def _clock(path: str) -> int:
    """Now, by the clock of the filesystem holding *path* (a file this process owns)."""
    os.utime(path)
    return os.stat(path).st_mtime_ns


def _wait_past(path: str, newest: int) -> int:
    """Wait until the filesystem clock has passed *newest*; return its time."""
    deadline = time.monotonic() + CLOCK_WAIT
    now = _clock(path)
    while now <= newest and time.monotonic() < deadline:
        time.sleep(0.001)  # a clock tick is a few ms; a coarse filesystem's up to 2 s
        now = _clock(path)
    return now


# -- building --


def build_index(basepath: str, hash_values: bool = False) -> IndexSummary:
    """Index the data directory *basepath*, or bring its index up to date.

    Sessions whose files are unchanged since the previous build are carried
    over without being opened; the others are read, and sessions that are
    gone are dropped.  See the module docstring for what makes a row safe
    to serve.

    Parameters
    ----------
    basepath : str
        The data directory.
    hash_values : bool, optional
        Also record a sha256 of every value's stored bytes (its pickle or its
        side file); this reads every side file once.

    Returns
    -------
    IndexSummary

    Raises
    ------
    FileNotFoundError
        If *basepath* does not exist.
    """
    if not os.path.isdir(basepath):
        raise FileNotFoundError(errno.ENOENT, "no such data directory", basepath)
    target = os.path.join(basepath, INDEX_NAME)
    temp = os.path.join(basepath, fmt.new_index_temp_name())
    try:
        conn = _start(target, temp, hash_values)
        try:
            summary = _refresh(conn, basepath, hash_values, temp)
            conn.commit()
        finally:
            conn.close()
        with open(temp, "rb") as f:
            os.fsync(f.fileno())  # whole on disk before it replaces the old index
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return dataclasses.replace(summary, path=target)


def _start(target: str, temp: str, hash_values: bool) -> sqlite3.Connection:
    """Open *temp* as a copy of the index at *target* if it can be updated, else a new one."""
    try:
        shutil.copyfile(target, temp)
    except FileNotFoundError:
        pass
    else:
        conn = None
        try:
            conn = _connect(temp)  # raises for a file that is not a database at all
            if _usable(conn) and (_info(conn).get("hash_values") == "1" or not hash_values):
                return conn
        except sqlite3.DatabaseError:
            pass  # damaged: start afresh
        if conn is not None:
            conn.close()
        os.unlink(temp)
    open(temp, "xb").close()
    conn = _connect(temp)
    for statement in _SCHEMA:
        conn.execute(statement)
    return conn


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    # A temporary file: an interrupted build leaves it to be deleted, never read.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    return conn


def _info(conn: sqlite3.Connection) -> dict[str, Any]:
    return dict(conn.execute("SELECT name, value FROM info").fetchall())


#: A session row without numbers where numbers belong: a damaged index.
_UNSOUND = (
    "SELECT 1 FROM sessions WHERE typeof(created) != 'real' OR typeof(keys) != 'integer' "
    "OR typeof(mtime) != 'real' OR typeof(wal_mtime) NOT IN ('real', 'null') "
    "OR typeof(journal_mtime) NOT IN ('real', 'null') LIMIT 1"
)


def _usable(conn: sqlite3.Connection) -> bool:
    """Whether *conn* holds an index of this version, not damaged, to update or load."""
    if _info(conn).get("version") != str(INDEX_VERSION):
        return False
    return conn.execute(_UNSOUND).fetchone() is None


def _refresh(
    conn: sqlite3.Connection, basepath: str, hash_values: bool, clock: str | None
) -> IndexSummary:
    """Bring the index tables in *conn* up to date with the sessions of *basepath*.

    *clock* is a file of the data directory whose modification time the
    build may set to read the filesystem's clock; without one (an index kept
    in memory) no row is settled.
    """
    now = _clock(clock) if clock else 0
    listing = list_directory(basepath)
    old = {
        name: (sid, sig, settled)
        for sid, name, sig, settled in conn.execute(
            "SELECT id, name, signature, settled FROM sessions"
        )
    }
    kept = read = 0
    skipped: list[tuple[str, str]] = []
    later: list[tuple[SessionEntry, _Files]] = []
    for entry in listing.native:
        files = _files(entry.path, listing.names)
        if files is None:
            continue
        previous = old.pop(entry.name, None)
        if previous is not None:
            if previous[1:] == (files.signature, 1):
                kept += 1
                continue
            _drop(conn, previous[0])
        if files.newest >= now and clock:
            later.append((entry, files))  # written during the build: wait for the clock
            continue
        read += _add(conn, entry, files, files.newest < now, hash_values, skipped)
    dropped = len(old)
    for sid, _, _ in old.values():
        _drop(conn, sid)
    unsettled = 0
    if later and clock:
        # Past the last write seen, not any later one: a session written
        # all along stays unsettled rather than holding the build up.
        now = _wait_past(clock, max(min(f.newest, now + 10**9) for _, f in later))
        for entry, _ in later:
            files = _files(entry.path, listing.names)
            if files is not None:
                settled = files.newest < now
                unsettled += not settled
                read += _add(conn, entry, files, settled, hash_values, skipped)
    conn.executemany(
        "INSERT OR REPLACE INTO info (name, value) VALUES (?, ?)",
        [("version", str(INDEX_VERSION)), ("hash_values", str(int(hash_values)))],
    )
    (total,) = conn.execute("SELECT count(*) FROM sessions").fetchone()
    return IndexSummary("", total, read, kept, dropped, unsettled, skipped)


def _drop(conn: sqlite3.Connection, sid: int) -> None:
    conn.execute("DELETE FROM items WHERE session = ?", (sid,))
    conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))


def _add(
    conn: sqlite3.Connection,
    entry: SessionEntry,
    files: _Files,
    settled: bool,
    hash_values: bool,
    skipped: list[tuple[str, str]],
) -> int:
    """Index one session read from its files; 1 if it was, 0 if it is left to direct reads."""
    try:
        with NativeReader(entry, safe=True) as reader:
            if reader.empty:
                return 0  # killed before its first commit: read directly until it has one
            meta = reader.raw_metadata()
            metadata = {name: fmt.decode_metadata(name, text, entry.path) for name, text in meta}
            rows = reader.raw_rows()
            nbytes = reader.nbytes
            created = reader.created
    except CorruptSessionError as exc:
        skipped.append((entry.name, exc.reason))
        return 0
    if any(type(row[0]) is not str for row in rows):
        skipped.append((entry.name, "a key that is not text"))
        return 0
    conn.execute("SAVEPOINT session")
    try:
        _insert(conn, entry, files, settled, hash_values, meta, metadata, rows, nbytes, created)
    except (UnicodeError, sqlite3.Error) as exc:
        # A name or key in another encoding (kept with its undecodable
        # bytes) has no place in SQLite's text: read directly.
        conn.execute("ROLLBACK TO session")
        skipped.append((entry.name, f"cannot be indexed ({exc})"))
        return 0
    finally:
        conn.execute("RELEASE session")
    return 1


def _insert(
    conn: sqlite3.Connection,
    entry: SessionEntry,
    files: _Files,
    settled: bool,
    hash_values: bool,
    meta: list[tuple[Any, Any]],
    metadata: dict[str, Any],
    rows: list[tuple[str, Any, Any, Any]],
    nbytes: int,
    created: float,
) -> None:
    st = files.stats
    wal, journal = st.get("-wal"), st.get("-journal")
    sid = conn.execute(
        _INSERT_SESSION,
        (
            entry.name,
            os.path.basename(entry.path),
            files.signature,
            int(settled),
            created,
            *(_plain(metadata.get(k)) for k in ("user", "host", "pid", "git_commit", "git_dirty")),
            len(rows),
            nbytes,
            st[""].st_size,
            st[""].st_mtime_ns / 1e9,
            wal and wal.st_size,
            wal and wal.st_mtime_ns / 1e9,
            journal and journal.st_size,
            journal and journal.st_mtime_ns / 1e9,
            json.dumps(meta),
        ),
    ).lastrowid
    conn.executemany(
        _INSERT_ITEM,
        (
            (sid, pos, *_describe(entry, key, value, side, side_size, hash_values))
            for pos, (key, value, side, side_size) in enumerate(rows)
        ),
    )


def _plain(value: Any) -> Any:
    """A metadata value as a column value: numbers and text kept, others as JSON."""
    if value is None or type(value) in (int, float, str, bool):
        return value
    return json.dumps(value)


def _describe(
    entry: SessionEntry, key: str, value: Any, side: Any, side_size: Any, hash_values: bool
) -> tuple[Any, ...]:
    """``(key, type, dtype, shape, stored_size, side, side_size, sha256, cached)`` of one row."""
    if side is not None:
        return _describe_side(entry, key, side, side_size, hash_values)
    if type(value) is not bytes:
        return (key, None, None, None, 0, None, None, None, None)
    try:
        decoded = fmt.decode(value, entry.path, entry.name, key, safe=True)
    except UnsafeValueError as exc:
        kind, dtype, shape = exc.class_name, None, None
    except CorruptSessionError:
        kind, dtype, shape = None, None, None
    else:
        kind, dtype, shape = _type_name(type(decoded)), None, None
        if isinstance(decoded, (np.ndarray, np.generic)):
            dtype, shape = decoded.dtype.str, json.dumps(list(np.shape(decoded)))
    digest = hashlib.sha256(value).hexdigest() if hash_values else None
    cached = value if len(value) <= CACHE_LIMIT else None
    return (key, kind, dtype, shape, len(value), None, None, digest, cached)


def _describe_side(
    entry: SessionEntry, key: str, side: Any, side_size: Any, hash_values: bool
) -> tuple[Any, ...]:
    kind = dtype = shape = digest = None
    try:
        with open(fmt.side_path(entry.path, side, key), "rb") as f:
            header = read_npy_header(f)
            kind, dtype, shape = "numpy.ndarray", header.dtype.str, json.dumps(header.shape)
            if hash_values:
                f.seek(0)
                digest = _digest(f)
    except (OSError, ValueError, CorruptSessionError):
        pass  # reading the value reports what is wrong
    size = side_size if type(side_size) is int else 0
    return (key, kind, dtype, shape, size, side, side_size, digest, None)


def _type_name(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _digest(f: Any) -> str:
    """The sha256 of the rest of the open binary file *f*, read in blocks."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


# -- reading through the index --


@dataclasses.dataclass(frozen=True)
class _Row:
    sid: int
    created: float
    keys: int


class IndexView:
    """The index of a data directory as one collation call sees it.

    :attr:`served` names the sessions whose files are unchanged since the
    index was built: the index answers for them.  Everything is read from
    one file that no one modifies (a newer build replaces it whole), lazily
    and in bulk.
    """

    def __init__(self, conn: sqlite3.Connection, served: dict[str, _Row]) -> None:
        self._conn = conn
        self.served = served
        self._names = {row.sid: name for name, row in served.items()}
        self._by_key: dict[str, dict[int, tuple[Any, Any, Any]]] = {}
        self._keys: dict[int, list[str]] | None = None
        self._uncached: set[int] | None = None

    def close(self) -> None:
        self._conn.close()

    def reader(self, entry: SessionEntry, safe: bool, kept: bool = False) -> IndexedReader | None:
        """A reader of *entry* served from the index; None if the index cannot serve it.

        *kept*: the reader is kept for reading later (see :class:`IndexedReader`).
        """
        row = self.served.get(entry.name) if not entry.legacy else None
        return None if row is None else IndexedReader(entry, self, row, safe, kept)

    def holding(self, key: str) -> set[str]:
        """The served sessions that hold *key*."""
        return {self._names[sid] for sid in self.rows(key) if sid in self._names}

    def holding_match(self, match: Match) -> set[str]:
        """The served sessions that hold a key matching *match*."""
        test = key_test(match)
        # keys() lists every indexed session, served or not (changed since).
        return {
            self._names[sid]
            for sid, keys in self.keys().items()
            if sid in self._names and any(map(test, keys))
        }

    def rows(self, key: str) -> dict[int, tuple[Any, Any, Any]]:
        """``{session id: (cached pickle, side, side_size)}`` of the sessions holding *key*."""
        rows = self._by_key.get(key)
        if rows is None:
            query = "SELECT session, value, side, side_size FROM items WHERE key = ?"
            rows = {sid: _clean(row) for sid, *row in self._conn.execute(query, (key,))}
            self._by_key[key] = rows
        return rows

    def keys(self) -> dict[int, list[str]]:
        """``{session id: its keys in order}`` for every indexed session."""
        if self._keys is None:
            self._keys = {}
            for sid, key in self._conn.execute("SELECT session, key FROM items ORDER BY 1, pos"):
                self._keys.setdefault(sid, []).append(key)
        return self._keys

    def uncached(self) -> set[int]:
        """The ids of the sessions holding values the index does not hold."""
        if self._uncached is None:
            query = "SELECT DISTINCT session FROM items WHERE typeof(value) != 'blob'"
            self._uncached = {sid for (sid,) in self._conn.execute(query)}
        return self._uncached

    def session_rows(self, sid: int) -> list[tuple[str, tuple[Any, Any, Any]]]:
        """``(key, (cached pickle, side, side_size))`` of one session, in key order."""
        query = "SELECT key, value, side, side_size FROM items WHERE session = ? ORDER BY pos"
        return [(key, _clean(row)) for key, *row in self._conn.execute(query, (sid,))]

    def metadata_rows(self, sid: int) -> list[tuple[Any, Any]]:
        """The session's metadata rows, as stored in it."""
        (text,) = self._conn.execute("SELECT meta FROM sessions WHERE id = ?", (sid,)).fetchone()
        return [tuple(pair) for pair in json.loads(text)]


def _clean(row: Any) -> tuple[Any, Any, Any]:
    """An items row as the reader expects it; one it could not use means "read the session"."""
    value, side, side_size = row
    if (value is None or type(value) is bytes) and (side is None or type(side) is str):
        return value, side, side_size
    return None, None, None


def open_view(basepath: str, entries: list[SessionEntry]) -> IndexView | None:
    """The index of *basepath* for the sessions *entries*; None if there is none to use.

    An index that cannot be read, or of another version, is ignored with a
    warning: collation then reads every session directly.
    """
    path = os.path.join(basepath, INDEX_NAME)
    if not os.path.isfile(path):
        return None
    # immutable: nothing ever modifies an index file in place (a build
    # renames a new one over it), so SQLite need not lock or check it.
    conn = sqlite3.connect(
        sqlite_uri(path, "mode=ro&immutable=1"), uri=True, check_same_thread=False
    )
    try:
        version = _info(conn).get("version")
        if version != str(INDEX_VERSION):
            raise ValueError(f"version {version!r}, not {INDEX_VERSION}")
        query = "SELECT name, id, signature, created, keys FROM sessions WHERE settled = 1"
        indexed = {
            name: (sid, sig, created, keys)
            for name, sid, sig, created, keys in conn.execute(query)
        }
        names = frozenset(os.listdir(basepath))
        served = {}
        for entry in entries:
            found = indexed.get(entry.name)
            if found is None or entry.legacy:
                continue
            sid, signature, created, keys = found
            files = _files(entry.path, names)
            if files is not None and files.signature == signature:
                if type(created) is not float or type(keys) is not int:
                    raise ValueError(f"a damaged row of session {entry.name!r}")
                served[entry.name] = _Row(sid, created, keys)
    except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
        conn.close()
        warn_caller(f"ignoring the index {path} ({exc}); build_index() writes a new one")
        return None
    return IndexView(conn, served)


class IndexedReader(SessionReader):
    """A session read through the index: what the index holds, without opening it.

    Values too large for the index are read from their side file, or from
    the session, opened on first need; or at once if the reader is *kept*
    for reading later, as a direct reader holds its session open from the
    start: a session deleted meanwhile still reads whole.
    """

    def __init__(
        self, entry: SessionEntry, view: IndexView, row: _Row, safe: bool, kept: bool = False
    ) -> None:
        super().__init__(entry, safe)
        self._entry, self._view, self._sid = entry, view, row.sid
        self.created, self._count = row.created, row.keys
        self._native: NativeReader | None = None
        if kept and row.sid in view.uncached():
            self._direct()

    def _direct(self) -> NativeReader:
        if self._native is None:
            self._native = NativeReader(self._entry, self.safe)
        return self._native

    @property
    def metadata(self) -> dict[str, Any]:
        return {
            name: fmt.decode_metadata(name, text, self.path)
            for name, text in self._view.metadata_rows(self._sid)
        }

    def keys(self) -> list[str]:
        return list(self._view.keys().get(self._sid, ()))

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._sid in self._view.rows(key)

    def _value(self, key: str) -> Any:
        row = self._view.rows(key).get(self._sid)
        if row is None:
            raise KeyError(key)
        return self._row_value(key, row)

    def _row_value(self, key: str, row: tuple[Any, Any, Any]) -> Any:
        value, side, _side_size = row
        if value is not None:
            return fmt.decode(value, self.path, self.name, key, self.safe)
        if side is not None:
            with contextlib.suppress(FileNotFoundError):  # replaced since: ask the session
                return fmt.row_value(self.path, self.name, key, row, self.safe)
        return self._direct()._value(key)

    def _all_items(self, on_error: OnError | None) -> Iterator[tuple[str, Any]]:
        for key, row in self._view.session_rows(self._sid):
            try:
                value = self._row_value(key, row)
            except KeyError:  # deleted by a writer meanwhile
                continue
            except CorruptSessionError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            yield key, value

    def raw_values(self) -> Iterator[tuple[str, bytes]]:
        return self._direct().raw_values()

    def raw_task_records(self) -> list[tuple[str, Any]]:
        return self._direct().raw_task_records()

    @property
    def nbytes(self) -> int:
        return session_nbytes(self.path)

    def side_files(self) -> list[tuple[str, str, int]]:
        return self._direct().side_files()

    def integrity(self) -> list[str]:
        return self._direct().integrity()

    def listed_sides(self) -> list[tuple[str | None, Any]]:
        return self._direct().listed_sides()

    def close(self) -> None:
        native, self._native = self._native, None
        if native is not None:
            native.close()


# -- tables --


def index_tables(basepath: str) -> dict[str, pandas.DataFrame]:
    """The index of *basepath* as two DataFrames, brought up to date in memory.

    The directory's index (if any) is copied into memory, and sessions
    changed since it was built are read again there; nothing is written.

    Returns
    -------
    dict
        ``{"sessions": DataFrame, "items": DataFrame}``; see the reference
        for their columns.
    """
    import pandas

    if not os.path.isdir(basepath):
        raise FileNotFoundError(errno.ENOENT, "no such data directory", basepath)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        path = os.path.join(basepath, INDEX_NAME)
        loaded = False
        if os.path.isfile(path):
            with contextlib.suppress(sqlite3.DatabaseError):
                source = sqlite3.connect(sqlite_uri(path, "mode=ro&immutable=1"), uri=True)
                try:
                    source.backup(conn)
                    loaded = _usable(conn)
                finally:
                    source.close()
        if not loaded:
            for table in ("info", "sessions", "items"):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA:
                conn.execute(statement)
        conn.execute("BEGIN")
        _refresh(conn, basepath, hash_values=False, clock=None)
        conn.execute("COMMIT")
        sessions = pandas.read_sql_query(_SESSIONS_TABLE, conn)
        items = pandas.read_sql_query(_ITEMS_TABLE, conn)
    finally:
        conn.close()
    for column in ("created", "mtime", "wal_mtime", "journal_mtime"):
        # One resolution whatever the values: pandas picks seconds for a
        # column of nulls, which Parquet would read back as milliseconds.
        times = pandas.to_datetime(sessions[column], unit="s", utc=True)
        sessions[column] = times.astype("datetime64[ns, UTC]")
    sessions["git_dirty"] = sessions["git_dirty"].astype("boolean")
    sessions["settled"] = sessions["settled"].astype(bool)
    items["cached"] = items["cached"].astype(bool)
    return {"sessions": sessions, "items": items}


_SESSIONS_TABLE = (
    "SELECT name, file, created, user, host, pid, git_commit, git_dirty, keys, bytes, size, "
    "mtime, wal_size, wal_mtime, journal_size, journal_mtime, settled FROM sessions "
    "ORDER BY created, name"
)
_ITEMS_TABLE = (
    "SELECT s.name AS session, i.key, i.type, i.dtype, i.shape, i.stored_size, i.side, "
    "i.sha256, i.value IS NOT NULL AS cached FROM items AS i JOIN sessions AS s "
    "ON s.id = i.session ORDER BY s.created, s.name, i.pos"
)


def export_tables(tables: dict[str, pandas.DataFrame], out_dir: str) -> list[str]:
    """Write *tables* as ``<name>.parquet`` files in *out_dir*; return their paths."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError(
            "writing Parquet files needs pyarrow: pip install 'sim-datamanager[parquet]'"
        ) from None
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, frame in tables.items():
        path = os.path.join(out_dir, f"{name}.parquet")
        temp = f"{path}.{os.getpid()}.tmp"
        try:
            frame.to_parquet(temp, engine="pyarrow", index=False)
            os.replace(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        written.append(path)
    return written
