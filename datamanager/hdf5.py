"""Export collated results to one self-describing HDF5 file, and read it back.

The file needs neither datamanager nor pickle to be read: every value maps to
plain HDF5 datasets and groups (the schema in README.rst and
:mod:`datamanager._h5schema`).  :func:`load_hdf5` reverses it exactly
(:mod:`datamanager._h5read`).

Layout of an export::

    /                        attrs: datamanager_version, datamanager_name, export_time, ...
    /sessions/<session>      group; attr ``metadata``: the session metadata as JSON
    /sessions/<session>/<key>
    /merged/<key>            with merged=True: the get_merged result
    /merged_index/<key>      (session, start, stop) rows when /merged/<key> also
                             holds the per-session values (they are then not
                             repeated under /sessions)

This module does the file handling (temporary name, atomic publish) and the
reading of the sessions; :mod:`datamanager._h5merge` writes the values.
h5py is imported inside the functions: ``import datamanager`` must stay cheap
for simulation processes that only write.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator, Union

import numpy as np

from ._h5merge import METADATA_ATTR, SESSION_TYPE_ATTR, Exporter, NpyFile
from ._h5read import decoding, malformed, member, members, read, required
from ._h5schema import (
    ITEMS_ATTR,
    TYPE_ATTR,
    PickledValue,
    escape_name,
    get_attrs,
    items_from_array,
    unescape_name,
)
from ._interrupts import DeferredInterrupt
from .errors import ExportError

__all__ = [
    "ExportReport",
    "PickledValue",
    "escape_name",
    "export_hdf5",
    "load_hdf5",
    "unescape_name",
]

#: 2: session metadata in one JSON attribute (1: one attribute per field).
SCHEMA_VERSION = 2


def load_hdf5(
    path: Union[str, os.PathLike], *, unpickle: bool = False, metadata: bool = False
) -> dict[str, Any]:
    """Read an export written by :func:`export_hdf5` back into Python values.

    Parameters
    ----------
    path : str or path-like
        The ``.h5`` file.
    unpickle : bool
        Unpickle values stored with ``on_unsupported='pickle'``.  By default
        they come back as :class:`PickledValue`, because unpickling runs code
        from the file.
    metadata : bool
        Also return ``'metadata'`` (``{session: dict}``) and ``'attrs'`` (the
        file attributes: datamanager version, name, export time).

    Returns
    -------
    dict
        ``{'sessions': {session: {key: value}}}``, plus ``'merged': {key:
        value}`` when the export had ``merged=True``.  Values have the types,
        dtypes and shapes that were exported (a list stays a list).  With
        ``merged=True`` the key order inside a session may differ from the
        original.

    Raises
    ------
    ExportFormatError
        The file is HDF5 but not as :func:`export_hdf5` writes it: a missing
        or misplaced group, a value that does not decode, or any link other
        than one hard link per object.  Soft and external links are refused
        without being followed (the writer makes neither), so a crafted file
        cannot send the reader round a cycle or into another file.
    OSError
        The file cannot be opened or read as HDF5.
    """
    import h5py

    with h5py.File(path, "r") as f:
        sessions: dict[str, dict[str, Any]] = {}
        meta: dict[str, dict[str, Any]] = {}
        for gname, group in members(required(f, "sessions", h5py.Group), h5py.Group):
            name = unescape_name(gname)
            sessions[name] = {unescape_name(k): read(v, unpickle) for k, v in members(group)}
            meta[name] = _metadata(group)
        out: dict[str, Any] = {"sessions": sessions}
        stacked = member(f, "merged", h5py.Group)
        if stacked is not None:
            merged = out["merged"] = {}
            index = member(f, "merged_index", h5py.Group)
            for dname, obj in members(stacked):
                key = unescape_name(dname)
                merged[key] = read(obj, unpickle)
                rows = None if index is None else member(index, dname, h5py.Dataset, shared=True)
                if rows is not None:
                    with decoding(rows):
                        _unstack(obj, rows[()], key, sessions)
        if metadata:
            out["metadata"] = meta
            with decoding(f):
                out["attrs"] = get_attrs(f)
    return out


def _metadata(group: Any) -> dict[str, Any]:
    with decoding(group):
        if METADATA_ATTR not in group.attrs:
            return get_attrs(group)  # schema version 1
        found = json.loads(group.attrs[METADATA_ATTR])
    if not isinstance(found, dict):
        raise malformed(
            group,
            group.name,
            f"a JSON object in attribute {METADATA_ATTR!r}",
            f"a JSON {type(found).__name__}",
        )
    return found


def _unstack(obj: Any, rows: np.ndarray, key: str, sessions: dict[str, dict[str, Any]]) -> None:
    """Hand each session its slice of a stacked /merged dataset."""
    arr = obj[()]
    stype = obj.attrs.get(SESSION_TYPE_ATTR) or ("list" if TYPE_ATTR in obj.attrs else "ndarray")
    for session, start, stop in rows:
        name = unescape_name(session.decode() if isinstance(session, bytes) else session)
        part = arr[start:stop]
        value = (
            part if stype == "ndarray" else items_from_array(part, obj.attrs[ITEMS_ATTR], stype)
        )
        sessions.setdefault(name, {})[key] = value


# ---------------------------------------------------------------------------
# Export


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
    if match is None:
        return None
    if isinstance(match, str):
        return lambda key: key.startswith(match)
    if callable(match):
        return match
    raise TypeError(f"match must be a key prefix (str) or a callable, not {type(match).__name__}")


def _progress(dm: Any, progress: bool | None) -> Iterable[Any]:
    """``dm.iter_sessions()``, behind a bar only for a person watching.

    Never in logs, pipes or CI; and the session count, which opens every
    session once more, is only taken for a bar.
    """
    sessions = dm.iter_sessions()
    if progress is False or not sys.stderr.isatty():
        return sessions
    try:
        from tqdm import tqdm
    except ImportError:
        return sessions
    try:
        total: int | None = len(dm.session_filenames())
    except Exception:
        total = None
    return tqdm(sessions, total=total, unit="session", file=sys.stderr, leave=False)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exists(path: str) -> ExportError:
    return ExportError(path, "the file exists (use overwrite=True to replace it)", errno.EEXIST)


def _publish(tmp: str, path: str, overwrite: bool, fsync: bool) -> None:
    """Move the finished file into place in one step."""
    if overwrite:
        os.replace(tmp, path)
    else:
        # A hard link fails if the target appeared meanwhile, where a
        # check-then-rename could clobber a file written by someone else.
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _exists(path) from None
        except OSError:  # no hard links on this filesystem
            if os.path.lexists(path):
                raise _exists(path) from None
            os.replace(tmp, path)
        else:
            os.unlink(tmp)
    if fsync:
        try:
            _fsync(os.path.dirname(path))
        except OSError:
            pass  # some filesystems cannot fsync a directory


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
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.lexists(path) and not overwrite:
        raise _exists(path)
    if not os.path.isdir(folder):
        raise ExportError(path, f"no such folder {folder}", errno.ENOENT)

    import h5py

    started = time.perf_counter()
    report = ExportReport(path=path)
    options = {"compression": compression, "on_unsupported": on_unsupported, "merged": merged}
    # Ctrl-C is held until a point between values: raised inside h5py it
    # would be dropped, and it must not cut the clean-up below short.
    with DeferredInterrupt() as interrupt:
        prefix = f".{os.path.basename(path)}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=folder)
        os.close(fd)
        try:
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
            if fsync:
                _fsync(tmp)
            interrupt.checkpoint()  # the last moment at which nothing appears
            _publish(tmp, path, overwrite, fsync)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError) and not isinstance(exc, ExportError):
                raise ExportError(path, f"{type(exc).__name__}: {exc}", exc.errno) from exc
            raise
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
        from . import __version__ as version
    except ImportError:
        version = "unknown"
    f.attrs["datamanager_version"] = str(version)
    f.attrs["datamanager_name"] = str(getattr(dm, "name", ""))
    f.attrs["export_time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["merged"] = bool(options["merged"])
    exporter = Exporter(f, dm, options, report, checkpoint)
    for reader in _progress(dm, progress):
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
    if options["merged"]:
        exporter.finish_merged()
