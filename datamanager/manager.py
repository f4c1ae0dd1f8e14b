"""DataManager: a data directory, the sessions written to it, and its upkeep.

The read side, collation, is :class:`~datamanager.collator.Collator`, which a
DataManager is.  The names and meanings of the methods follow Brian's
``brian.tools.datamanager.DataManager``, so scripts written for it run
unchanged.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

from ._format import SESSION_SUFFIX, validate_data_name, validate_session_name
from .collator import Collator
from .filestore import StoredFile, store_file
from .filesystem import check_journal_mode
from .index import IndexSummary, build_index, index_tables
from .legacy import check_not_hiding, migrate
from .locking import LockingSession
from .provenance import computer_name
from .prune import prune
from .readers import Match
from .session import Session
from .verify import Problem, verify

if TYPE_CHECKING:
    import pandas

    from .hdf5 import ExportReport
    from .importer import ImportSummary

__all__ = ["DataManager", "IndexSummary", "Problem"]

S = TypeVar("S", bound=Session)


class DataManager(Collator):
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
