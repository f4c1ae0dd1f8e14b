"""Export collated results to one self-describing HDF5 file.

This module does the file handling (temporary name, atomic publish) and the
reading of the sessions; :mod:`datamanager.hdf5.merge` writes the values.
h5py is imported inside the functions: ``import datamanager`` must stay cheap
for simulation processes that only write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Iterable, Iterator, Union

from .._progress import progress_bar
from .._publish import publishing, target
from ..readers import key_test
from .interrupts import DeferredInterrupt
from .merge import Exporter, NpyFile
from .schema import SCHEMA_VERSION

__all__ = ["ExportReport", "export_hdf5"]


@dataclasses.dataclass
class ExportReport:
    """What :func:`export_hdf5` wrote.

    Attributes
    ----------
    path : str
        The file written.
    sessions : int
        Sessions exported.
    values : int
        ``(session, key)`` values written.
    nbytes : int
        Size of the file.
    seconds : float
        Wall time of the export.
    merged : list of str
        Keys written under ``/merged``.
    stacked : list of str
        Keys whose per-session values live only as slices of ``/merged/<key>``
        (listed in ``/merged_index/<key>``), one HDF5 object instead of one each.
    not_merged : dict
        Key -> why ``get_merged`` does not apply (e.g. dict values).
    skipped : list of tuple
        ``(session, key, type name)`` left out with ``on_unsupported='skip'``.
    pickled : list of tuple
        ``(session, key, type name)`` stored pickled with ``on_unsupported='pickle'``.
    """

    path: str
    sessions: int = 0
    values: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    merged: list[str] = dataclasses.field(default_factory=list)
    stacked: list[str] = dataclasses.field(default_factory=list)
    not_merged: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    pickled: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


def _matcher(match: Union[str, Callable[[str], bool], None]) -> Callable[[str], bool] | None:
    """A test of the keys to export; None for all keys."""
    return None if match is None else key_test(match)


def _progress(dm: Any, sessions: Iterable[Any], progress: bool | None) -> Iterable[Any]:
    """*sessions* (``dm.iter_sessions()``), behind a bar only for a person watching.

    The session count, which opens every session once more, is only taken
    for a bar.
    """
    bar = progress_bar(progress is not False)
    if bar is None:
        return sessions
    try:
        total: int | None = len(dm.session_filenames())
    except Exception:
        total = None
    return bar(sessions, total=total, unit="session", leave=False)


def export_hdf5(
    dm: Any,
    path: Union[str, os.PathLike],
    *,
    match: Union[str, Callable[[str], bool], None] = None,
    merged: bool = False,
    compression: str | None = None,
    overwrite: bool = False,
    on_unsupported: str = "error",
    progress: bool | None = None,
    fsync: bool = False,
) -> ExportReport:
    """Write the sessions of ``dm`` into one self-describing HDF5 file.

    Parameters
    ----------
    dm : DataManager
        The data to export (anything with ``iter_sessions()``; ``get_merged``
        is used for ``merged=True`` values that are not plain arrays).
    path : str or path-like
        The file to write.  It appears only when complete.
    match : str or callable, optional
        Export only keys starting with this prefix, or for which
        ``match(key)`` is true.
    merged : bool
        Also write ``/merged/<key>``, the :meth:`get_merged` result, wherever
        the values merge.  Values that stack (same-typed arrays or lists) are
        then stored once, as slices of ``/merged/<key>``.
    compression : {None, 'gzip', 'lzf'}
        Dataset compression; off by default because it costs far more time
        than it saves space on float data.
    overwrite : bool
        Replace an existing file.
    on_unsupported : {'error', 'skip', 'pickle'}
        What to do with a value the schema cannot hold: raise
        :class:`~datamanager.errors.UnsupportedValueError`, leave it out (it is
        listed in the report), or store it pickled.
    progress : bool, optional
        ``False`` never shows a progress bar; otherwise one is shown when
        stderr is a terminal and tqdm is installed.
    fsync : bool
        Flush the file to the disk before moving it into place, so that it
        survives an operating-system crash or power cut as well.  Off by
        default: it costs about as much as writing the data, and the file is
        published atomically either way (an exception, SIGKILL or a full disk
        never leaves a file under ``path``).

    Returns
    -------
    ExportReport

    Raises
    ------
    UnsupportedValueError
        A value the schema cannot hold, with ``on_unsupported='error'``.
    ExportError
        The target exists, its folder is missing, or writing failed (a full
        disk).  Nothing appears at ``path`` and an existing file is untouched.
    """
    if on_unsupported not in ("error", "skip", "pickle"):
        raise ValueError(
            f"on_unsupported must be 'error', 'skip' or 'pickle', not {on_unsupported!r}"
        )
    if compression not in (None, "gzip", "lzf"):
        raise ValueError(f"compression must be None, 'gzip' or 'lzf', not {compression!r}")
    selected = _matcher(match)
    path = target(path, overwrite)

    import h5py

    started = time.perf_counter()
    report = ExportReport(path=path)
    options = {"compression": compression, "on_unsupported": on_unsupported, "merged": merged}
    # Ctrl-C is held until a point between values: raised inside h5py it
    # would be dropped, and it must not cut the clean-up short.
    interrupt = DeferredInterrupt()
    with interrupt, publishing(path, overwrite, fsync, interrupt.checkpoint) as tmp:
        f = h5py.File(tmp, "w", track_order=True)
        try:
            _write_file(f, dm, selected, options, report, progress, interrupt.checkpoint)
        except BaseException:
            try:
                f.close()
            except Exception:
                pass  # closing a file that failed to grow fails too: report the cause
            raise
        f.close()
    report.nbytes = os.path.getsize(path)
    report.seconds = time.perf_counter() - started
    return report


def _values(reader: Any, selected: Callable[[str], bool] | None) -> Iterator[tuple[str, Any]]:
    """The selected ``(key, value)`` pairs of one session, in order, one at a time.

    Arrays in side files come as :class:`NpyFile`, to be copied without being
    loaded.  A session without side files is read in batches of rows, one
    query each instead of one per key: with many small values those queries
    cost more than writing the values.
    """
    try:
        side = {key: (path, size) for key, path, size in reader.side_files()}
    except (AttributeError, OSError):
        side = {}
    if not side and selected is None and hasattr(reader, "items"):
        yield from reader.items()
        return
    for key in reader.keys():  # noqa: SIM118 (a reader is not a dict)
        if selected is None or selected(key):
            found = NpyFile.open(*side[key]) if key in side else None
            yield key, reader[key] if found is None else found


def _write_file(
    f: Any,
    dm: Any,
    selected: Callable[[str], bool] | None,
    options: dict[str, Any],
    report: ExportReport,
    progress: bool | None,
    checkpoint: Callable[[], None],
) -> None:
    try:
        from .. import __version__ as version
    except ImportError:
        version = "unknown"
    f.attrs["datamanager_version"] = str(version)
    f.attrs["datamanager_name"] = str(getattr(dm, "name", ""))
    f.attrs["export_time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["merged"] = bool(options["merged"])
    exporter = Exporter(f, dm, options, report, checkpoint)
    sessions = dm.iter_sessions()
    # Closed here, not by the garbage collector, when an export stops half
    # way: the readers it keeps open are then closed in order.
    with contextlib.closing(sessions) if hasattr(sessions, "close") else contextlib.nullcontext():
        _export_sessions(exporter, _progress(dm, sessions, progress), selected, report, checkpoint)
    if options["merged"]:
        exporter.finish_merged()


def _export_sessions(
    exporter: Any, sessions: Iterable[Any], selected: Any, report: Any, checkpoint: Any
) -> None:
    """Export every reader of *sessions*, closing each as soon as it is written."""
    for reader in sessions:
        try:
            group = exporter.session(reader.name, reader.metadata or {})
            for key, value in _values(reader, selected):
                exporter.add(group, reader.name, key, value)
                del value  # streaming: hold one value at a time
                checkpoint()
            report.sessions += 1
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()
