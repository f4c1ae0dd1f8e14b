"""Reading an export back: :func:`load_hdf5`, and :func:`read`, which reverses
:class:`~datamanager.hdf5.schema.Writer` value by value.

Only what the writer makes is read.  Every object is reached through
:func:`member`, which refuses any link but one hard link per object before
following it, and every failure to decode a value becomes an
:class:`~datamanager.errors.ExportFormatError` naming the HDF5 object: a
crafted or damaged file can neither send the reader round a link cycle or
into another file, nor end in a traceback from deep inside h5py.

h5py is imported inside the functions, as in :mod:`datamanager.hdf5.schema`.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Union

import numpy as np

from .._sidecodec import masked_arrays
from ..errors import ExportFormatError
from ..filestore import StoredFile, bound_to
from ..recordings.recording import Recording
from .dtypes import (
    DTYPE_ATTR,
    TYPED_ARRAY,
    dtype_from_attr,
    stored_dtype,
    unicode_width_problem,
)
from .files import FILES_GROUP, extract_files
from .frames import ENCODING_ATTR, LABELS, NAME_ATTR, PANDAS_DTYPE_ATTR, RANGE_ATTR, TZ_ATTR
from .schema import (
    ITEMS_ATTR,
    METADATA_ATTR,
    SEQUENCES,
    SESSION_TYPE_ATTR,
    STORED_FILE_ATTRS,
    TYPE_ATTR,
    PickledValue,
    get_attrs,
    items_from_array,
    unescape_name,
)

__all__ = ["load_hdf5", "read"]


def load_hdf5(
    path: Union[str, os.PathLike],
    *,
    unpickle: bool = False,
    metadata: bool = False,
    files: Union[str, os.PathLike, None] = None,
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
    files : str or path-like, optional
        A data directory (``DataManager.basepath``; created if missing) into
        whose file store the export's stored files are copied, so that the
        StoredFile values come back bound to those copies (``open(f)``
        works, and items holding them run again with
        :func:`~datamanager.tasks.run_tasks`).  By default StoredFiles come
        back with ``path`` None; :func:`~datamanager.hdf5.load_file` reads
        their bytes.

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
        if files is None:
            return _load(f, unpickle, metadata)
        extract_files(f, files)
        with bound_to(files):
            return _load(f, unpickle, metadata)


def _load(f: Any, unpickle: bool, metadata: bool) -> dict[str, Any]:
    """The values of the open export *f* (see :func:`load_hdf5`)."""
    import h5py

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


#: What decoding a crafted value can raise (a missing attribute, a wrong
#: dtype, bad JSON or UTF-8, nesting deeper than Python's stack, ...).
_UNDECODABLE = (KeyError, ValueError, TypeError, IndexError, OverflowError, RecursionError)


def malformed(obj: Any, h5path: str, expected: str, found: str) -> ExportFormatError:
    return ExportFormatError(obj.file.filename, h5path, expected, found)


@contextlib.contextmanager
def decoding(obj: Any) -> Iterator[None]:
    """Report a failure to decode ``obj`` as an ExportFormatError naming it."""
    try:
        yield
    except _UNDECODABLE as exc:
        found = f"{type(exc).__name__}: {exc}"
        raise malformed(obj, obj.name, "a value as the export writes it", found) from None


def member(group: Any, name: str, kind: Any = None, *, shared: bool = False) -> Any:
    """``group[name]`` checked by :func:`_linked`; None if there is no such link."""
    raw = name.encode("utf-8")
    return _linked(group, raw, kind, shared) if group.id.links.exists(raw) else None


def required(group: Any, name: str, kind: Any = None) -> Any:
    """:func:`member`, or an ExportFormatError if there is no such link."""
    obj = member(group, name, kind)
    if obj is None:
        raise _unexpected(group, name.encode("utf-8"), kind, "nothing")
    return obj


def members(group: Any, kind: Any = None) -> Iterator[tuple[str, Any]]:
    """``(name, object)`` for each member of ``group``, each checked by :func:`_linked`."""
    for raw in group.id:  # link names as stored, in the group's order
        yield raw.decode("utf-8", "surrogateescape"), _linked(group, raw, kind, False)


def _linked(group: Any, raw: bytes, kind: Any, shared: bool) -> Any:
    """``group[raw]`` if it is a ``kind`` object linked as the writer links it.

    The writer makes only hard links and links each object once (the tables
    of ``/merged_index``, which keys share, are read with ``shared=True``).
    Any other link is refused before it is followed: a soft or hard link back
    to an ancestor would be read forever, an external link opens another
    file, and an object linked many times would be read as often.  Every
    hard-link cycle passes through an object with two links.
    """
    from h5py import h5l, h5o

    ltype = group.id.links.get_info(raw).type
    if ltype == h5l.TYPE_HARD:
        obj = group[raw]
        links = h5o.get_info(obj.id).rc
        if not isinstance(obj, _kinds(kind)):
            found = f"a {type(obj).__name__.lower()}"
        elif links != 1 and not shared:
            found = f"an object with {links} hard links (a link cycle or a shared object)"
        else:
            return obj
    elif ltype == h5l.TYPE_SOFT:
        found = f"a soft link to {group.id.links.get_val(raw).decode('utf-8', 'replace')}"
    elif ltype == h5l.TYPE_EXTERNAL:
        filename, target = (v.decode("utf-8", "replace") for v in group.id.links.get_val(raw))
        found = f"an external link to {target} in {filename}"
    else:
        found = f"a user-defined link (type {ltype})"
    raise _unexpected(group, raw, kind, found)


def _kinds(kind: Any) -> tuple[type, ...]:
    import h5py

    return (h5py.Group, h5py.Dataset) if kind is None else (kind,)


def _unexpected(group: Any, raw: bytes, kind: Any, found: str) -> ExportFormatError:
    h5path = f"{group.name.rstrip('/')}/{raw.decode('utf-8', 'replace')}"
    expected = " or ".join(f"a {k.__name__.lower()}" for k in _kinds(kind))
    return malformed(group, h5path, f"{expected} (one hard link)", found)


def read(obj: Any, unpickle: bool = False) -> Any:
    """Rebuild the Python value stored at ``obj`` (a dataset or a group).

    Raises :class:`~datamanager.errors.ExportFormatError` for anything that
    the writer does not make, naming the HDF5 object.
    """
    with decoding(obj):
        return _read(obj, unpickle)


def _read(obj: Any, unpickle: bool) -> Any:
    import h5py

    ptype = obj.attrs.get(TYPE_ATTR)
    if isinstance(obj, h5py.Group):
        if ptype is None or ptype == "dict":
            return {unescape_name(k): read(v, unpickle) for k, v in members(obj)}
        if ptype in SEQUENCES:
            items = sorted(members(obj), key=lambda item: int(item[0]))
            return SEQUENCES[ptype](read(v, unpickle) for _, v in items)
        if ptype == "Recording":
            return _read_recording(obj, unpickle)
        if ptype in ("pandas.DataFrame", "pandas.Series"):
            return _read_pandas(obj, ptype)
        raise ValueError(f"unknown {TYPE_ATTR} {ptype!r}")
    if ptype is None:
        # [...] keeps a 0-d array an array, in its stored byte order.
        return obj[...] if obj.shape == () else obj[()]
    if ptype == TYPED_ARRAY:
        return _read_typed_array(obj)
    data = obj[()]
    if ptype in SEQUENCES:
        items = obj.attrs[ITEMS_ATTR]
        return items_from_array(obj.asstr()[()] if items == "str" else data, items, ptype)
    if ptype == "numpy.scalar":
        return data
    if ptype == "None":
        return None
    if ptype == "str":
        if isinstance(data, np.void):
            return data.tobytes().decode("utf-8", "surrogatepass")
        return obj.asstr()[()]
    if ptype in ("bytes", "bytearray"):
        raw = b"" if isinstance(data, h5py.Empty) else data.tobytes()
        return raw if ptype == "bytes" else bytearray(raw)
    if ptype == "int":
        return int(obj.asstr()[()]) if obj.dtype.kind == "O" else int(data)
    if ptype in ("bool", "float", "complex"):
        return {"bool": bool, "float": float, "complex": complex}[ptype](data)
    if ptype == "pickle":
        value = PickledValue(data.tobytes())
        return value.load() if unpickle else value
    if ptype == "StoredFile":
        return _read_stored_file(obj)
    raise ValueError(f"unknown {TYPE_ATTR} {ptype!r}")


def _read_typed_array(obj: Any) -> np.ndarray:
    """A string, datetime or structured array, in its original dtype."""
    dtype = dtype_from_attr(obj.attrs[DTYPE_ATTR])
    if dtype.kind == "U":
        strings = np.asarray(obj.asstr()[()], dtype=object)
        # The strings, not the attribute, bound the memory the array takes.
        longest = max(map(len, strings.flat), default=0)
        problem = unicode_width_problem(dtype, longest, strings.size)
        if problem:
            raise ValueError(f"{DTYPE_ATTR} {problem}")
        return strings.astype(dtype)
    # By position into the stored layout (h5py may pack a compound), whose
    # itemsize and offsets are the original's: then a view restores it.
    return obj[...].astype(stored_dtype(dtype), copy=False).view(dtype)


def _read_pandas(group: Any, ptype: str) -> Any:
    """A DataFrame or Series (see :mod:`datamanager.hdf5.frames`)."""
    import pandas

    index = _read_axis(required(group, "index"))
    if ptype == "pandas.Series":
        name = json.loads(group.attrs[NAME_ATTR])
        values = _read_column(required(group, "values"))
        return pandas.Series(values, index=index, name=name, dtype=values.dtype)
    labels = _read_axis(required(group, LABELS))
    columns = [_read_column(obj) for _, obj in members(required(group, "columns"))]
    if len(columns) != len(labels):
        found = f"{len(columns)} columns for {len(labels)} labels"
        raise malformed(group, group.name, "one column per label", found)
    # By position, then labelled: labels may repeat as values (1 and 1.0).
    frame = pandas.DataFrame(
        {i: pandas.Series(c, index=index, dtype=c.dtype) for i, c in enumerate(columns)},
        index=index,
    )
    frame.columns = labels
    return frame


def _read_axis(obj: Any) -> Any:
    import pandas

    if obj.attrs.get(TYPE_ATTR) == "pandas.MultiIndex":
        levels = [_read_column(level) for _, level in members(obj)]
        return pandas.MultiIndex.from_arrays(levels, names=json.loads(obj.attrs[NAME_ATTR]))
    name = json.loads(obj.attrs[NAME_ATTR])
    if RANGE_ATTR in obj.attrs:
        return pandas.RangeIndex(*json.loads(obj.attrs[RANGE_ATTR]), name=name)
    values = _read_column(obj)
    return pandas.Index(values, name=name, dtype=values.dtype)


def _read_column(obj: Any) -> Any:
    """A column's values in the stored pandas dtype: a numpy or pandas array.

    Callers pass its dtype on explicitly: pandas would infer ``str`` for an
    object array of strings.
    """
    import h5py
    import pandas

    dtype = obj.attrs[PANDAS_DTYPE_ATTR]
    if isinstance(obj, h5py.Group) and dtype != "category":
        return _read_masked(obj, dtype)
    if isinstance(obj, h5py.Group):  # a categorical
        values = _read_column(required(obj, "categories"))
        categories = pandas.Index(values, dtype=values.dtype)
        codes = read(required(obj, "codes", h5py.Dataset))
        ordered = bool(obj.attrs["ordered"])
        return pandas.Categorical.from_codes(codes, categories, ordered=ordered)
    if TZ_ATTR in obj.attrs:
        utc = pandas.DatetimeIndex(read(obj)).tz_localize("UTC")
        return utc.tz_convert(obj.attrs[TZ_ATTR]).array
    if h5py.check_string_dtype(obj.dtype) is None:
        return read(obj)
    text = np.asarray(obj.asstr()[()], dtype=object)
    if obj.attrs.get(ENCODING_ATTR) == "JSON":
        text[:] = [json.loads(item) for item in text]
    return text if dtype == "object" else pandas.array(text, dtype=dtype)


def _read_masked(group: Any, dtype: str) -> Any:
    """A column of nullable numbers or bools (``Int64``, ``boolean``, ...): values and mask."""
    import h5py
    import pandas

    found = pandas.api.types.pandas_dtype(dtype)
    # Only these take (values, mask): any other dtype named here is malformed.
    if type(found) not in masked_arrays():
        raise ValueError(f"{PANDAS_DTYPE_ATTR} {dtype!r} of a column stored with a mask")
    kind = masked_arrays()[type(found)]
    values = read(required(group, "values", h5py.Dataset))
    mask = read(required(group, "mask", h5py.Dataset))
    return pandas.array(kind(values, mask.astype(bool, copy=False)), dtype=dtype)


def _read_stored_file(obj: Any) -> StoredFile:
    """A StoredFile value, unbound: its bytes are in the export (see :func:`load_file`)."""
    import h5py

    fields = get_attrs(obj)
    stored = StoredFile(
        sha256=obj.asstr()[()], **{attr: fields[attr] for attr in STORED_FILE_ATTRS}
    )
    # Refused here rather than when the bytes are asked for: a value that
    # names no file of the export, or one of another size, is malformed.
    files = required(obj.file, FILES_GROUP, h5py.Group)
    data = required(files, stored.sha256, h5py.Dataset)
    if data.shape != (stored.size,):
        found = f"a dataset of shape {data.shape}"
        raise malformed(obj, data.name, f"{stored.size} bytes", found)
    return stored


def _read_recording(group: Any, unpickle: bool) -> Any:
    fields = get_attrs(group)
    fields.pop(TYPE_ATTR, None)
    stored = required(group, "data")
    data = read(stored, unpickle)
    if isinstance(data, list):  # an object table stored column by column
        table = np.empty((int(stored.attrs["rows"]), len(data)), dtype=object)
        for j, column in enumerate(data):
            table[:, j] = column
        data = table
    return Recording(data, **fields)
