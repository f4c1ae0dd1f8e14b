"""Reading an export back: :func:`read` reverses :class:`~datamanager._h5schema.Writer`.

Only what the writer makes is read.  Every object is reached through
:func:`member`, which refuses any link but one hard link per object before
following it, and every failure to decode a value becomes an
:class:`~datamanager.errors.ExportFormatError` naming the HDF5 object: a
crafted or damaged file can neither send the reader round a link cycle or
into another file, nor end in a traceback from deep inside h5py.

h5py is imported inside the functions, as in :mod:`datamanager._h5schema`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from ._h5schema import (
    ITEMS_ATTR,
    SEQUENCES,
    TYPE_ATTR,
    PickledValue,
    get_attrs,
    items_from_array,
    unescape_name,
)
from .errors import ExportFormatError

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
        raise ValueError(f"unknown {TYPE_ATTR} {ptype!r}")
    if ptype is None:
        # [...] keeps a 0-d array an array, in its stored byte order.
        return obj[...] if obj.shape == () else obj[()]
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
    raise ValueError(f"unknown {TYPE_ATTR} {ptype!r}")


def _read_recording(group: Any, unpickle: bool) -> Any:
    from .recordings.recording import Recording

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
