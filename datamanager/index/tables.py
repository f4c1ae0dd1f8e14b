"""The index as tables: DataFrames in memory, Parquet files on disk."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from typing import TYPE_CHECKING

from .._format import INDEX_NAME
from ..readers import sqlite_uri
from .build import SCHEMA, refresh, usable

if TYPE_CHECKING:
    import pandas

__all__ = ["export_tables", "index_tables", "write_parquet"]


def index_tables(basepath: str) -> dict[str, pandas.DataFrame]:
    """The index of *basepath* as two DataFrames, brought up to date in memory.

    The directory's index (if any) is copied into memory, and sessions
    changed since it was built are read again there; nothing is written.

    Returns
    -------
    dict
        ``{"sessions": DataFrame, "items": DataFrame}``; their columns are
        listed in :doc:`/indexing`.
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
                    loaded = usable(conn)
                finally:
                    source.close()
        if not loaded:
            conn.close()  # afresh: nothing of an index it cannot use is kept
            conn = sqlite3.connect(":memory:", isolation_level=None)
            for statement in SCHEMA:
                conn.execute(statement)
        conn.execute("BEGIN")
        refresh(conn, basepath, hash_values=False, clock_path=None)
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
    _need_pyarrow()
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, frame in tables.items():
        path = os.path.join(out_dir, f"{name}.parquet")
        write_parquet(frame, path)
        written.append(path)
    return written


def write_parquet(frame: pandas.DataFrame, path: str) -> None:
    """Write *frame* to the Parquet file *path*, whole or not at all.

    Raises
    ------
    ImportError
        Without pyarrow, naming the extra that installs it.
    """
    _need_pyarrow()
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        frame.to_parquet(temp, engine="pyarrow", index=False)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError(
            "writing Parquet files needs pyarrow: pip install 'sim-datamanager[parquet]'"
        ) from None
