"""Export collated results to one self-describing HDF5 file, and read it back.

The file needs neither datamanager nor pickle to be read: every value maps to
plain HDF5 datasets and groups (see the schema in README.rst, issue 4), with
an attribute ``python_type`` wherever the HDF5 object alone does not say which
Python type it came from.  :func:`load_hdf5` reverses the mapping exactly.

Layout of an export::

    /                        attrs: datamanager_version, datamanager_name, export_time, ...
    /sessions/<session>      group; attrs: the session metadata
    /sessions/<session>/<key>
    /merged/<key>            with merged=True: the get_merged result
    /merged_index/<key>      (session, start, stop) rows when /merged/<key> also
                             holds the per-session values (they are then not
                             repeated under /sessions)

h5py is imported inside the functions: ``import datamanager`` must stay cheap
for simulation processes that only write (issue 2).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Union

import numpy as np

from .errors import ExportError, UnsupportedValueError

__all__ = ["ExportReport", "PickledValue", "escape_name", "export_hdf5", "load_hdf5"]

#: Attribute naming the Python type of a dataset or group; absent on plain
#: numpy arrays (datasets) and str-keyed dicts (groups), the common cases.
TYPE_ATTR = "python_type"
#: Attribute of an array-backed list/tuple/set: the Python type of its items.
ITEMS_ATTR = "items"
SCHEMA_VERSION = 1

_NUMERIC_KINDS = "biufc"
_PY_SCALARS = {bool: np.bool_, int: np.int64, float: np.float64, complex: np.complex128}
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
_RECORDING = ("datamanager.recordings.recording", "Recording")

# ---------------------------------------------------------------------------
# Names


_ESCAPE_RE = re.compile(r"%(u[0-9A-Fa-f]{4}|[0-9A-Fa-f]{2})")
_NEEDS_ESCAPE = re.compile("[%/\x00\ud800-\udfff]|^[.]")


def escape_name(name: str) -> str:
    """Turn any ``str`` into a valid HDF5 link name, reversibly.

    ``%``, ``/`` and NUL become ``%XX``; a leading ``.`` becomes ``%2E`` (HDF5
    reads ``.`` as "this group"); lone surrogates, which have no UTF-8 form,
    become ``%uXXXX``; the empty name becomes ``%``.

    Examples
    --------
    >>> escape_name("rates/Hz")
    'rates%2FHz'
    >>> unescape_name(escape_name(".5%")) == ".5%"
    True
    """
    if name == "":
        return "%"
    if not _NEEDS_ESCAPE.search(name):  # the common case, kept fast
        return name
    out = []
    for i, ch in enumerate(name):
        code = ord(ch)
        if ch in "%/\x00" or (i == 0 and ch == "."):
            out.append(f"%{code:02X}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"%u{code:04X}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_name(name: str) -> str:
    """Invert :func:`escape_name`; names from other tools pass unchanged."""
    if name == "%":
        return ""
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1).lstrip("u"), 16)), name)


# ---------------------------------------------------------------------------
# Values -> HDF5


class PickledValue:
    """A value stored pickled (``on_unsupported='pickle'``), not yet unpickled.

    Loading an exchange file must not run code, so :func:`load_hdf5` hands
    these back as they are unless asked to ``unpickle``.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def load(self) -> Any:
        """Unpickle the value (runs code from the file: trusted files only)."""
        return pickle.loads(self.data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PickledValue) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"PickledValue(<{len(self.data)} bytes>)"


class _Unsupported(Exception):
    """Internal: a (possibly nested) value the schema cannot hold."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name


def _type_name(value: Any) -> str:
    cls = type(value)
    name = (
        cls.__qualname__
        if cls.__module__ == "builtins"
        else f"{cls.__module__}.{cls.__qualname__}"
    )
    if isinstance(value, (np.ndarray, np.generic)):
        name += f" of dtype {value.dtype}"
    elif isinstance(value, dict):
        bad = next(k for k in value if type(k) is not str)
        name += f" with a key of type {type(bad).__qualname__}"
    return name


def _is_array(value: Any) -> bool:
    # Exact types only: a subclass (np.ma.MaskedArray, np.matrix) would lose
    # what makes it a subclass.  np.memmap is what a store may hand back.
    return type(value) is np.ndarray or isinstance(value, np.memmap)


def _numeric(dtype: np.dtype) -> bool:
    return dtype.kind in _NUMERIC_KINDS and dtype.fields is None


def _homogeneous(items: Any) -> tuple[str, np.ndarray] | None:
    """``(item type, array)`` when a sequence can be one dataset, else None."""
    items = list(items)
    if not items:
        return None
    first = items[0]
    cls = type(first)
    if cls in _PY_SCALARS:
        if any(type(x) is not cls for x in items):
            return None
        try:
            return cls.__name__, np.array(items, dtype=_PY_SCALARS[cls])
        except OverflowError:  # ints beyond int64
            return None
    if cls is str:
        if any(type(x) is not str or "\x00" in x or _has_surrogates(x) for x in items):
            return None
        return "str", np.array(items, dtype=object)
    if isinstance(first, np.generic) and _numeric(first.dtype):
        if all(type(x) is cls and x.dtype == first.dtype for x in items):
            return "numpy.scalar", np.array(items, dtype=first.dtype)
        return None
    if (_is_array(first) and _numeric(first.dtype)) and all(
        _is_array(x) and x.dtype == first.dtype and x.shape == first.shape for x in items
    ):
        return "ndarray", np.stack(items).astype(first.dtype, copy=False)
    return None


def _items_from_array(arr: np.ndarray, items: str, ptype: str) -> Any:
    if items == "ndarray":
        seq: Any = [arr[i, ...] for i in range(len(arr))]
    elif items == "numpy.scalar":
        seq = list(arr)
    else:
        seq = arr.tolist()
    return _SEQUENCES[ptype](seq)


class _Writer:
    """Writes Python values into an open HDF5 group following the schema."""

    def __init__(self, compression: str | None, on_unsupported: str) -> None:
        self.compression = compression
        self.on_unsupported = on_unsupported
        self.pickled: list[str] = []
        self._types: dict[np.dtype, Any] = {}
        self._lcpl: Any = None

    def plain_array(self, parent: Any, name: str, arr: np.ndarray) -> None:
        """A numeric array as a contiguous dataset, through h5py's low-level API.

        Half the cost of ``create_dataset`` per dataset, which matters when
        exporting many small arrays (issue 4 benchmark).
        """
        from h5py import h5d, h5p, h5s, h5t

        if self._lcpl is None:
            self._lcpl = h5p.create(h5p.LINK_CREATE)
            self._lcpl.set_char_encoding(h5t.CSET_UTF8)  # names are UTF-8, as h5py's
        tid = self._types.get(arr.dtype)
        if tid is None:
            tid = self._types[arr.dtype] = h5t.py_create(arr.dtype)
        space = h5s.create_simple(arr.shape) if arr.ndim else h5s.create(h5s.SCALAR)
        dsid = h5d.create(parent.id, name.encode("utf-8"), tid, space, lcpl=self._lcpl)
        if arr.size:
            dsid.write(h5s.ALL, h5s.ALL, np.ascontiguousarray(arr))
        dsid.close()

    def npy_file(self, parent: Any, name: str, src: _NpyFile) -> None:
        kw = {"compression": self.compression} if self.compression and all(src.shape) else {}
        ds = parent.create_dataset(name, shape=src.shape, dtype=src.dtype, **kw)
        row = src.dtype.itemsize * int(np.prod(src.shape[1:], dtype=np.int64))
        if not row or not src.shape[0]:
            return
        rows = max(1, _SLAB // row)
        buf = np.empty((min(rows, src.shape[0]), *src.shape[1:]), dtype=src.dtype)
        view = memoryview(buf).cast("B")
        with open(src.path, "rb", buffering=0) as fh:
            fh.seek(src.offset)
            for start in range(0, src.shape[0], rows):
                n = min(rows, src.shape[0] - start)
                if fh.readinto(view[: n * row]) != n * row:
                    raise OSError(f"side file {src.path} changed during the export")
                ds[start : start + n] = buf[:n]

    def array(self, parent: Any, name: str, arr: np.ndarray, **kw: Any) -> Any:
        import h5py

        if self.compression and arr.ndim and arr.size:
            kw.setdefault("compression", self.compression)
        if arr.dtype.kind == "O":  # a list of str: variable-length UTF-8 strings
            kw["dtype"] = h5py.string_dtype()
        return parent.create_dataset(name, data=arr, **kw)

    def scalar(self, parent: Any, name: str, data: Any, ptype: str, **kw: Any) -> Any:
        ds = parent.create_dataset(name, data=data, **kw)
        ds.attrs[TYPE_ATTR] = ptype
        return ds

    def write(self, parent: Any, name: str, value: Any) -> None:
        """Store ``value`` as ``parent[name]``; raise _Unsupported if it cannot."""
        import h5py

        cls = type(value)
        if cls is _NpyFile:
            self.npy_file(parent, name, value)
        elif _is_array(value):
            if not _numeric(value.dtype):
                self._unsupported(parent, name, value)
            elif self.compression:
                self.array(parent, name, value)
            else:
                self.plain_array(parent, name, value)
        elif isinstance(value, np.generic):
            if not _numeric(value.dtype):
                self._unsupported(parent, name, value)
            else:
                self.scalar(parent, name, value, "numpy.scalar")
        elif value is None:
            self.scalar(parent, name, h5py.Empty("i1"), "None")
        elif cls is int:
            if -(2**63) <= value < 2**64:
                data = np.int64(value) if value < 2**63 else np.uint64(value)
                self.scalar(parent, name, data, "int")
            else:  # beyond 64 bits: exact decimal text
                self.scalar(parent, name, str(value), "int", dtype=h5py.string_dtype())
        elif cls in _PY_SCALARS:
            self.scalar(parent, name, _PY_SCALARS[cls](value), cls.__name__)
        elif cls is str:
            if "\x00" in value or _has_surrogates(value):
                # HDF5 strings end at NUL and must be UTF-8: keep the exact
                # code points as opaque bytes instead.
                raw = value.encode("utf-8", "surrogatepass")
                self.scalar(parent, name, np.void(raw), "str")
            else:
                self.scalar(parent, name, value, "str", dtype=h5py.string_dtype())
        elif cls in (bytes, bytearray):
            data = np.void(bytes(value)) if value else h5py.Empty("u1")
            self.scalar(parent, name, data, cls.__name__)
        elif cls in (list, tuple, set, frozenset):
            self.sequence(parent, name, value, cls.__name__)
        elif cls is dict:
            if any(type(k) is not str for k in value):
                self._unsupported(parent, name, value)
            else:
                group = parent.create_group(name, track_order=True)
                for key, item in value.items():
                    self.write(group, escape_name(key), item)
        elif (cls.__module__, cls.__name__) == _RECORDING:
            self.recording(parent, name, value)
        else:
            self._unsupported(parent, name, value)

    def sequence(self, parent: Any, name: str, value: Any, ptype: str) -> None:
        packed = _homogeneous(value)
        if packed is not None:
            ds = self.array(parent, name, packed[1])
            ds.attrs[TYPE_ATTR] = ptype
            ds.attrs[ITEMS_ATTR] = packed[0]
            return
        group = parent.create_group(name, track_order=True)
        group.attrs[TYPE_ATTR] = ptype
        for i, item in enumerate(value):
            self.write(group, str(i), item)

    def recording(self, parent: Any, name: str, rec: Any) -> None:
        group = parent.create_group(name, track_order=True)
        group.attrs[TYPE_ATTR] = "Recording"
        data = rec.data
        if data.dtype.kind == "O":
            # A table mixing text and numbers (a Clampfit results sheet): one
            # member per column, each as uniform as its cells allow.
            self.write(group, "data", [data[:, j].tolist() for j in range(data.shape[1])])
            group["data"].attrs["rows"] = data.shape[0]
        else:
            self.write(group, "data", data)
        for attr in ("columns", "units", "header", "label", "path", "layout", "attrs"):
            _set_attr(group, attr, getattr(rec, attr, None))

    def _unsupported(self, parent: Any, name: str, value: Any) -> None:
        if self.on_unsupported != "pickle":
            raise _Unsupported(_type_name(value))
        try:
            data = pickle.dumps(value, protocol=5)
        except Exception as exc:
            raise _Unsupported(f"{_type_name(value)} (not picklable either: {exc})") from exc
        self.scalar(parent, name, np.void(data), "pickle")
        self.pickled.append(_type_name(value))


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _set_attr(obj: Any, name: str, value: Any) -> None:
    """Store a JSON-able value as an attribute: natively when HDF5 can, else as JSON.

    Names of JSON-encoded attributes are listed in the ``json_attributes``
    attribute so that readers can decode them.
    """
    name = escape_name(name)
    native = type(value) in (str, bool, float) or (
        type(value) is int and -(2**63) <= value < 2**63
    )
    if native:
        try:
            obj.attrs[name] = value
            return
        except (ValueError, TypeError, UnicodeEncodeError):
            pass  # NUL or surrogates in a str: JSON escapes them
    obj.attrs[name] = json.dumps(value, default=repr)
    encoded = json.loads(obj.attrs.get("json_attributes", "[]"))
    obj.attrs["json_attributes"] = json.dumps(sorted({*encoded, name}))


def _get_attrs(obj: Any) -> dict[str, Any]:
    encoded = set(json.loads(obj.attrs.get("json_attributes", "[]")))
    out = {}
    for name, value in obj.attrs.items():
        if name == "json_attributes":
            continue
        if name in encoded:
            value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[unescape_name(name)] = value
    return out


# ---------------------------------------------------------------------------
# HDF5 -> values


def _read(obj: Any, unpickle: bool = False) -> Any:
    """Rebuild the Python value stored at ``obj`` (a dataset or a group)."""
    import h5py

    ptype = obj.attrs.get(TYPE_ATTR)
    if isinstance(obj, h5py.Group):
        if ptype is None or ptype == "dict":
            return {unescape_name(k): _read(v, unpickle) for k, v in obj.items()}
        if ptype in _SEQUENCES:
            members = sorted(obj, key=int)
            return _SEQUENCES[ptype](_read(obj[m], unpickle) for m in members)
        if ptype == "Recording":
            return _read_recording(obj, unpickle)
        raise ValueError(f"{obj.name}: unknown {TYPE_ATTR} {ptype!r}")
    if ptype is None:
        # [...] keeps a 0-d array an array, in its stored byte order.
        return obj[...] if obj.shape == () else obj[()]
    data = obj[()]
    if ptype in _SEQUENCES:
        items = obj.attrs[ITEMS_ATTR]
        return _items_from_array(obj.asstr()[()] if items == "str" else data, items, ptype)
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
    raise ValueError(f"{obj.name}: unknown {TYPE_ATTR} {ptype!r}")


def _read_recording(group: Any, unpickle: bool) -> Any:
    from .recordings.recording import Recording

    fields = _get_attrs(group)
    fields.pop(TYPE_ATTR, None)
    data = _read(group["data"], unpickle)
    if isinstance(data, list):  # an object table stored column by column
        table = np.empty((int(group["data"].attrs["rows"]), len(data)), dtype=object)
        for j, column in enumerate(data):
            table[:, j] = column
        data = table
    return Recording(data, **fields)


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
    """
    import h5py

    with h5py.File(path, "r") as f:
        sessions: dict[str, dict[str, Any]] = {}
        meta: dict[str, dict[str, Any]] = {}
        for gname, group in f["sessions"].items():
            name = unescape_name(gname)
            sessions[name] = {unescape_name(k): _read(v, unpickle) for k, v in group.items()}
            meta[name] = _get_attrs(group)
        out: dict[str, Any] = {"sessions": sessions}
        if "merged" in f:
            merged = out["merged"] = {}
            index = f.get("merged_index", {})
            for dname, obj in f["merged"].items():
                key = unescape_name(dname)
                merged[key] = _read(obj, unpickle)
                if dname in index:
                    _unstack(obj, index[dname][()], key, sessions)
        if metadata:
            out["metadata"] = meta
            out["attrs"] = _get_attrs(f)
    return out


def _unstack(obj: Any, rows: np.ndarray, key: str, sessions: dict[str, dict[str, Any]]) -> None:
    """Hand each session its slice of a stacked /merged dataset."""
    arr = obj[()]
    stype = obj.attrs["session_type"]
    for session, start, stop in rows:
        name = unescape_name(session.decode() if isinstance(session, bytes) else session)
        part = arr[start:stop]
        value = (
            part if stype == "ndarray" else _items_from_array(part, obj.attrs[ITEMS_ATTR], stype)
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


_KEY_FLUSH = 1 << 20  # bytes buffered per stacked key before an append
_ALL_FLUSH = 64 << 20  # bytes buffered over all keys: bounds memory (issue 4)
_CHUNK = 1 << 20


def _stackable(value: Any) -> tuple[tuple[Any, ...], np.ndarray | None] | None:
    """``(signature, array)`` when ``value`` can be one slice of a stacked dataset.

    Values with one signature concatenate along axis 0 into an array from
    which every value comes back exactly by slicing.
    """
    if _is_array(value):
        if _numeric(value.dtype) and value.ndim >= 1 and all(value.shape[1:]):
            return ("ndarray", None, value.dtype.str, value.shape[1:]), value
        return None
    if type(value) in (list, tuple):
        if not value:
            return (type(value).__name__, None, None, None), None
        packed = _homogeneous(value)
        if packed is not None and packed[0] != "str" and all(packed[1].shape[1:]):
            items, arr = packed
            return (type(value).__name__, items, arr.dtype.str, arr.shape[1:]), arr
    return None


def _chunks(row_shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    row = list(row_shape)
    rows = max(1, _CHUNK // max(1, itemsize * int(np.prod(row, dtype=np.int64))))
    while rows == 1 and itemsize * int(np.prod(row, dtype=np.int64)) > _CHUNK:
        big = int(np.argmax(row))
        row[big] = (row[big] + 1) // 2
    return (rows, *row)


class _Stack:
    __slots__ = ("dataset", "length", "pending", "pending_bytes", "rows", "sig")

    def __init__(self, sig: tuple[Any, ...]) -> None:
        self.sig = sig
        self.rows: list[tuple[str, int, int]] = []
        self.length = 0
        self.pending: list[np.ndarray] = []
        self.pending_bytes = 0
        self.dataset: Any = None

    def accepts(self, sig: tuple[Any, ...]) -> bool:
        # An empty list fits any list; it says nothing about item types.
        return sig == self.sig or (sig[0] == self.sig[0] and None in (sig[2], self.sig[2]))


class _Exporter:
    """One export: the open temporary file, the options and the report."""

    def __init__(self, f: Any, dm: Any, options: dict[str, Any], report: ExportReport) -> None:
        self.f = f
        self.dm = dm
        self.report = report
        self.on_unsupported = options["on_unsupported"]
        self.writer = _Writer(options["compression"], self.on_unsupported)
        self.merged = options["merged"]
        self.sessions = f.create_group("sessions", track_order=True)
        self.stacks: dict[str, _Stack] = {}
        self.demoted: dict[str, list[str]] = {}  # key -> sessions holding it, in order
        self.pending_bytes = 0

    def write_value(self, group: Any, session: str, key: str, value: Any) -> None:
        name = escape_name(key)
        before = len(self.writer.pickled)
        try:
            self.writer.write(group, name, value)
        except _Unsupported as exc:
            if name in group:
                del group[name]
            if self.on_unsupported == "error":
                raise UnsupportedValueError(session, key, exc.type_name) from None
            self.report.skipped.append((session, key, exc.type_name))
            return
        if len(self.writer.pickled) > before:
            self.report.pickled.append((session, key, ", ".join(self.writer.pickled[before:])))
        self.report.values += 1
        if self.merged:
            self.demoted.setdefault(key, []).append(escape_name(session))

    def add(self, group: Any, session: str, key: str, value: Any) -> None:
        if not self.merged or key in self.demoted:
            self.write_value(group, session, key, value)
            return
        if type(value) is _NpyFile:
            value = value.load()
        found = _stackable(value)
        stack = self.stacks.get(key)
        if found is None or (stack is not None and not stack.accepts(found[0])):
            self.demote(key)
            self.write_value(group, session, key, value)
            return
        sig, arr = found
        if stack is None:
            stack = self.stacks[key] = _Stack(sig)
        elif stack.sig[2] is None:
            stack.sig = sig
        n = 0 if arr is None else len(arr)
        stack.rows.append((escape_name(session), stack.length, stack.length + n))
        stack.length += n
        self.report.values += 1
        if n:
            stack.pending.append(arr)
            stack.pending_bytes += arr.nbytes
            self.pending_bytes += arr.nbytes
            if stack.pending_bytes >= _KEY_FLUSH:
                self.flush(key, stack)
            if self.pending_bytes >= _ALL_FLUSH:
                for k, s in self.stacks.items():
                    self.flush(k, s)

    def flush(self, key: str, stack: _Stack) -> None:
        if not stack.pending:
            return
        data = stack.pending[0] if len(stack.pending) == 1 else np.concatenate(stack.pending)
        if stack.dataset is None:
            group = self.f.require_group("merged")
            dtype = np.dtype(stack.sig[2])
            row = stack.sig[3]
            kw = {"compression": self.writer.compression} if self.writer.compression else {}
            stack.dataset = group.create_dataset(
                escape_name(key),
                shape=(0, *row),
                maxshape=(None, *row),
                dtype=dtype,
                chunks=_chunks(row, dtype.itemsize),
                **kw,
            )
        start = stack.dataset.shape[0]
        stack.dataset.resize(start + len(data), axis=0)
        stack.dataset[start:] = data
        self.pending_bytes -= stack.pending_bytes
        stack.pending, stack.pending_bytes = [], 0

    def demote(self, key: str) -> None:
        """Stop stacking ``key``: write what was stacked into its session groups."""
        self.demoted.setdefault(key, [])
        stack = self.stacks.pop(key, None)
        if stack is None:
            return
        stored = 0 if stack.dataset is None else stack.dataset.shape[0]
        tail = np.concatenate(stack.pending) if stack.pending else None
        self.pending_bytes -= stack.pending_bytes
        kind, items = stack.sig[0], stack.sig[1] or "float"
        for session, start, stop in stack.rows:
            if stop <= stored:
                part = stack.dataset[start:stop]
            elif tail is not None and start >= stored:
                part = tail[start - stored : stop - stored]
            else:
                part = np.empty(0)
            value = part if kind == "ndarray" else _items_from_array(part, items, kind)
            self.report.values -= 1  # counted again by write_value
            self.write_value(self.sessions[session], unescape_name(session), key, value)
        if stack.dataset is not None:
            del self.f["merged"][escape_name(key)]

    def finish_merged(self) -> None:
        import h5py

        group = self.f.require_group("merged")
        index_group = None
        row_dtype = np.dtype([("session", h5py.string_dtype()), ("start", "<i8"), ("stop", "<i8")])
        for key, stack in self.stacks.items():
            self.flush(key, stack)
            if stack.dataset is None:  # only empty values
                dtype = np.dtype(stack.sig[2] or "f8")
                stack.dataset = group.create_dataset(
                    escape_name(key), shape=(0, *(stack.sig[3] or ())), dtype=dtype
                )
            kind = stack.sig[0]
            if kind != "ndarray":
                stack.dataset.attrs[TYPE_ATTR] = "list"
                stack.dataset.attrs[ITEMS_ATTR] = stack.sig[1] or "float"
            stack.dataset.attrs["session_type"] = kind
            if index_group is None:
                index_group = self.f.create_group("merged_index", track_order=True)
            index_group.create_dataset(
                escape_name(key), data=np.array(stack.rows, dtype=row_dtype)
            )
            self.report.merged.append(key)
            self.report.stacked.append(key)
        for key, sessions in self.demoted.items():
            self.merge_from_file(group, key, sessions)

    def merge_from_file(self, group: Any, key: str, sessions: list[str]) -> None:
        name = escape_name(key)
        objs = [self.sessions[s][name] for s in sessions if name in self.sessions[s]]
        if not objs:
            return
        plain = all(
            TYPE_ATTR not in o.attrs
            and hasattr(o, "dtype")
            and o.ndim >= 1
            and o.shape[1:] == objs[0].shape[1:]
            for o in objs
        )
        if plain:
            # Every value is an array of one row shape: concatenate on disk,
            # one value in memory at a time, as get_merged would in memory.
            dtype = np.result_type(*[o.dtype for o in objs])
            total = sum(o.shape[0] for o in objs)
            out = self._empty(group, name, total, objs[0].shape[1:], dtype)
            start = 0
            for o in objs:
                stop = start + o.shape[0]
                if stop > start:
                    out[start:stop] = o[()]
                start = stop
            self.report.merged.append(key)
            return
        try:
            value = self.dm.get_merged(key)
        except (TypeError, ValueError) as exc:
            self.report.not_merged[key] = str(exc)
            return
        try:
            self.writer.write(group, name, value)
        except _Unsupported as exc:
            if name in group:
                del group[name]
            if self.on_unsupported == "error":
                raise UnsupportedValueError("<merged>", key, exc.type_name) from None
            self.report.skipped.append(("<merged>", key, exc.type_name))
            return
        self.report.merged.append(key)

    def _empty(
        self, group: Any, name: str, total: int, row: tuple[int, ...], dtype: np.dtype
    ) -> Any:
        kw: dict[str, Any] = {}
        if self.writer.compression and total and all(row):
            kw["compression"] = self.writer.compression
        return group.create_dataset(name, shape=(total, *row), dtype=dtype, **kw)


def _matcher(match: Union[str, Callable[[str], bool], None]) -> Callable[[str], bool]:
    if match is None:
        return lambda key: True
    if isinstance(match, str):
        return lambda key: key.startswith(match)
    if callable(match):
        return match
    raise TypeError(f"match must be a key prefix (str) or a callable, not {type(match).__name__}")


def _progress(items: Iterable[Any], total: int | None, progress: bool | None) -> Any:
    # A bar only for a person watching: never in logs, pipes or CI (issue 4).
    if progress is False or not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, unit="session", file=sys.stderr, leave=False)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
            raise ExportError(path, "the file exists (use overwrite=True to replace it)") from None
        except OSError:  # no hard links on this filesystem
            if os.path.lexists(path):
                raise ExportError(
                    path, "the file exists (use overwrite=True to replace it)"
                ) from None
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
    match: Union[str, Callable[[str], bool], None] = None,
    merged: bool = False,
    compression: str | None = None,
    overwrite: bool = False,
    on_unsupported: str = "error",
    progress: bool | None = None,
    *,
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
        raise ExportError(path, "the file exists (use overwrite=True to replace it)")
    if not os.path.isdir(folder):
        raise ExportError(path, f"no such folder {folder}")

    import h5py

    started = time.perf_counter()
    report = ExportReport(path=path)
    options = {"compression": compression, "on_unsupported": on_unsupported, "merged": merged}
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            _write_file(f, dm, selected, options, report, progress)
        if fsync:
            _fsync(tmp)
        _publish(tmp, path, overwrite, fsync)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, ExportError):
            raise ExportError(path, f"{type(exc).__name__}: {exc}") from exc
        raise
    report.nbytes = os.path.getsize(path)
    report.seconds = time.perf_counter() - started
    return report


def _side_files(reader: Any) -> list[tuple[str, str, int]]:
    try:
        return list(reader.side_files())
    except (AttributeError, OSError):
        return []


_SLAB = 4 << 20  # bytes per read-and-write step of a side file


class _NpyFile:
    """A large array kept in a session side file (a plain ``.npy``), not yet read.

    Written slab by slab through one small buffer, so a large value is never
    whole in memory and the export keeps near raw h5py speed (issue 4).
    """

    __slots__ = ("dtype", "offset", "path", "shape")

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
        self.path, self.shape, self.dtype, self.offset = path, shape, dtype, offset

    @classmethod
    def open(cls, path: str, size: int) -> _NpyFile | None:
        """Read the header; None for anything unusual (the caller then loads normally)."""
        from numpy.lib import format as npy

        try:
            with open(path, "rb") as fh:
                version = npy.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = npy.read_array_header_1_0(fh)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = npy.read_array_header_2_0(fh)
                else:
                    return None
                offset = fh.tell()
        except (OSError, ValueError):
            return None
        nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if fortran or not _numeric(dtype) or not shape or offset + nbytes != size:
            return None
        return cls(path, tuple(shape), dtype, offset)

    def load(self) -> np.ndarray:
        return np.load(self.path, allow_pickle=False)


def _write_file(
    f: Any,
    dm: Any,
    selected: Callable[[str], bool],
    options: dict[str, Any],
    report: ExportReport,
    progress: bool | None,
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
    exporter = _Exporter(f, dm, options, report)
    try:
        total: int | None = len(dm.session_filenames())
    except Exception:
        total = None
    for reader in _progress(dm.iter_sessions(), total, progress):
        try:
            group = exporter.sessions.create_group(escape_name(reader.name), track_order=True)
            for name, value in (reader.metadata or {}).items():
                _set_attr(group, name, value)
            side = {key: (path, size) for key, path, size in _side_files(reader)}
            # Only selected values are loaded, one at a time (streaming).
            for key in reader.keys():  # noqa: SIM118 (a reader is not a dict)
                if selected(key):
                    value = _NpyFile.open(*side[key]) if key in side else None
                    exporter.add(group, reader.name, key, reader[key] if value is None else value)
                    del value
            report.sessions += 1
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()
    if options["merged"]:
        exporter.finish_merged()
