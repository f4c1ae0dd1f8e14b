"""Reading through the index: sessions served without being opened.

See :mod:`datamanager.index` for when the index may answer for a session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from .. import _format as fmt
from .._format import BLOB_SUFFIX, INDEX_NAME, SESSION_SUFFIX
from ..errors import CorruptSessionError, warn_caller
from ..readers import (
    Match,
    NativeReader,
    OnError,
    SessionEntry,
    SessionReader,
    key_test,
    report,
    session_nbytes,
    side_bytes,
    sqlite_uri,
)
from . import identity
from .build import INDEX_VERSION, read_info

__all__ = ["IndexView", "IndexedReader", "open_view"]


@dataclasses.dataclass(frozen=True)
class _Row:
    sid: int
    created: float
    keys: int
    #: Size of its database, when it has no journal files; else None.
    size: int | None


class IndexView:
    """The index of a data directory as one collation call sees it.

    :attr:`served` names the sessions whose files are unchanged since the
    index was built: the index answers for them.  Everything is read from
    one file that no one modifies (a newer build replaces it whole), lazily
    and in bulk.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        served: dict[str, _Row],
        names: frozenset[str],
        settled: int,
    ) -> None:
        self._conn = conn
        self._settled = settled
        self.served = served
        self.listing = names
        self._name_of = {row.sid: name for name, row in served.items()}
        self._by_key: dict[str, dict[int, tuple[Any, Any, Any]]] = {}
        self._keys: dict[int, list[str]] | None = None
        self._meta: dict[int, str] | None = None
        self._records: dict[int, list[tuple[str, Any]]] | None = None
        self._uncached: set[int] | None = None

    def close(self) -> None:
        self._conn.close()

    def reader(self, entry: SessionEntry, safe: bool, kept: bool = False) -> IndexedReader | None:
        """A reader of *entry* served from the index; None if the index cannot serve it.

        *kept*: the reader is kept to be read later, as
        :meth:`~datamanager.DataManager.iter_sessions` keeps those it has
        ordered.  A direct reader holds its session open from the start, so
        that a session deleted meanwhile still reads whole; a kept reader of
        a session with values the index does not hold opens it at once too.
        """
        row = self.served.get(entry.name) if not entry.legacy else None
        if row is None:
            return None
        reader = IndexedReader(entry, self, row, safe)
        if kept and row.sid in self._partial():
            reader.open_session()
        return reader

    def _partial(self) -> set[int]:
        """The sessions with a value the index does not hold."""
        if self._uncached is None:
            query = "SELECT DISTINCT session FROM items WHERE value IS NULL"
            self._uncached = {sid for (sid,) in self._conn.execute(query)}
        return self._uncached

    def holding(self, key: str) -> set[str]:
        """The served sessions that hold *key*."""
        return {self._name_of[sid] for sid in self.rows(key) if sid in self._name_of}

    def holding_match(self, match: Match) -> set[str]:
        """The served sessions that hold a key matching *match*."""
        test = key_test(match)
        # keys() lists every indexed session, served or not (changed since).
        return {
            self._name_of[sid]
            for sid, keys in self.keys().items()
            if sid in self._name_of and any(map(test, keys))
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

    def distinct_keys(self) -> list[str]:
        """Every key of the served sessions, once each."""
        if len(self.served) == self._settled:
            return [k for (k,) in self._conn.execute(_ALL_KEYS)]
        keys = self.keys()
        return list({k for sid in self._name_of for k in keys.get(sid, ())})

    def records(self, sid: int) -> list[tuple[str, Any]] | None:
        """The task records of a served session; None if the index does not hold them."""
        if self._records is None:
            query = "SELECT id, records FROM sessions WHERE records >= 0"
            self._records = {sid: [] for sid, _ in self._conn.execute(query)}
            query = "SELECT session, key, value FROM records ORDER BY session, pos"
            for session, key, value in self._conn.execute(query):
                if type(key) is str and type(value) is bytes and session in self._records:
                    self._records[session].append((key, value))
                else:
                    self._records.pop(session, None)  # damaged: ask the session
        return self._records.get(sid)

    def count(self) -> int:
        """The number of items of the served sessions."""
        return sum(row.keys for row in self.served.values())

    def session_rows(self, sid: int) -> list[tuple[str, tuple[Any, Any, Any]]]:
        """``(key, (cached pickle, side, side_size))`` of one session, in key order."""
        query = "SELECT key, value, side, side_size FROM items WHERE session = ? ORDER BY pos"
        return [(key, _clean(row)) for key, *row in self._conn.execute(query, (sid,))]

    def metadata(self, sid: int) -> dict[str, Any] | None:
        """The session's metadata; None if the index cannot tell."""
        if self._meta is None:
            self._meta = dict(self._conn.execute("SELECT id, meta FROM sessions"))
        try:
            metadata = json.loads(self._meta[sid])
        except (TypeError, ValueError):
            return None
        return metadata if type(metadata) is dict else None

    def nbytes(self, entry: SessionEntry, row: _Row) -> int:
        """Bytes on disk of a served session, as :func:`~datamanager.readers.session_nbytes`."""
        if row.size is None:
            return session_nbytes(entry.path)
        # Side files can come and go without a change to the database (a
        # writer killed before its commit leaves one): they are counted now.
        listed = entry.name + BLOB_SUFFIX in self.listing
        return row.size + (side_bytes(entry.path) if listed else 0)


# Only settled sessions can be served: an unsettled one's keys are no one's.
_ALL_KEYS = (
    "SELECT DISTINCT key FROM items WHERE session IN (SELECT id FROM sessions WHERE settled = 1)"
)


def _clean(row: Any) -> tuple[Any, Any, Any]:
    """An items row as the reader expects it; one it could not use means "read the session"."""
    value, side, side_size = row
    if (value is None or type(value) is bytes) and (side is None or type(side) is str):
        return value, side, side_size
    return None, None, None


def open_view(
    basepath: str, entries: list[SessionEntry], names: frozenset[str]
) -> IndexView | None:
    """The index of *basepath* for the sessions *entries*; None if there is none to use.

    *names* is the listing of *basepath* the entries come from.  An index
    that cannot be read, or of another version, is ignored with a warning:
    collation then reads every session directly.
    """
    path = os.path.join(basepath, INDEX_NAME)
    if INDEX_NAME not in names:
        return None
    try:
        # immutable: nothing ever modifies an index file in place (a build
        # renames a new one over it), so SQLite need not lock or check it.
        conn = sqlite3.connect(
            sqlite_uri(path, "mode=ro&immutable=1"), uri=True, check_same_thread=False
        )
    except sqlite3.OperationalError:
        return None  # removed since the listing
    try:
        indexed = _indexed(conn)
        fresh = identity.needs_open(basepath)
        served = {}
        for entry in entries:
            found = indexed.get(entry.name)
            if found is not None and not entry.legacy:
                base = entry.name + SESSION_SUFFIX
                if identity.key(entry.path, base, names, fresh) == found[0]:
                    served[entry.name] = found[1]
    except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
        conn.close()
        warn_caller(f"ignoring the index {path} ({exc}); build_index() writes a new one")
        return None
    except BaseException:
        conn.close()
        raise
    return IndexView(conn, served, names, len(indexed))


#: The settled sessions of the indexes read lately, by build: a collation
#: call then reads only the identity of each session's files.
_LOADED: dict[str, dict[str, tuple[identity.Key, _Row]]] = {}


def _indexed(conn: sqlite3.Connection) -> dict[str, tuple[identity.Key, _Row]]:
    """``{name: (identity of its files, row)}`` of the settled sessions of the index."""
    info = read_info(conn)
    if info.get("version") != str(INDEX_VERSION):
        raise ValueError(f"version {info.get('version')!r}, not {INDEX_VERSION}")
    build = info.get("build")
    indexed = _LOADED.get(build)
    if indexed is None:
        query = (
            "SELECT name, ino, size, mtime_ns, ctime_ns, companions, id, created, keys "
            "FROM sessions WHERE settled = 1"
        )
        indexed = {}
        for name, ino, size, mtime, ctime, companions, sid, created, keys in conn.execute(query):
            row = (ino, size, mtime, ctime, companions, sid, keys)
            if not all(type(v) is int for v in row[:4] + row[5:]) or type(created) is not float:
                raise ValueError(f"a damaged row of session {name!r}")
            plain_size = None if companions else size
            key = (ino, size, mtime, ctime, companions)
            indexed[name] = (key, _Row(sid, created, keys, plain_size))
        if len(_LOADED) >= 4:
            _LOADED.clear()
        _LOADED[build] = indexed
    return indexed


class IndexedReader(SessionReader):
    """A session read through the index: what the index holds, without opening it.

    Values too large for the index are read from their side file, or from
    the session, opened on first need.
    """

    def __init__(self, entry: SessionEntry, view: IndexView, row: _Row, safe: bool) -> None:
        super().__init__(entry, safe)
        self._entry, self._view, self._row, self._sid = entry, view, row, row.sid
        self.created, self._count = row.created, row.keys
        self._native: NativeReader | None = None

    def open_session(self) -> None:
        """Open the session itself now, rather than when a value needs it."""
        self._direct()

    def _direct(self) -> NativeReader:
        if self._native is None:
            self._native = NativeReader(self._entry, self.safe)
        return self._native

    @property
    def metadata(self) -> dict[str, Any]:
        metadata = self._view.metadata(self._sid)
        return metadata if metadata is not None else self._direct().metadata

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
                report(exc, on_error)
                continue
            yield key, value

    def raw_values(self) -> Iterator[tuple[str, bytes]]:
        return self._direct().raw_values()

    def raw_task_records(self) -> list[tuple[str, Any]]:
        records = self._view.records(self._sid)
        return records if records is not None else self._direct().raw_task_records()

    @property
    def nbytes(self) -> int:
        return self._view.nbytes(self._entry, self._row)

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
