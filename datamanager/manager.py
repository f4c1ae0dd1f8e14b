"""DataManager: a data directory, its sessions, and collation across them.

The names and meanings of the methods follow Brian's
``brian.tools.datamanager.DataManager``, so scripts written for it run
unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from ._descriptors import reader_budget
from ._format import SESSION_SUFFIX, validate_data_name, validate_session_name
from .errors import CorruptSessionError, warn_caller
from .filestore import StoredFile, store_file, stored_in
from .filesystem import check_journal_mode
from .index import IndexSummary, IndexView, build_index, index_tables, open_view
from .legacy import check_not_hiding, find_sessions, migrate
from .locking import LockingSession
from .provenance import computer_name
from .prune import prune
from .readers import (
    Listing,
    Match,
    SessionEntry,
    SessionReader,
    check_match,
    key_test,
    list_directory,
)
from .session import Session, _check_key
from .verify import Problem, verify

if TYPE_CHECKING:
    import pandas

    from .hdf5 import ExportReport
    from .importer import ImportSummary

__all__ = ["DataManager", "IndexSummary", "Problem"]

T = TypeVar("T")
A = TypeVar("A")
S = TypeVar("S", bound=Session)
_MISSING = object()
#: Readers iter_sessions keeps open at most, however many descriptors are free.
_MAX_OPEN = 256


class DataManager:
    """Results of many simulation runs, written by many processes at once.

    Parameters
    ----------
    name : str
        Name of the data set; the data directory is ``<datapath>/<name>.data``
        (``name`` may contain ``/`` to nest it).  It is created on first write.
        Each part of it is checked as a session name is; it must not be empty,
        end with ``.data``, or start with ``/`` or ``~``
        (:class:`~datamanager.errors.InvalidNameError`, a ``ValueError``).
    datapath : str, optional
        Folder holding the data directory (default: the working directory).
        Reading from a datapath that does not exist raises FileNotFoundError
        (a typo must not look like an empty data set); a data directory not
        written yet reads as empty.
    safe : bool, optional
        If true, collation refuses to unpickle anything but builtin values and
        numpy arrays/scalars, so no code stored in the directory can run.
    journal_mode : {'wal', 'delete'}, optional
        Force SQLite's journal mode; by default WAL on local disks and a
        rollback journal on network filesystems.  Any other value raises
        ``ValueError`` at once.

    Examples
    --------
    >>> import tempfile
    >>> dm = DataManager("sweep", tempfile.mkdtemp())
    >>> with dm.session() as s:
    ...     s["rates"] = [1.0, 2.0]
    >>> with dm.session() as s:
    ...     s["rates"] = [3.0]
    >>> dm.get_merged("rates")
    [1.0, 2.0, 3.0]
    """

    def __init__(
        self, name: str, datapath: str = "", *, safe: bool = False, journal_mode: str | None = None
    ) -> None:
        self.name = validate_data_name(name)
        check_journal_mode(journal_mode)
        self.datapath = os.fspath(datapath)
        self.basepath = os.path.join(self.datapath, name + ".data")
        self.safe = safe
        self.journal_mode = journal_mode
        self.computer_name = computer_name()
        self.computer_session_filename = self.session_filename(self.computer_name)
        # The folder whose absence makes reading an error rather than empty.
        self._needed = self.datapath or os.curdir

    @classmethod
    def from_path(cls, basepath: str, **kwargs: Any) -> DataManager:
        """Return the DataManager of an existing ``<name>.data`` directory.

        Reading raises FileNotFoundError while *basepath* does not exist (a
        typo'd path is not an empty data set); writing creates it.
        """
        basepath = os.path.normpath(os.fspath(basepath))
        head, tail = os.path.split(basepath)
        if not tail.endswith(".data"):
            raise ValueError(f"a data directory's name ends with '.data': {basepath!r}")
        dm = cls(tail[: -len(".data")], head, **kwargs)
        dm._needed = dm.basepath
        return dm

    def __repr__(self) -> str:
        return f"DataManager({self.name!r}, {self.datapath!r})"

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)  # only configuration: paths and flags

    # -- sessions (the write side) --

    def session_name(self) -> str:
        """Return a new unique session name, ``<user>.<host>.<uuid4>``."""
        return f"{self.computer_name}.{self.make_unique_key()}"

    def session_filename(self, session_name: str | None = None) -> str:
        """Return the file of session *session_name* (a new unique one if omitted)."""
        name = self.session_name() if session_name is None else session_name
        validate_session_name(name)
        return os.path.join(self.basepath, name + SESSION_SUFFIX)

    def make_unique_key(self) -> str:
        """Return a new uuid4 string, e.g. for keys that must not collide."""
        return str(uuid.uuid4())

    def session(self, session_name: str | None = None) -> Session:
        """Return a new, uniquely named session (or the session *session_name*).

        A name that a legacy shelf of the directory still holds is refused
        until :meth:`migrate` has copied the shelf (see
        :func:`.legacy.check_not_hiding`): Brian named its shelves as
        :meth:`computer_session` does, and collation would mix them up.
        """
        return self._named(Session, session_name)

    def store_file(self, path: str | os.PathLike) -> StoredFile:
        """Store the file at *path* in the data directory, once by content.

        Store the returned value under a key (``s[key] = dm.store_file(p)``),
        alone or inside a list, tuple or dict; it reads back as a
        :class:`~datamanager.StoredFile` whose path is the stored copy,
        whatever happens to the original.  Content stored already is not
        written again; many processes may store at once.  See :doc:`/files`.

        Parameters
        ----------
        path : str or os.PathLike
            The file to store.

        Returns
        -------
        StoredFile
            Its name, size, sha256, original path and the stored copy's path.

        Raises
        ------
        OSError
            If the file cannot be read or the data directory written.

        Examples
        --------
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with open(os.path.join(folder, "net.param"), "w") as f:
        ...     _ = f.write("N = 100\\n")
        >>> dm = DataManager("sweep", folder)
        >>> f = dm.store_file(os.path.join(folder, "net.param"))
        >>> f.name, f.size, f == dm.store_file(os.path.join(folder, "net.param"))
        ('net.param', 8, True)
        """
        return store_file(self.basepath, path)

    def files(self, strict: bool = False) -> pandas.DataFrame:
        """Every stored file the values and task records refer to, as a DataFrame.

        One row per reference: ``session``, ``key`` (of the value, or of the
        task record), ``item`` (the item key, for a file an item of
        :func:`~datamanager.tasks.run_tasks` refers to), ``name`` and
        ``original`` (where it was stored from), ``sha256``, ``size``, and
        ``path`` (the stored copy).  Files inside lists, tuples, dicts and
        sets are found; sessions sort as in :meth:`iter_sessions`.
        """
        import pandas

        columns = ["session", "key", "item", "name", "original", "sha256", "size", "path"]
        rows = [
            {"session": name, **row}
            for name, found in self._collect(stored_in, strict)
            for row in found
        ]
        return pandas.DataFrame(rows, columns=columns)

    def computer_session(self) -> Session:
        """Return the session named after this user and computer (see :meth:`session`)."""
        return self._named(Session, self.computer_name)

    def locking_session(self, session_name: str | None = None) -> LockingSession:
        """Return a :class:`LockingSession` (a new unique one if no name is given)."""
        return self._named(LockingSession, session_name)

    def locking_computer_session(self) -> LockingSession:
        """Return the :class:`LockingSession` named after this user and computer."""
        return self._named(LockingSession, self.computer_name)

    def _named(self, kind: type[S], session_name: str | None) -> S:
        path = self.session_filename(session_name)
        if session_name is not None:  # a new unique name is no shelf's
            check_not_hiding(self.basepath, session_name)
        return kind(path, self.journal_mode)

    # -- finding and opening sessions (the read side) --

    def _entries(self, warn: bool = True, listing: Listing | None = None) -> list[SessionEntry]:
        """The sessions of the data directory; FileNotFoundError where it cannot exist."""
        entries = find_sessions(self.basepath, warn, listing)
        if not entries and not os.path.isdir(self._needed):
            what = (
                "no such data directory"
                if self._needed == self.basepath
                else f"no such folder to hold {self.name}.data"
            )
            raise FileNotFoundError(errno.ENOENT, what, self._needed)
        return entries

    def _skip(
        self, entry: SessionEntry | SessionReader, exc: CorruptSessionError, strict: bool
    ) -> None:
        if strict:
            raise exc
        # The reason alone: str(exc) would name the session a second time.
        where = f" (key {exc.key!r})" if exc.key is not None else ""
        warn_caller(f"skipping corrupt session {entry.path}{where}: {exc.reason}")

    def _open(
        self, entry: SessionEntry, strict: bool, index: IndexView | None = None, kept: bool = False
    ) -> SessionReader | None:
        """Open *entry*, through *index* if it serves it; None for a corrupt session skipped.

        *kept*: the reader is kept to be read later (see :meth:`.IndexView.reader`).
        """
        try:
            reader = index.reader(entry, self.safe, kept) if index is not None else None
            return reader if reader is not None else entry.open(self.safe)
        except CorruptSessionError as exc:
            self._skip(entry, exc, strict)
            return None

    @contextlib.contextmanager
    def _sources(self) -> Iterator[tuple[list[SessionEntry], IndexView | None]]:
        """The sessions, and the directory's index where there is one to serve them."""
        listing = list_directory(self.basepath)
        entries = self._entries(listing=listing)
        index = open_view(self.basepath, entries, listing.names)
        try:
            yield entries, index
        finally:
            if index is not None:
                index.close()

    def _collect(
        self,
        read: Callable[[SessionReader], T],
        strict: bool,
        holding: Callable[[IndexView], set[str]] | None = None,
    ) -> list[tuple[str, T]]:
        """``(name, read(reader))`` for every session, each opened once, in creation order.

        Sessions sort by creation time, ties by name (see :meth:`iter_sessions`).
        With *holding*, sessions the index serves are read only if they are
        among ``holding(index)``: the others hold nothing *read* looks for.
        """
        found = []
        passed = set()  # native sessions not read: they hold nothing asked for
        with self._sources() as (entries, index):
            wanted = holding(index) if index is not None and holding is not None else None
            for entry in entries:
                # A shelf shares its name with its native twin, which the
                # index may serve: only the native entry may be passed.
                if (
                    wanted is not None
                    and not entry.legacy
                    and entry.name not in wanted
                    and entry.name in index.served
                ):
                    passed.add(entry.name)
                    continue
                reader = self._open(entry, strict, index)
                if reader is None:
                    continue
                with reader:
                    try:
                        found.append(((reader.created, entry.name), read(reader), entry.legacy))
                    except CorruptSessionError as exc:
                        self._skip(entry, exc, strict)
        # A shelf read beside a native session of its name (one written by
        # an older version) is labelled apart, so that get() keeps both
        # values of a key the two hold.
        native = passed | {order[1] for order, _, legacy in found if not legacy}
        labelled = [
            ((created, f"{name} (legacy shelf)" if legacy and name in native else name), result)
            for (created, name), result, legacy in found
        ]
        labelled.sort(key=lambda t: t[0])
        return [(order[1], result) for order, result in labelled]

    def iter_sessions(self, strict: bool = False) -> Iterator[SessionReader]:
        """Yield a read-only reader for each session, in creation order.

        Each reader is closed when the next one is taken (or at the end), so
        ``[dict(r.items()) for r in dm.iter_sessions()]`` leaves nothing open;
        a reader kept after breaking out of the loop is the caller's to close
        (or use it as a context manager).  Sessions that cannot be read are
        skipped with a warning, or raise with ``strict=True``.  A process out
        of file descriptors gets ``OSError(EMFILE)``, never a skipped session.
        Sessions sort by creation time, ties by name, so that a collation run
        twice on the same data gives the same order.
        """
        with self._sources() as (entries, index):
            yield from self._iter_open(entries, index, strict)

    def _iter_open(
        self, entries: list[SessionEntry], index: IndexView | None, strict: bool
    ) -> Iterator[SessionReader]:
        # Readers stay open from the pass that orders them, so each session is
        # opened once, as long as the process has descriptors to spare (see
        # reader_budget); otherwise each is opened again when its turn comes.
        keep = len(entries) <= reader_budget(_MAX_OPEN)
        found: list[tuple[float, str, SessionEntry, SessionReader | None]] = []
        try:
            for entry in entries:
                reader = self._open(entry, strict, index, kept=keep)
                if reader is None:
                    continue
                found.append((reader.created, entry.name, entry, reader if keep else None))
                if not keep:
                    reader.close()
            found.sort(key=lambda t: (t[0], t[1]))
            for i, (created, name, entry, kept) in enumerate(found):
                found[i] = (created, name, entry, None)  # handed over to the caller
                if kept is None:
                    kept = self._open(entry, strict, index)
                    if kept is None:
                        continue
                yield kept
                kept.close()  # the caller has moved on to the next one
        finally:
            for *_, reader in found:
                if reader is not None:
                    reader.close()

    def session_filenames(self, strict: bool = False) -> list[str]:
        """Return one file name per session, in creation order.

        A native session is its ``.sqlite`` file; a legacy shelf is named as
        ``shelve.open`` was given it (without ``.dat``/``.dir``/``.bak``).
        """
        return [path for _, path in self._collect(lambda r: r.path, strict)]

    # -- collation (Brian's API) --

    def get(self, key: str, strict: bool = False) -> dict[str, Any]:
        """Return ``{session name: value}`` for every session holding *key*."""
        _check_key(key)
        found = self._collect(lambda r: r.get(key, _MISSING), strict, lambda i: i.holding(key))
        return {name: value for name, value in found if value is not _MISSING}

    def get_merged(self, key: str, strict: bool = False) -> Any:
        """Concatenate the values of *key* across sessions.

        List and tuple values give one list; where every value is a numpy
        array the result is one array concatenated along axis 0.  Any other
        value raises TypeError naming its session and type.
        """
        return merge_values(key, list(self.get(key, strict).items()))

    def _matching(self, match: Match, strict: bool) -> dict[str, dict[str, Any]]:
        check_match(match)

        # One pass: each session is opened once for all the matching keys,
        # not once per key as Brian's implementation did.
        def read(reader: SessionReader) -> dict[str, Any]:
            skip = functools.partial(self._skip, reader, strict=strict)
            return dict(reader.items(reader.matching(match), skip))

        found = self._collect(read, strict, lambda i: i.holding_match(match))
        result: dict[str, dict[str, Any]] = {}
        for key in sorted({k for _, values in found for k in values}):
            result[key] = {name: values[key] for name, values in found if key in values}
        return result

    def get_matching(self, match: Match, strict: bool = False) -> dict[str, dict[str, Any]]:
        """Return ``{key: get(key)}`` for the keys matching *match*.

        *match* is a key prefix (str) or a callable taking a key and
        returning true for the keys wanted.  Keys come in sorted order.
        """
        return self._matching(match, strict)

    def get_merged_matching(self, match: Match, strict: bool = False) -> Any:
        """Concatenate ``get_merged(key)`` over the keys matching *match*, in key order."""
        merged: list[Any] = []
        for key, values in self._matching(match, strict).items():
            merged.extend(merge_values(key, list(values.items())))
        return merged

    def get_flat_matching(self, match: Match, strict: bool = False) -> list[Any]:
        """Return every value of every session for the keys matching *match*."""
        return [v for values in self._matching(match, strict).values() for v in values.values()]

    def keys(self, strict: bool = False) -> list[str]:
        """Return all keys of all sessions, each once, sorted."""
        return self._keys(lambda r: r.keys(), lambda i: i.distinct_keys(), strict)

    def get_matching_keys(self, match: Match, strict: bool = False) -> list[str]:
        """Return the keys matching *match* in any session, each once, sorted.

        *match* is a key prefix (str) or a callable taking a key and
        returning true for the keys wanted, as for :meth:`get_matching`.
        No value is read.

        Examples
        --------
        >>> import tempfile
        >>> dm = DataManager("sweep", tempfile.mkdtemp())
        >>> with dm.session() as s:
        ...     s.update({"rate/1": 1.0, "rate/2": 2.0, "seed": 7})
        >>> dm.get_matching_keys("rate/")
        ['rate/1', 'rate/2']
        """
        check_match(match)
        test = key_test(match)
        return self._keys(
            lambda r: r.matching(match), lambda i: filter(test, i.distinct_keys()), strict
        )

    def _keys(
        self,
        read: Callable[[SessionReader], list[str]],
        served: Callable[[IndexView], Iterable[str]],
        strict: bool,
    ) -> list[str]:
        keys, found = self._answer(served, read, strict)
        return sorted(set(keys or ()).union(*(keys for _, keys in found)))

    def _answer(
        self,
        served: Callable[[IndexView], A],
        read: Callable[[SessionReader], T],
        strict: bool,
    ) -> tuple[A | None, list[tuple[str, T]]]:
        """``served(index)`` for the sessions the index serves, ``read(reader)`` for the others.

        The first is None without an index.
        """
        answer = None

        def holding(index: IndexView) -> set[str]:
            nonlocal answer
            answer = served(index)
            return set()  # served(index) has answered for them all

        found = self._collect(read, strict, holding)
        return answer, found

    def iteritems(self, strict: bool = False) -> Iterator[tuple[str, Any]]:
        """Yield every ``(key, value)`` of every session, one at a time."""
        for reader in self.iter_sessions(strict):
            with reader:
                skip = functools.partial(self._skip, reader, strict=strict)
                yield from reader.items(on_error=skip)

    def itervalues(self, strict: bool = False) -> Iterator[Any]:
        """Yield every value of every session, one at a time."""
        for _, value in self.iteritems(strict):
            yield value

    def items(self, strict: bool = False) -> list[tuple[str, Any]]:
        """Return every ``(key, value)`` of every session as a list."""
        return list(self.iteritems(strict))

    def values(self, strict: bool = False) -> list[Any]:
        """Return every value of every session as a list."""
        return list(self.itervalues(strict))

    def itemcount(self, strict: bool = False) -> int:
        """Return the number of items summed over all sessions."""
        count, found = self._answer(lambda i: i.count(), len, strict)
        return (count or 0) + sum(n for _, n in found)

    def sessions(self, strict: bool = False) -> pandas.DataFrame:
        """Return a DataFrame with one row per session: its metadata, keys and size.

        ``created`` is a UTC timestamp; ``keys`` the number of keys; ``size``
        the bytes on disk (database, journal and side files).
        """
        import pandas

        def row(reader: SessionReader) -> dict[str, Any]:
            return {
                "name": reader.name,
                **reader.metadata,
                "keys": len(reader),
                "size": reader.nbytes,
            }

        rows = [r for _, r in self._collect(row, strict)]
        frame = pandas.DataFrame([{k: v for k, v in r.items() if k != "name"} for r in rows])
        # Object dtype: a name read from a file system in another encoding
        # keeps its undecodable bytes, which pyarrow-backed text refuses.
        frame.insert(0, "name", pandas.Series([r["name"] for r in rows], dtype=object))
        if "created" in frame:
            frame["created"] = pandas.to_datetime(frame["created"], unit="s", utc=True)
        return frame

    # -- maintenance --

    def verify(self) -> list[Problem]:
        """Check every session without changing anything; return the problems found.

        See :func:`datamanager.verify.verify` for what is checked.
        """
        return verify(self.basepath, self._entries(warn=False))

    def build_index(self, hash_values: bool = False) -> IndexSummary:
        """Index the data directory, or bring its index up to date.

        Collation then reads small values from the index and opens only the
        sessions it needs; its answers stay those of reading every session
        (see :mod:`datamanager.index`).  Unchanged sessions are not read
        again.  Writers may keep writing meanwhile: the build never blocks
        or modifies a session.

        Parameters
        ----------
        hash_values : bool, optional
            Also record a sha256 of every value's stored bytes.

        Returns
        -------
        IndexSummary
            Sessions indexed, read, carried over and dropped.

        Examples
        --------
        >>> import tempfile
        >>> dm = DataManager("sweep", tempfile.mkdtemp())
        >>> with dm.session() as s:
        ...     s["rate"] = 12.5
        >>> dm.build_index().sessions
        1
        >>> list(dm.get("rate").values())
        [12.5]
        """
        return build_index(self.basepath, hash_values)

    def index_tables(self) -> dict[str, pandas.DataFrame]:
        """The index as DataFrames: ``{"sessions": ..., "items": ...}``.

        One row per session (metadata, file sizes and times, key count,
        bytes) and one per stored value (session, key, type, numpy dtype and
        shape, stored size, side file, sha256 when the build hashed values).
        Sessions changed since the last :meth:`build_index` are read again in
        memory; nothing is written.  Without an index, the tables are built
        in memory from every session.  :doc:`/indexing` lists the columns.
        """
        return index_tables(self.basepath)

    def export_index(self, out_dir: str | os.PathLike) -> list[str]:
        """Write :meth:`index_tables` as ``sessions.parquet`` and ``items.parquet``.

        For pandas, polars, DuckDB or Spark.  Needs pyarrow (the ``parquet``
        extra: ``pip install "sim-datamanager[parquet]"``).  Each file is
        written under a temporary name and moved into place.

        Returns
        -------
        list of str
            The two files written.
        """
        from .index import export_tables

        return export_tables(self.index_tables(), os.fspath(out_dir))

    def migrate(self) -> list[str]:
        """Convert legacy shelves into native sessions (see :func:`.legacy.migrate`)."""
        return migrate(self, self._entries(warn=False))

    def prune(
        self, dry: bool = True, empty_sessions: bool = False, migrated_shelves: bool = False
    ) -> list[str]:
        """Remove the files of the data directory that hold nothing any more.

        Removes side files no key refers to and blob folders of no session
        (what :meth:`verify` reports), leftovers of interrupted writes that
        the library names itself (an index being built, an HDF5 export, a
        recording file), and lock files no process holds, each once it has
        been left unchanged for :data:`~datamanager.verify.ORPHAN_AGE`
        seconds.  Never a file of another name, a file a key refers to, or
        the index.  See :mod:`datamanager.prune` and the maintenance docs
        for the checks made right before each removal.

        Parameters
        ----------
        dry : bool
            Only say what would be removed (the default).
        empty_sessions : bool
            Also remove sessions without keys or task records that no writer
            may still write: no ``-wal``/``-journal`` file, every file older
            than the grace period, and held open by no process of this
            machine (Linux only; elsewhere none is removed).  A writer on
            another machine sharing the directory cannot be seen.
        migrated_shelves : bool
            Also remove legacy shelves whose native twin records a migration
            verified by :meth:`migrate`, if no file of the shelf changed
            since and no process of this machine holds one open.

        Returns
        -------
        list of str
            The absolute paths removed (or, with *dry*, that would be), sorted.

        Examples
        --------
        >>> import tempfile
        >>> dm = DataManager("sweep", tempfile.mkdtemp())
        >>> with dm.session("run") as s:
        ...     s["rate"] = 1.5
        >>> dm.prune()
        []
        """
        return prune(self.basepath, dry, empty_sessions, migrated_shelves)

    def import_recordings(
        self, paths_or_folder: Any, session_name: str | None = None
    ) -> ImportSummary:
        """Import NEURON ``.dat`` and Axon ``.atf`` recordings into one session.

        ``dm.import_recordings(...)`` is
        :func:`datamanager.importer.import_recordings` ``(dm, ...)``; see
        there for the parameters.
        """
        from .importer import import_recordings

        return import_recordings(self, paths_or_folder, session_name)

    def export_hdf5(
        self,
        path: str | os.PathLike,
        *,
        match: Match | None = None,
        merged: bool = False,
        compression: str | None = None,
        overwrite: bool = False,
        on_unsupported: str = "error",
        progress: bool | None = None,
        fsync: bool = False,
    ) -> ExportReport:
        """Export the collated results to one HDF5 file.

        ``dm.export_hdf5(path, ...)`` is :func:`datamanager.export_hdf5`
        ``(dm, path, ...)``; see there for the parameters.
        """
        from .hdf5 import export_hdf5

        return export_hdf5(
            self,
            path,
            match=match,
            merged=merged,
            compression=compression,
            overwrite=overwrite,
            on_unsupported=on_unsupported,
            progress=progress,
            fsync=fsync,
        )


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
