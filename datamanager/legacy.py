"""Legacy shelves: reading Brian's ``shelve`` sessions, and migrating them.

Brian's DataManager stored sessions with stdlib ``shelve``: on a Python
without gdbm a ``dbm.dumb`` triplet ``<name>.dat/.dir/.bak``, with gdbm or
ndbm one file (``.db`` or ``.pag/.dir``), and since Python 3.13 one SQLite
file (``dbm.sqlite3``).  A data directory may hold them beside native
sessions; :func:`find_sessions` lists both.  A shelf and a native session of
the same name are *twins*: the native one replaces the shelf only once
:func:`migrate` recorded a verified copy (see :func:`twin_state`).
"""

from __future__ import annotations

import dbm
import os
import pickle
import shutil
import sqlite3
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import _bdbhash
from . import _format as fmt
from ._descriptors import check_descriptors
from ._format import MIGRATED_FROM, MIGRATION_VERIFIED, SESSION_SUFFIX, SQLITE_COMPANIONS
from ._gdbmfile import GdbmFile, is_gdbm
from .errors import CorruptSessionError, DataManagerError, warn_caller
from .readers import (
    Listing,
    NativeReader,
    SessionEntry,
    SessionReader,
    list_directory,
    sqlite_uri,
)
from .safepickle import py2_text
from .session import Session

if TYPE_CHECKING:
    from .manager import DataManager

__all__ = [
    "ShelfReader",
    "check_not_hiding",
    "find_sessions",
    "migrate",
    "migrated_shelves",
    "twin_state",
]

# Suffixes of the files stdlib dbm modules make for one shelf.
_DBM_SUFFIXES = (".dat", ".dir", ".bak", ".pag", ".db")
_SQLITE_HEADER = b"SQLite format 3\x00"


def find_sessions(
    basepath: str, warn: bool = True, listing: Listing | None = None
) -> list[SessionEntry]:
    """List the sessions stored in *basepath*, native ones first, by name.

    *listing* is a listing of *basepath* already made (see :func:`list_directory`).

    Files that belong to no session are skipped with one
    :class:`~datamanager.errors.DataManagerWarning` each.  A legacy shelf whose
    name also has a native session is left out only if that twin records a
    verified migration (see :func:`twin_state`); otherwise the shelf is read,
    with one warning, and the twin too unless an interrupted ``migrate()``
    left it (it then holds nothing the shelf does not).
    """
    if listing is None:
        listing = list_directory(basepath)
    native = {entry.name for entry in listing.native}
    entries, stray = list(listing.native), listing.stray
    incomplete: set[str] = set()
    for stem, files in sorted(_shelf_files(listing).items()):
        path = os.path.join(basepath, stem)
        state, problem = _twin_state(path) if stem in native else ("", None)
        if state == "verified":
            continue  # migrated: the native session replaces it
        if _is_shelf(path):
            entries.append(SessionEntry(stem, path, ShelfReader, twin_problem=problem))
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


def _shelf_files(listing: Listing) -> dict[str, list[str]]:
    """The names of *listing* that no native session owns, by the shelf they would make up."""
    shelves: dict[str, list[str]] = {}
    for name in listing.other:
        stem, ext = os.path.splitext(name)
        # The -wal or -shm file of a dbm.sqlite3 shelf belongs to that shelf.
        owners = [name[: -len(s)] for s in SQLITE_COMPANIONS if name.endswith(s)]
        owner = next((o for o in owners if o in listing.other), None)
        shelves.setdefault(owner or (stem if ext in _DBM_SUFFIXES else name), []).append(name)
    return shelves


def migrated_shelves(basepath: str) -> list[tuple[str, float, list[str]]]:
    """The legacy shelves of *basepath* that a verified migration replaces.

    Returns ``(shelf path, time of the verification, paths of its files)``
    for each shelf whose native twin records a verified migration (see
    :func:`twin_state`), by name; ``migrate()`` recorded that time once every
    value was read back and compared.
    """
    listing = list_directory(basepath)
    native = {entry.name for entry in listing.native}
    found = []
    for stem, names in sorted(_shelf_files(listing).items()):
        path = os.path.join(basepath, stem)
        if stem not in native or not _is_shelf(path):
            continue
        when = _verified_at(path)
        if when is not None:
            found.append((path, when, sorted(os.path.join(basepath, n) for n in names)))
    return found


def _verified_at(shelf: str) -> float | None:
    """When the native twin of *shelf* recorded its verified migration, or None."""
    name = os.path.basename(shelf)
    try:
        with SessionEntry(name, shelf + SESSION_SUFFIX).open(safe=True) as reader:
            metadata = reader.metadata
            state = twin_state(metadata, reader.keys(), lambda: _shelf_keys(name, shelf))
    except (OSError, ValueError):  # CorruptSessionError, or a damaged metadata cell
        return None
    when = metadata.get(MIGRATION_VERIFIED)
    return float(when) if state == "verified" and type(when) in (int, float) else None


def _is_shelf(path: str) -> bool:
    """Whether *path* is a shelf: dbm this Python knows, dbm.sqlite3, Berkeley DB or GNU dbm."""
    try:
        return bool(
            dbm.whichdb(path) or _is_sqlite(path) or _bdbhash.locate(path) or is_gdbm(path)
        )
    except OSError:
        return False


def _is_sqlite(path: str) -> bool:
    """Whether *path* is an SQLite file: a ``dbm.sqlite3`` shelf (Python >= 3.13)."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == _SQLITE_HEADER
    except (IsADirectoryError, FileNotFoundError):
        return False


# -- twins --


def check_not_hiding(basepath: str, name: str) -> None:
    """Refuse to write session *name* while a legacy shelf of that name is not migrated.

    Called where a named session is made for writing: its first write would
    make it the shelf's twin, holding data of its own, which no migration
    of the shelf could ever replace (both stay, read side by side).  Migrating
    on the spot instead could copy a shelf another process (Brian itself)
    is still writing, and the copy, once verified, would hide its later
    values.  A few ``stat`` calls, whatever the size of the directory.

    Raises
    ------
    DataManagerError
        If *basepath* holds a shelf *name* without a verified migration.
    """
    shelf = os.path.join(basepath, name)
    if not _is_shelf(shelf):
        return
    if os.path.exists(shelf + SESSION_SUFFIX) and _twin_state(shelf)[0] == "verified":
        return
    raise DataManagerError(
        f"session {name!r} would share its name with legacy shelf {shelf}, which is not "
        "migrated: run migrate() first (it keeps every value of the shelf), or rename "
        "the shelf's files"
    )


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
    if not keys or (MIGRATED_FROM in metadata and set(keys) <= set(shelf_keys())):
        return "incomplete"
    return "other"


_TWIN_PROBLEMS = {
    "incomplete": "incomplete migration of legacy shelf {shelf} (migrate() was interrupted, "
    "or is still running): collation reads the shelf meanwhile; run migrate() again",
    "other": "shares its name with legacy shelf {shelf} but holds data of its own: both "
    "are read, the shelf as '<name> (legacy shelf)'; rename the shelf's files to tell them apart",
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
        with ShelfReader(SessionEntry(name, path, ShelfReader), safe=True) as shelf:
            return shelf.keys()
    except CorruptSessionError:
        return []  # reported where the shelf itself is read


# -- reading --


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
        uri = sqlite_uri(path, f"mode={mode}")
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

    Values are read as raw bytes through ``dbm`` (flag ``'r'``),
    :class:`_SqliteShelf` or :class:`~datamanager._gdbmfile.GdbmFile`, and
    unpickled here, so safe mode applies to them too.  Its creation time is
    its files' mtime.
    """

    def __init__(self, entry: SessionEntry, safe: bool = False) -> None:
        super().__init__(entry, safe)
        self._db: Any = None
        try:
            if _is_sqlite(self.path):
                self._db = _SqliteShelf(self.path)
            elif bdb := _bdbhash.locate(self.path):  # read alike with or without libdb
                self._db = _bdbhash.BdbHash(bdb)
            elif is_gdbm(self.path):  # read by us, with or without dbm.gnu
                self._db = GdbmFile(self.path)
            else:
                self._db = dbm.open(self.path, "r")  # noqa: SIM115 - closed by close()
        except Exception as exc:  # dbm.dumb raises SyntaxError/ValueError on a bad index
            check_descriptors(self.path)
            raise CorruptSessionError(self.path, f"unreadable legacy shelf ({exc})") from exc
        candidates = [self.path + s for s in ("", *_DBM_SUFFIXES)]
        self._files = [f for f in candidates if os.path.isfile(f)]
        self.created = min(os.path.getmtime(f) for f in self._files)
        self._index = _key_names(self._db.keys())

    @property
    def metadata(self) -> dict[str, Any]:
        return {"created": self.created, "legacy": "shelve", "files": self._files}

    def keys(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def _value(self, key: str) -> Any:
        return fmt.decode(self._raw(key), self.path, self.name, key, self.safe)

    def _raw(self, key: str) -> bytes:
        stored = self._index[key]  # a key the shelf never had
        try:
            return self._db[stored]
        except KeyError:  # deleted by a writer since we opened, as in a session
            raise KeyError(key) from None
        except Exception as exc:
            raise CorruptSessionError(self.path, f"cannot read the value ({exc})", key) from exc

    def raw_values(self) -> Iterator[tuple[str, bytes]]:
        for key in self._index:
            yield key, self._raw(key)

    @property
    def nbytes(self) -> int:
        return sum(os.path.getsize(f) for f in self._files)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _key_names(stored: list[bytes]) -> dict[str, bytes]:
    """Name each stored key by :func:`~datamanager.safepickle.py2_text`, as values are decoded.

    A key that is not UTF-8 and whose latin-1 reading is another key's UTF-8
    one keeps surrogate escapes instead, so that no key hides another.
    """
    escaped = {k.decode("utf-8", "surrogateescape"): k for k in stored}
    names = {}
    for name, key in escaped.items():
        text = py2_text(key)
        names[text if text == name or text not in escaped else name] = key
    return names


# -- migration --


def migrate(dm: DataManager, entries: list[SessionEntry]) -> list[str]:
    """Convert every legacy shelf of *entries* into a native session of *dm*.

    The session has the shelf's name.

    Each value is copied in one transaction, then the new session is read
    back and compared with the shelf value by value; only then does a last
    commit record the migration as verified (metadata ``migration_verified``,
    beside ``migrated_from``).  Collation reads the native session and
    ignores the shelf once, and only once, that record exists: a migration
    killed at any point leaves the shelf in use, with a warning that names
    the incomplete native session, which :meth:`DataManager.verify` reports
    too and the next ``migrate()`` replaces.  A native session of a shelf's
    name that holds data of its own (Brian named computer sessions as this
    library does) is left alone, and so is that shelf.  The shelf files are
    never deleted or changed.

    Returns
    -------
    list of str
        The names of the sessions migrated.

    Raises
    ------
    DataManagerError
        If a value read back differs from the original; the partial native
        session is removed and the shelf stays in use.
    CorruptSessionError
        If a native session of a shelf's name is damaged beyond what SQLite
        recovers: it is left in place for the user to move away.
    """
    migrated = []
    for entry in entries:
        if not entry.legacy:
            continue
        with entry.open(dm.safe) as shelf:
            # The shelf's own name: the session that replaces it, which
            # dm.session() refuses to make while the shelf is not migrated.
            path = dm.session_filename(entry.name)
            if entry.twin_problem and not _discard_incomplete(
                Session(path, dm.journal_mode), shelf
            ):
                continue  # verified after all, or a session of its own
            # A closed session stays closed: each step opens its own.
            target = Session(path, dm.journal_mode)
            try:
                with target.transaction():
                    for key, value in shelf.items():
                        target[key] = value
                    target.update_metadata({"created": shelf.created, MIGRATED_FROM: entry.path})
                target.close()
                _compare(shelf, target.path, dm.safe)
                target = Session(path, dm.journal_mode)
                target.update_metadata({MIGRATION_VERIFIED: time.time()})
            except BaseException:
                target.close()
                _remove_session(target.path)
                raise
            target.close()
        migrated.append(entry.name)
    return migrated


def _discard_incomplete(twin: Session, shelf: SessionReader) -> bool:
    """Remove *twin* if an interrupted migration of *shelf* left it; say whether it did.

    Opened as a writer, which recovers what a killed transaction left (a hot
    journal stops a read-only reader), so the answer is sure.  A verified
    twin, or one holding data of its own, stays.
    """
    try:
        with twin:
            state = twin_state(twin.metadata, list(twin), shelf.keys)
    except (CorruptSessionError, sqlite3.DatabaseError, ValueError) as exc:
        raise CorruptSessionError(
            twin.path,
            f"cannot tell whether it is a migration of {shelf.path} "
            f"({getattr(exc, 'reason', exc)}); move it away and run migrate() again",
        ) from exc
    if state != "incomplete":
        return False
    _remove_session(twin.path)
    return True


def _compare(shelf: SessionReader, path: str, safe: bool) -> None:
    with NativeReader(SessionEntry(shelf.name, path), safe) as copy:
        if sorted(copy.keys()) != sorted(shelf.keys()):
            raise DataManagerError(f"migration of {shelf.path}: keys differ after copying")
        for key in shelf.keys():  # noqa: SIM118 - a reader is not a Mapping
            if not _same(shelf[key], copy[key]):
                raise DataManagerError(
                    f"migration of {shelf.path}: key {key!r} differs after copying"
                )


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and fmt.same_array(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return pickle.dumps(a, 5) == pickle.dumps(b, 5)
    except Exception:
        return bool(a == b)


def _remove_session(path: str) -> None:
    # The side files go first and the database last (see session_files), so
    # that a kill part way leaves no companion without it: a lone side
    # folder would be a stray.
    shutil.rmtree(fmt.blob_dir(path), ignore_errors=True)
    for name in fmt.session_files(path):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
