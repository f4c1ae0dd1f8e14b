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
from .._format import INDEX_NAME
from ..errors import CorruptSessionError, warn_caller
from ..readers import (
    Match,
    NativeReader,
    OnError,
    SessionEntry,
    SessionReader,
    key_test,
    session_nbytes,
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

    def close(self) -> None:
        self._conn.close()

    def reader(self, entry: SessionEntry, safe: bool) -> IndexedReader | None:
        """A reader of *entry* served from the index; None if the index cannot serve it."""
        row = self.served.get(entry.name) if not entry.legacy else None
        return None if row is None else IndexedReader(entry, self, row, safe)

    def holding(self, key: str) -> set[str]:
        """The served sessions that hold *key*."""
        return {self._names[sid] for sid in self.rows(key) if sid in self._names}

    def holding_match(self, match: Match) -> set[str]:
        """The served sessions that hold a key matching *match*."""
        test = key_test(match)
        return {self._names[sid] for sid, keys in self.keys().items() if any(map(test, keys))}

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
        version = read_info(conn).get("version")
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
            files = identity.files(entry.path, names)
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
    the session, opened on first need.
    """

    def __init__(self, entry: SessionEntry, view: IndexView, row: _Row, safe: bool) -> None:
        super().__init__(entry, safe)
        self._entry, self._view, self._sid = entry, view, row.sid
        self.created, self._count = row.created, row.keys
        self._native: NativeReader | None = None

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
