"""Building the index: reading every changed session into one SQLite file.

See :mod:`datamanager.index` for what the index holds and why it is never
stale.
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
import uuid
from typing import Any

import numpy as np

from .. import _format as fmt
from .._format import INDEX_NAME, SESSION_SUFFIX
from ..errors import CorruptSessionError, UnsafeValueError
from ..readers import NativeReader, SessionEntry, list_directory
from . import identity
from .identity import Files

__all__ = [
    "CACHE_LIMIT",
    "INDEX_VERSION",
    "IndexSummary",
    "build_index",
    "read_info",
    "refresh",
    "usable",
]

INDEX_VERSION = 1
#: Values stored in at most this many bytes are copied into the index.
CACHE_LIMIT = 1 << 16

SCHEMA = [
    "CREATE TABLE info (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
    """CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        name TEXT UNIQUE NOT NULL,
        file TEXT NOT NULL,         -- its database, relative to the data directory
        -- The identity of its files when read (see identity.Key):
        ino INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
        companions TEXT NOT NULL,
        settled INTEGER NOT NULL,   -- 1: no write since can have kept that identity
        created REAL NOT NULL,
        user TEXT, host TEXT, pid INTEGER, git_commit TEXT, git_dirty INTEGER,
        keys INTEGER NOT NULL,
        records INTEGER NOT NULL,   -- task records held below; -1: read them from the session
        bytes INTEGER NOT NULL,     -- every file of the session, side files included
        size INTEGER NOT NULL, mtime REAL NOT NULL,
        wal_size INTEGER, wal_mtime REAL, journal_size INTEGER, journal_mtime REAL,
        meta TEXT NOT NULL)         -- its metadata, a JSON object""",
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
    """CREATE TABLE records (       -- the task records of sessions.records >= 0
        session INTEGER NOT NULL,
        pos INTEGER NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (session, pos)) WITHOUT ROWID""",
]
_INSERT_SESSION = (
    "INSERT INTO sessions (name, file, ino, size, mtime_ns, ctime_ns, companions, settled, "
    "created, user, host, pid, git_commit, git_dirty, keys, records, bytes, mtime, wal_size, "
    "wal_mtime, journal_size, journal_mtime, meta) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ITEM = (
    "INSERT INTO items (session, pos, key, type, dtype, shape, stored_size, side, side_size, "
    "sha256, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


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
            summary = refresh(conn, basepath, hash_values, temp)
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
            if usable(conn) and (read_info(conn).get("hash_values") == "1" or not hash_values):
                return conn
        except sqlite3.DatabaseError:
            pass  # damaged: start afresh
        if conn is not None:
            conn.close()
        os.unlink(temp)
    open(temp, "xb").close()
    conn = _connect(temp)
    for statement in SCHEMA:
        conn.execute(statement)
    return conn


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # A temporary file: an interrupted build leaves it to be deleted, never read.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
    except BaseException:
        conn.close()  # a file that is no database: not left for the garbage collector
        raise
    return conn


def read_info(conn: sqlite3.Connection) -> dict[str, Any]:
    return dict(conn.execute("SELECT name, value FROM info").fetchall())


#: A session row without numbers where numbers belong: a damaged index.
_UNSOUND = (
    "SELECT 1 FROM sessions WHERE typeof(ino) != 'integer' OR typeof(size) != 'integer' "
    "OR typeof(mtime_ns) != 'integer' OR typeof(ctime_ns) != 'integer' "
    "OR typeof(companions) != 'text' OR typeof(settled) != 'integer' "
    "OR typeof(created) != 'real' OR typeof(keys) != 'integer' "
    "OR typeof(records) != 'integer' OR typeof(mtime) != 'real' "
    "OR typeof(wal_mtime) NOT IN ('real', 'null') "
    "OR typeof(journal_mtime) NOT IN ('real', 'null') LIMIT 1"
)


def usable(conn: sqlite3.Connection) -> bool:
    """Whether *conn* holds an index of this version, not damaged, to update or load."""
    if read_info(conn).get("version") != str(INDEX_VERSION):
        return False
    return conn.execute(_UNSOUND).fetchone() is None


def refresh(
    conn: sqlite3.Connection, basepath: str, hash_values: bool, clock_path: str | None
) -> IndexSummary:
    """Bring the index tables in *conn* up to date with the sessions of *basepath*.

    *clock_path* is a file of the data directory whose modification time the
    build may set to read the filesystem's clock; without one (an index kept
    in memory) no row is settled.
    """
    now = identity.clock(clock_path) if clock_path else 0
    listing = list_directory(basepath)
    query = "SELECT name, id, ino, size, mtime_ns, ctime_ns, companions, settled FROM sessions"
    old = {name: (sid, tuple(key), settled) for name, sid, *key, settled in conn.execute(query)}
    fresh = identity.needs_open(basepath)
    kept = read = 0
    skipped: list[tuple[str, str]] = []
    later: list[SessionEntry] = []
    for entry in listing.native:
        files = identity.files(entry.path, entry.name + SESSION_SUFFIX, listing.names, fresh)
        if files is None:
            continue
        previous = old.pop(entry.name, None)
        if previous is not None:
            if previous[1:] == (files.key, 1):
                kept += 1
                continue
            _drop(conn, previous[0])
        if files.newest >= now and clock_path:
            later.append(entry)  # written as the build began: wait for the clock
            continue
        read += _add(conn, entry, files, files.newest < now, hash_values, skipped)
    dropped = len(old)
    for sid, _, _ in old.values():
        _drop(conn, sid)
    unsettled = 0
    if later and clock_path:
        # One tick on: a session last written as the build began is then
        # settled; one written since is being written still and stays
        # unsettled rather than holding the build up.
        now = identity.wait_past(clock_path, now)
        for entry in later:
            files = identity.files(entry.path, entry.name + SESSION_SUFFIX, listing.names, fresh)
            if files is not None:
                settled = files.newest < now
                unsettled += not settled
                read += _add(conn, entry, files, settled, hash_values, skipped)
    conn.executemany(
        "INSERT OR REPLACE INTO info (name, value) VALUES (?, ?)",
        [
            ("version", str(INDEX_VERSION)),
            ("hash_values", str(int(hash_values))),
            # Tells apart two builds, so that what a reader took from one is
            # never used with the other.
            ("build", uuid.uuid4().hex),
        ],
    )
    (total,) = conn.execute("SELECT count(*) FROM sessions").fetchone()
    return IndexSummary("", total, read, kept, dropped, unsettled, skipped)


def _drop(conn: sqlite3.Connection, sid: int) -> None:
    conn.execute("DELETE FROM items WHERE session = ?", (sid,))
    conn.execute("DELETE FROM records WHERE session = ?", (sid,))
    conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))


@dataclasses.dataclass
class _Session:
    """What a build reads from one session."""

    created: float
    metadata: dict[str, Any]
    rows: list[tuple[str, Any, Any, Any]]
    records: list[tuple[str, Any]]
    nbytes: int


def _add(
    conn: sqlite3.Connection,
    entry: SessionEntry,
    files: Files,
    settled: bool,
    hash_values: bool,
    skipped: list[tuple[str, str]],
) -> int:
    """Index one session read from its files; 1 if it was, 0 if it is left to direct reads."""
    try:
        with NativeReader(entry, safe=True) as reader:
            if reader.empty:
                return 0  # killed before its first commit: read directly until it has one
            metadata = {
                name: fmt.decode_metadata(name, text, entry.path)
                for name, text in reader.raw_metadata()
            }
            read = _Session(
                reader.created,
                metadata,
                reader.raw_rows(),
                reader.raw_task_records(),
                reader.nbytes,
            )
    except CorruptSessionError as exc:
        skipped.append((entry.name, exc.reason))
        return 0
    if any(type(row[0]) is not str for row in read.rows + read.records):
        skipped.append((entry.name, "a key that is not text"))
        return 0
    conn.execute("SAVEPOINT session")
    try:
        _insert(conn, entry, files, settled, hash_values, read)
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
    files: Files,
    settled: bool,
    hash_values: bool,
    read: _Session,
) -> None:
    st = files.stats
    wal, journal = st.get("-wal"), st.get("-journal")
    metadata = read.metadata
    # The task records are kept only if each is small: a reader takes all or none.
    records = read.records if all(_small(value) for _, value in read.records) else None
    sid = conn.execute(
        _INSERT_SESSION,
        (
            entry.name,
            os.path.basename(entry.path),
            *files.key,
            int(settled),
            read.created,
            *(_plain(metadata.get(k)) for k in ("user", "host", "pid", "git_commit", "git_dirty")),
            len(read.rows),
            -1 if records is None else len(records),
            read.nbytes,
            st[""].st_mtime_ns / 1e9,
            wal and wal.st_size,
            wal and wal.st_mtime_ns / 1e9,
            journal and journal.st_size,
            journal and journal.st_mtime_ns / 1e9,
            # Each entry was JSON text and is again: the same values come back.
            json.dumps(metadata),
        ),
    ).lastrowid
    conn.executemany(
        _INSERT_ITEM,
        (
            (sid, pos, *_describe(entry, key, value, side, side_size, hash_values))
            for pos, (key, value, side, side_size) in enumerate(read.rows)
        ),
    )
    conn.executemany(
        "INSERT INTO records (session, pos, key, value) VALUES (?, ?, ?, ?)",
        ((sid, pos, key, value) for pos, (key, value) in enumerate(records or ())),
    )


def _small(value: Any) -> bool:
    return type(value) is bytes and len(value) <= CACHE_LIMIT


def _plain(value: Any) -> Any:
    """A metadata value as a column value: numbers and text kept, others as JSON."""
    if value is None or type(value) in (int, float, str, bool):
        return value
    return json.dumps(value)


def _describe(
    entry: SessionEntry, key: str, value: Any, side: Any, side_size: Any, hash_values: bool
) -> tuple[Any, ...]:
    """``(key, type, dtype, shape, stored_size, side, side_size, sha256, cached)`` of one row."""
    if type(side) is str and side.endswith(fmt.PICKLE_SUFFIX):
        # A large pickle is described as the pickle of a row is.
        try:
            path = fmt.side_path(entry.path, side, key)
            data = fmt.side_pickle(path, side_size, entry.path, key)
        except (OSError, CorruptSessionError):
            data = None  # reading the value reports what is wrong
        row = _describe(entry, key, data, None, None, hash_values)
        return (*row[:5], side, side_size, row[7], None)
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
        # A table in its row is named as one in a side file is, whatever pandas' module.
        holds_table = fmt.holds_value_file(value)
        kind = fmt.value_file_type(decoded) if holds_table else _type_name(type(decoded))
        dtype = shape = None
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
            kind, dtype, shape = fmt.describe_side_file(f)
            shape = None if shape is None else json.dumps(shape)
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
