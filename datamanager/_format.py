"""The on-disk format of a data directory: the one module that knows it.

A data directory holds one SQLite file per session, ``<name>.sqlite``, and
beside it the files that belong to it: SQLite's ``-wal``, ``-shm`` and
``-journal`` files, the ``.lock`` file of a
:class:`~datamanager.locking.LockingSession`, and the ``<name>.blobs/`` folder
of side files.  A value is one row of the ``items`` table: its pickle, the
bytes of a small value file (a table under :data:`SIDE_FILE_THRESHOLD`,
told from a pickle by its magic string), or the name of a side file in
``<name>.blobs/``, written whole before its row commits.  The name, a
uuid4 in hex plus a suffix, says the side file's encoding: ``.npy`` for a
large bare numpy array (``np.save`` format); ``.dmv`` for a *value file*
(:mod:`._sidecodec`: ``.npy`` parts and a JSON description, no pickle),
which holds a large pandas DataFrame or Series of plain dtypes, or a large
dict or list of numpy arrays; ``.pkl`` for any other value whose pickle is
large, the very bytes the row would hold.  A reader older than ``.dmv``
and ``.pkl`` finds such a name not one of its side-file names and refuses
the key as corrupt, and takes a value file in a row for a damaged pickle:
it never misreads one.
The ``meta`` table holds JSON text: who wrote the session, when, where.
The ``task_records`` table holds pickles that :func:`~datamanager.tasks.run_tasks`
keeps beside its results (the items, the failure records): apart from
``items``, so collation sees the results only.  Sessions written before it
existed gain it when a writer opens them; readers take its absence for none.

Everything here is about bytes on disk: names, tables, statements, and the
codec between a value and its row.  Connections, transactions and locking
belong to :mod:`datamanager.session`, reading many sessions to
:mod:`datamanager.readers`.
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import re
import sqlite3
import uuid
from typing import Any, NamedTuple

import numpy as np

from . import _sidecodec, safepickle
from ._npyheader import NpyHeader, read_npy_data, read_npy_header
from .errors import CorruptSessionError, InvalidNameError, UnsafeValueError

__all__ = [
    "BLOB_SUFFIX",
    "COMPANIONS",
    "EXPORT_TEMP_SUFFIX",
    "LOCK_SUFFIX",
    "RECORDING_TEMP_PREFIX",
    "SESSION_SUFFIX",
    "SIDE_FILE_THRESHOLD",
    "SQLITE_COMPANIONS",
    "STORE_DIR",
    "blob_dir",
    "decode",
    "decode_created",
    "is_index_name",
    "is_side_name",
    "is_store_name",
    "load_side_file",
    "read_metadata",
    "read_value",
    "reading_from",
    "stored_form",
    "stored_path",
    "temp_kind",
    "validate_data_name",
    "validate_session_name",
]

SESSION_SUFFIX = ".sqlite"
BLOB_SUFFIX = ".blobs"
LOCK_SUFFIX = ".lock"
#: The files SQLite keeps beside a database (a session, or a dbm.sqlite3 shelf).
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
#: The files that hold a database's data, by suffix: the ``-shm`` index is rebuilt from them.
SQLITE_DATA = ("", "-journal", "-wal")
#: Name endings of everything beside ``<name>.sqlite`` that belongs to that session.
COMPANIONS = (
    *(SESSION_SUFFIX + s for s in SQLITE_COMPANIONS),
    SESSION_SUFFIX + LOCK_SUFFIX,
    BLOB_SUFFIX,
)
#: numpy arrays of at least this many bytes are stored in a side file.
SIDE_FILE_THRESHOLD = 1 << 20
#: Dicts and lists of more arrays than this are pickled: each array in a value
#: file costs a header and its padding, so many small ones are faster pickled.
VALUE_FILE_MAX_ARRAYS = 1024
#: The name of every side file: what new_side_name makes, a uuid4 in hex.
_SIDE_NAME = re.compile(r"[0-9a-f]{32}\.(?:npy|dmv|pkl)")
#: The name ending of a side file holding a bare array: a ``.npy`` file.
ARRAY_SUFFIX = ".npy"
#: The name ending of a side file holding a table or a collection of arrays:
#: a value file (see :mod:`._sidecodec`).  Readers written before it existed
#: reject the name as no side file of theirs, never misread the file.
VALUE_SUFFIX = ".dmv"
#: The name ending of a side file holding a large pickle: the bytes the row
#: would hold, read back as a row's pickle is, in safe mode too.
PICKLE_SUFFIX = ".pkl"
#: The index of a data directory (:mod:`datamanager.index`): a name no session
#: can take, as session names never start with a dot.
INDEX_NAME = ".index.sqlite"
#: What an index build writes first and renames to INDEX_NAME when complete:
#: ``.index.sqlite.<32 hex digits>.tmp``.  One left over was interrupted.
_INDEX_TEMP = re.compile(r"\.index\.sqlite\.[0-9a-f]{32}\.tmp")
#: The content-addressed file store of a data directory (:mod:`datamanager.filestore`):
#: a folder no session can take.  The file of sha256 ``h`` is ``<h[:2]>/<h[2:]>``
#: in it; a file being stored is ``tmp-<32 hex digits>`` in it until it is whole.
STORE_DIR = ".files"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STORE_TEMP = re.compile(r"tmp-[0-9a-f]{32}")
#: The path of a session (or any file in a data directory) whose values are
#: being decoded: a value that refers to the file store finds its data
#: directory here (see :func:`reading_from`).
_READING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "datamanager_reading", default=None
)
#: The suffix of an HDF5 export being written (:mod:`datamanager.hdf5`): it is
#: ``.<file name>.<8 random characters>.part`` (from ``tempfile.mkstemp``) in
#: the folder of the file it becomes, which may be the data directory.
EXPORT_TEMP_SUFFIX = ".part"
#: The prefix of a recording file being written: ``.tmp-<8 random characters>``.
RECORDING_TEMP_PREFIX = ".tmp-"
_MKSTEMP = "[a-z0-9_]{8}"  # the random part of a tempfile.mkstemp name
_TEMP_NAMES = {
    "index": re.compile(_INDEX_TEMP.pattern + "(?:-wal|-shm|-journal)?"),
    "export": re.compile(r"\..+\." + _MKSTEMP + re.escape(EXPORT_TEMP_SUFFIX)),
    "recording": re.compile(re.escape(RECORDING_TEMP_PREFIX) + _MKSTEMP),
}
#: Metadata entry of a session migrated from a legacy shelf, written once every
#: value was read back and compared; only then does the session hide its shelf.
MIGRATION_VERIFIED = "migration_verified"
#: Metadata entry naming the legacy shelf a session was migrated from.
MIGRATED_FROM = "migrated_from"

SCHEMA = [
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
    "CREATE TABLE IF NOT EXISTS task_records (key TEXT PRIMARY KEY NOT NULL, value BLOB)",
]
UPSERT = (
    "INSERT INTO items (key, value, side, side_size) VALUES (?, ?, ?, ?) "
    # An upsert (not INSERT OR REPLACE) keeps the row id, so a key keeps its
    # place in iteration order when it is overwritten, as in a dict.
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, side = excluded.side, "
    "side_size = excluded.side_size"
)
DELETE = "DELETE FROM items WHERE key = ?"
KEYS = "SELECT key FROM items ORDER BY rowid"
COUNT = "SELECT count(*) FROM items"
HAS = "SELECT 1 FROM items WHERE key = ?"
VALUE = "SELECT value, side, side_size FROM items WHERE key = ?"
PREFIXED = "SELECT key FROM items WHERE substr(key, 1, ?) = ? ORDER BY rowid"
BATCH = (
    "SELECT rowid, key, value, side, side_size FROM items WHERE rowid > ? ORDER BY rowid LIMIT ?"
)
ROWS = "SELECT key, value, side, side_size FROM items ORDER BY rowid"
SIDES = "SELECT key, side, side_size FROM items WHERE side IS NOT NULL"
INLINE = "SELECT key, value FROM items WHERE side IS NULL"
GARBAGE = "SELECT rowid, side FROM garbage"
# Whether garbage lists a name that could be a side file (is_side_name decides):
# asked after every commit, so it must not read names it will never delete.
HAS_GARBAGE = (
    "SELECT 1 FROM garbage WHERE length(side) = 36 "
    "AND (side GLOB '[0-9a-f]*.npy' OR side GLOB '[0-9a-f]*.dmv' OR side GLOB '[0-9a-f]*.pkl') "
    "LIMIT 1"
)
DELETE_GARBAGE = "DELETE FROM garbage WHERE rowid = ?"
RECORD_UPSERT = (
    "INSERT INTO task_records (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
HAS_RECORDS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'task_records'"
RECORDS = "SELECT key, value FROM task_records ORDER BY rowid"
METADATA = "SELECT name, value FROM meta"
CREATED = "SELECT value FROM meta WHERE name = 'created'"
ADD_METADATA = "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)"
SET_METADATA = "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)"


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


def validate_data_name(name: Any) -> str:
    """Return *name* if it can name a data directory, else raise InvalidNameError.

    A data directory is ``<datapath>/<name>.data``: *name* is relative to the
    datapath and may nest it (``"test/testing"``, as Brian allowed); each of
    its parts follows the rules of a session name.
    """
    what = "DataManager name"
    if not isinstance(name, str):
        raise InvalidNameError(name, f"must be a str, not {type(name).__name__}", what)
    if not name:
        raise InvalidNameError(name, "must not be empty (it would write a hidden '.data')", what)
    if name.endswith(".data"):
        raise InvalidNameError(name, "must not end with '.data', which is added to it", what)
    if os.path.isabs(name) or name.startswith("~"):
        # Either would silently not be inside the datapath it is joined to.
        raise InvalidNameError(name, "must be relative to the datapath ('/' or '~' first)", what)
    for part in name.split("/"):
        try:
            validate_session_name(part)
        except InvalidNameError as exc:
            raise InvalidNameError(name, f"its part {part!r} {exc.reason}", what) from None
    return name


def new_index_temp_name() -> str:
    """A fresh name for an index being built (see :data:`INDEX_NAME`)."""
    return f"{INDEX_NAME}.{uuid.uuid4().hex}.tmp"


def is_index_name(name: str) -> bool:
    """Whether *name* (in a data directory) is its index, or an index being built."""
    return name == INDEX_NAME or _INDEX_TEMP.fullmatch(name) is not None


def is_store_name(name: str) -> bool:
    """Whether *name* (in a data directory) is its file store."""
    return name == STORE_DIR


def is_sha256(text: Any) -> bool:
    """Whether *text* is a sha256 as the file store names its files: 64 lowercase hex digits."""
    return type(text) is str and _SHA256.fullmatch(text) is not None


def stored_path(basepath: str, sha256: str) -> str:
    """The path in the data directory *basepath* of the stored file of content *sha256*."""
    return os.path.join(basepath, STORE_DIR, sha256[:2], sha256[2:])


def new_store_temp_name() -> str:
    """A fresh name, in the file store, for a file being stored."""
    return f"tmp-{uuid.uuid4().hex}"


def is_store_temp_name(name: str) -> bool:
    """Whether *name* (in the file store) is a file being stored, or one left by a killed store."""
    return _STORE_TEMP.fullmatch(name) is not None


def is_stored_name(folder: str, name: str) -> bool:
    """Whether ``<folder>/<name>`` (in the file store) names a stored file."""
    return len(folder) == 2 and is_sha256(folder + name)


def reading_from() -> str | None:
    """The data directory whose values are being decoded in this context, or None.

    :func:`decode` sets it around each unpickling, so that a value naming a
    file of the store (a :class:`~datamanager.filestore.StoredFile`) finds the
    store of the directory it was read from, wherever that directory now is.
    """
    path = _READING.get()
    return None if path is None else os.path.dirname(os.path.abspath(path))


def set_reading(path: str) -> contextvars.Token[str | None]:
    """Let values decoded from now on find their store beside *path*; reset with the token."""
    return _READING.set(path)


def reset_reading(token: contextvars.Token[str | None]) -> None:
    """Undo :func:`set_reading`."""
    _READING.reset(token)


def temp_kind(name: str) -> str | None:
    """What file the library was writing under the temporary name *name*, or None.

    ``'index'`` for an index being built (or one of its SQLite files),
    ``'export'`` for an HDF5 export, ``'recording'`` for a recording file:
    names the library gives a file it renames once whole, so that one found
    long after its writer stopped was interrupted.
    """
    for kind, pattern in _TEMP_NAMES.items():
        if pattern.fullmatch(name):
            return kind
    return None


def blob_dir(path: str) -> str:
    """Return the side-file folder of the session stored at *path*."""
    return path[: -len(SESSION_SUFFIX)] + BLOB_SUFFIX


def session_files(path: str) -> list[str]:
    """The files of the session at *path* that SQLite reads, the database last.

    Removing them in this order leaves no companion without its database: a
    stale ``-wal`` or ``-journal`` would be replayed into the next session of
    that name.
    """
    return [path + suffix for suffix in SQLITE_COMPANIONS] + [path]


# -- values and rows --


def is_side_array(value: Any) -> bool:
    """Whether *value* is a bare array stored in a ``.npy`` side file rather than in its row."""
    return (
        type(value) is np.ndarray
        and value.nbytes >= SIDE_FILE_THRESHOLD
        and not value.dtype.hasobject
    )


class SideValue(NamedTuple):
    """A value to be stored in a side file, and how."""

    suffix: str  #: :data:`ARRAY_SUFFIX` or :data:`VALUE_SUFFIX`
    content: Any  #: the array, or the description and arrays of a value file
    nbytes: int  #: about the bytes it takes on disk


def side_value(value: Any) -> SideValue | None:
    """How *value* is stored without pickle, or None if it is pickled into its row.

    A large bare array goes to a ``.npy`` file; a pandas DataFrame or
    Series (of any size: pickled, safe mode could not read it) and a dict or
    list of at most :data:`VALUE_FILE_MAX_ARRAYS` arrays of together at least
    :data:`SIDE_FILE_THRESHOLD` bytes go to a value file, if the encoding can
    hold them exactly: in a side file, or in its row if small (see
    :func:`stored_form`).
    """
    kind = type(value)
    if kind is np.ndarray:
        return SideValue(ARRAY_SUFFIX, value, value.nbytes) if is_side_array(value) else None
    if kind is dict or kind is list:
        arrays = value.values() if kind is dict else value
        if len(value) > VALUE_FILE_MAX_ARRAYS or not all(type(a) is np.ndarray for a in arrays):
            return None
        if sum(a.nbytes for a in arrays) < SIDE_FILE_THRESHOLD:
            return None  # a small one is faster in its row, and safe mode reads it there
    elif _sidecodec.pandas_kind(value) is None:
        return None
    encoded = _sidecodec.encodable(value)
    if encoded is None:
        return None
    return SideValue(VALUE_SUFFIX, encoded, sum(a.nbytes for a in encoded[1]))


Row = tuple[str, bytes, None, None]


def stored_form(key: str, value: Any) -> tuple[Row | None, SideValue | None]:
    """``(row, None)`` for a value stored in its ``items`` row, ``(None, side)`` for a side file.

    A row holds a pickle, or a small table's value file: a side file each
    would cost a file per value and take several times longer to write and
    read than the row.
    """
    side = side_value(value)
    if side is None:
        row = inline_row(key, value)
        side = large_pickle(row)
        return (row, None) if side is None else (None, side)
    if side.suffix == VALUE_SUFFIX and side.nbytes < SIDE_FILE_THRESHOLD:
        return (key, _sidecodec.to_bytes(*side.content), None, None), None
    return None, side


def holds_value_file(data: Any) -> bool:
    """Whether the stored row value *data* is a small value file, not a pickle."""
    return _sidecodec.is_value_bytes(data)


def inline_row(key: str, value: Any) -> Row:
    """The ``items`` row of a value stored inline, pickled."""
    return (key, safepickle.dumps(key, value), None, None)


def large_pickle(row: Row) -> SideValue | None:
    """The side file of an inline *row* whose pickle is too large for SQLite, or None.

    SQLite copies a large blob several times on its way to the file; a side
    file takes it in one write.
    """
    data = row[1]
    return SideValue(PICKLE_SUFFIX, data, len(data)) if len(data) >= SIDE_FILE_THRESHOLD else None


def record_row(key: str, value: Any) -> tuple[str, bytes]:
    """The ``task_records`` row of a record, pickled."""
    return (key, safepickle.dumps(key, value))


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays hold equal items in the same shape, NaN equal to NaN.

    Object arrays (tables mixing text and numbers) are compared cell by cell,
    where a NaN cell must still equal a NaN cell.
    """
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "O" or b.dtype.kind == "O":
        for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
            both_nan = isinstance(x, float) and isinstance(y, float) and x != x and y != y
            if not both_nan and not bool(x == y):
                return False
        return True
    nan = a.dtype.kind in "fc" and b.dtype.kind in "fc"
    return bool(np.array_equal(a, b, equal_nan=nan))


def new_side_name(suffix: str = ARRAY_SUFFIX) -> str:
    """A fresh side-file name ending in *suffix*, unique without asking the disk."""
    return uuid.uuid4().hex + suffix


def save_side(path: str, side: SideValue) -> int:
    """Write *side* to the new side file *path*; return its size in bytes."""
    with open(path, "xb") as f:
        if side.suffix == ARRAY_SUFFIX:
            np.save(f, side.content, allow_pickle=False)
        elif side.suffix == PICKLE_SUFFIX:
            f.write(side.content)
        else:
            _sidecodec.write_value_file(f, *side.content)
        return f.tell()


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


class WrongSize(ValueError):
    """A side file is not as long as its row, or its header, says."""


def check_side_file(f: Any, expected_size: int | None) -> NpyHeader | dict[str, Any] | None:
    """Read the header of the open side file *f*, checking that it describes the file.

    A ``.npy`` file's header, or a value file's description, as its name
    (``f.name``) says; None for a pickle, which has no header: its bytes are
    checked by unpickling them.

    Raises
    ------
    WrongSize
        If the file's size is not *expected_size* or not what its header describes.
    ValueError
        If the header is damaged (see :func:`read_npy_header`).
    """
    size = os.fstat(f.fileno()).st_size
    if expected_size is not None and size != expected_size:
        raise WrongSize(f"{size} bytes, expected {expected_size}")
    if str(f.name).endswith(VALUE_SUFFIX):
        return _sidecodec.describe(f, size)
    if str(f.name).endswith(PICKLE_SUFFIX):
        return None
    header = read_npy_header(f)
    if header.size != size:
        raise WrongSize(f"{size} bytes, but its header describes {header.size}")
    return header


#: The type a value file's kind stands for, as the index names types.
_VALUE_TYPES = {
    "DataFrame": "pandas.DataFrame",
    "Series": "pandas.Series",
    "dict": "dict",
    "list": "list",
}


def value_file_type(value: Any) -> str | None:
    """The type name the index gives *value*, read from a value file."""
    return _VALUE_TYPES.get(type(value).__name__)


def describe_side_file(f: Any) -> tuple[str | None, str | None, tuple[int, ...] | None]:
    """``(type name, dtype, shape)`` of the value in the open side file *f*.

    An array's dtype and shape come from its header; a value file gives its
    type only.

    Raises
    ------
    ValueError
        If the header or description is damaged.
    """
    if str(f.name).endswith(VALUE_SUFFIX):
        description = _sidecodec.describe(f, os.fstat(f.fileno()).st_size)
        return _VALUE_TYPES.get(description.get("kind")), None, None
    header = read_npy_header(f)
    return "numpy.ndarray", header.dtype.str, header.shape


def load_side_file(
    path: str,
    expected_size: int | None,
    session_path: str,
    key: str,
    session: str = "",
    safe: bool = False,
) -> Any:
    """Load side file *path* of key *key*, checking it is whole and its header describes it.

    Its damage is reported as a :class:`CorruptSessionError` of the session at
    *session_path* (named *session*), which owns the file.  A pickle is read
    in safe mode if *safe*.
    """
    if path.endswith(PICKLE_SUFFIX):
        data = side_pickle(path, expected_size, session_path, key)
        return decode(data, session_path, session, key, safe)
    with open(path, "rb") as f:
        try:
            header = check_side_file(f, expected_size)
            if isinstance(header, dict):  # a value file, described
                return _sidecodec.read_value(f, header)
            assert header is not None
            return read_npy_data(f, header)
        except ValueError as exc:
            raise CorruptSessionError(session_path, f"side file {path}: {exc}", key) from exc


def side_pickle(path: str, expected_size: int | None, session_path: str, key: str) -> bytes:
    """The bytes of the pickle side file *path* of key *key*, checked against its row's size."""
    with open(path, "rb") as f:
        data = f.read()
    if expected_size is not None and len(data) != expected_size:
        why = f"side file {path}: {len(data)} bytes, expected {expected_size}"
        raise CorruptSessionError(session_path, why, key)
    return data


def row_value(path: str, session: str, key: str, row: tuple[Any, Any, Any], safe: bool) -> Any:
    """The value of the row ``(value, side, side_size)`` of key *key*.

    Raises FileNotFoundError for a side file that is gone: a writer may have
    replaced the value and removed its old side file since the row was read.
    """
    data, side, side_size = row
    if side is None:
        return decode(data, path, session, key, safe)
    return load_side_file(side_path(path, side, key), side_size, path, key, session, safe)


def read_value(conn: sqlite3.Connection, path: str, session: str, key: str, safe: bool) -> Any:
    """Read one value from an open session connection (writer or reader)."""
    for _attempt in range(5):
        row = conn.execute(VALUE, (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        try:
            return row_value(path, session, key, row, safe)
        except FileNotFoundError:
            continue  # replaced meanwhile: read the row again
    raise CorruptSessionError(path, f"side file {row[1]} is missing", key)


def decode(data: bytes, path: str, session: str, key: str, safe: bool) -> Any:
    """Decode one value stored in its row, turning damaged bytes into CorruptSessionError.

    The row holds a small value file (read as a side file is, in either
    mode: it runs no pickle) or a pickle.

    Unpickling damaged bytes can raise almost any exception type (and in
    unsafe mode so can the code a pickle runs): each becomes a
    CorruptSessionError naming the key and the original error.  A
    MemoryError does only when the pickle is malformed (a damaged length or
    memo index asks for absurd sizes); from a well-formed pickle it means
    the value does not fit in the memory left, and stays a MemoryError.
    """
    if holds_value_file(data):
        try:
            return _sidecodec.from_bytes(data)
        except ValueError as exc:
            raise CorruptSessionError(path, f"value file in its row: {exc}", key) from exc
    token = _READING.set(path)
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
    finally:
        _READING.reset(token)


# -- metadata --


def metadata_rows(entries: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``meta`` rows of metadata *entries* (JSON-able values)."""
    return [(str(k), json.dumps(v)) for k, v in entries.items()]


def read_metadata(conn: sqlite3.Connection, path: str) -> dict[str, Any]:
    """Return the metadata table of an open session connection as a dict."""
    return {name: decode_metadata(name, value, path) for name, value in conn.execute(METADATA)}


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
