"""The HDF5 schema: how each Python value maps to HDF5 objects, and back.

One value becomes one dataset or one group (the schema in the reference).
Where the HDF5 object alone does not say which Python type it came from, the
string attribute ``python_type`` does; :func:`datamanager.hdf5.load.read`
reverses :class:`Writer` exactly.  Names go through :func:`escape_name`.

h5py is imported inside the functions: ``import datamanager`` must stay cheap
for simulation processes that only write.
"""

from __future__ import annotations

import json
import pickle
import re
from typing import Any, Callable

import numpy as np

from ..filestore import StoredFile
from ..recordings.recording import Recording
from .dtypes import (
    TYPED_ARRAY,
    bad_text,
    longest_string,
    numeric,
    stored_dtype,
    typed_array_attrs,
    unicode_width_problem,
)
from .files import FILES_GROUP, copy_file

__all__ = ["PickledValue", "escape_name", "unescape_name"]

#: Attribute naming the Python type of a dataset or group; absent on plain
#: numpy arrays (datasets) and str-keyed dicts (groups), the common cases.
TYPE_ATTR = "python_type"
#: Attribute of an array-backed list/tuple/set: the Python type of its items.
ITEMS_ATTR = "items"
#: The one attribute of a session group: its metadata as JSON text.  One
#: attribute rather than one per field, because each HDF5 attribute costs
#: about as much as a small dataset (``benchmarks/bench_hdf5.py``).
METADATA_ATTR = "metadata"
#: Attribute of a stacked ``/merged/<key>`` whose per-session values are tuples.
SESSION_TYPE_ATTR = "session_type"
#: 2: session metadata in one JSON attribute (1: one attribute per field).
#: 3: StoredFile values, their bytes once each under ``/files/<sha256>``.
#: 4: string, datetime64/timedelta64 and structured arrays.
SCHEMA_VERSION = 4
#: Attributes of a StoredFile value besides its sha256, which is its data.
STORED_FILE_ATTRS = ("name", "size", "original")

_PY_SCALARS = {bool: np.bool_, int: np.int64, float: np.float64, complex: np.complex128}
_PANDAS = ("DataFrame", "Series")  # by name: pandas is imported only if met
SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}

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


class Unsupported(Exception):
    """Internal: a (possibly nested) value the schema cannot hold."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name


def type_name(value: Any) -> str:
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


def is_array(value: Any) -> bool:
    # Exact types only: a subclass (np.ma.MaskedArray, np.matrix) would lose
    # what makes it a subclass.  np.memmap is what a store may hand back.
    return type(value) is np.ndarray or isinstance(value, np.memmap)


def homogeneous(items: Any) -> tuple[str, np.ndarray] | None:
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
        if any(type(x) is not str or "\x00" in x or has_surrogates(x) for x in items):
            return None
        return "str", np.array(items, dtype=object)
    if isinstance(first, np.generic) and numeric(first.dtype):
        if all(type(x) is cls and x.dtype == first.dtype for x in items):
            return "numpy.scalar", np.array(items, dtype=first.dtype)
        return None
    if (is_array(first) and numeric(first.dtype)) and all(
        is_array(x) and x.dtype == first.dtype and x.shape == first.shape for x in items
    ):
        return "ndarray", np.stack(items).astype(first.dtype, copy=False)
    return None


def items_from_array(arr: np.ndarray, items: str, ptype: str) -> Any:
    if items == "ndarray":
        seq: Any = [arr[i, ...] for i in range(len(arr))]
    elif items == "numpy.scalar":
        seq = list(arr)
    else:
        seq = arr.tolist()
    return SEQUENCES[ptype](seq)


class Writer:
    """Writes Python values into an open HDF5 group following the schema."""

    def __init__(
        self,
        compression: str | None,
        on_unsupported: str,
        checkpoint: Callable[[], None] | None = None,
    ) -> None:
        self.compression = compression
        self.on_unsupported = on_unsupported
        # Called between windows of a large stored file, where a held-back
        # Ctrl-C may be raised.
        self.checkpoint = checkpoint or (lambda: None)
        #: The sha256 of each file copied into ``/files``, in order (see :meth:`drop_files`).
        self.files: list[str] = []
        self.pickled: list[str] = []
        self._types: dict[np.dtype, Any] = {}
        self._lcpl: Any = None

    def link_props(self) -> Any:
        """Link-creation properties naming links in UTF-8, as h5py's own."""
        if self._lcpl is None:
            from h5py import h5p, h5t

            self._lcpl = h5p.create(h5p.LINK_CREATE)
            self._lcpl.set_char_encoding(h5t.CSET_UTF8)
        return self._lcpl

    def plain_array(self, parent: Any, name: str, arr: np.ndarray) -> None:
        """A numeric array as a contiguous dataset, through h5py's low-level API.

        Half the cost of ``create_dataset`` per dataset, which matters when
        exporting many small arrays (measured with ``benchmarks/bench_hdf5.py``).
        """
        from h5py import h5d, h5s, h5t

        tid = self._types.get(arr.dtype)
        if tid is None:
            tid = self._types[arr.dtype] = h5t.py_create(arr.dtype, logical=True)
        space = h5s.create_simple(arr.shape) if arr.ndim else h5s.create(h5s.SCALAR)
        dsid = h5d.create(parent.id, name.encode("utf-8"), tid, space, lcpl=self.link_props())
        if arr.size:
            dsid.write(h5s.ALL, h5s.ALL, np.ascontiguousarray(arr))
        dsid.close()

    def array(self, parent: Any, name: str, arr: np.ndarray, **kw: Any) -> Any:
        import h5py

        if self.compression and arr.ndim and arr.size:
            kw.setdefault("compression", self.compression)
        if arr.dtype.kind == "O":  # a list of str: variable-length UTF-8 strings
            kw["dtype"] = h5py.string_dtype()
        return parent.create_dataset(name, data=arr, **kw)

    def typed_array(self, parent: Any, name: str, arr: np.ndarray) -> None:
        """A string, datetime or structured array (see :mod:`datamanager.hdf5.dtypes`)."""
        dtype = arr.dtype
        if dtype.kind == "S":  # HDF5 fixed-length strings: h5py reads them as they were
            self.array(parent, name, arr)
            return
        if dtype.kind == "U":
            if bad_text(arr):
                self._unsupported(parent, name, arr, "holding NUL or lone surrogates")
                return
            # The loader refuses what it cannot tell from a crafted width.
            problem = unicode_width_problem(dtype, longest_string(arr), arr.size)
            if problem:
                self._unsupported(parent, name, arr, problem)
                return
            ds = self.array(parent, name, arr.astype(object))
        else:
            try:
                storage = stored_dtype(dtype)
            except TypeError as exc:
                self._unsupported(parent, name, arr, f"({exc})" if dtype.names else "")
                return
            ds = self.array(parent, name, arr.view(storage))
        ds.attrs[TYPE_ATTR] = TYPED_ARRAY
        for attr, value in typed_array_attrs(dtype).items():
            ds.attrs[attr] = value

    def scalar(self, parent: Any, name: str, data: Any, ptype: str, **kw: Any) -> Any:
        ds = parent.create_dataset(name, data=data, **kw)
        ds.attrs[TYPE_ATTR] = ptype
        return ds

    def write(self, parent: Any, name: str, value: Any) -> None:
        """Store ``value`` as ``parent[name]``; raise Unsupported if it cannot."""
        import h5py

        cls = type(value)
        if is_array(value):
            if not numeric(value.dtype):
                self.typed_array(parent, name, value)
            elif self.compression:
                self.array(parent, name, value)
            else:
                self.plain_array(parent, name, value)
        elif isinstance(value, np.generic):
            if not numeric(value.dtype):
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
            if "\x00" in value or has_surrogates(value):
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
        elif isinstance(value, Recording):
            self.recording(parent, name, value)
        elif cls is StoredFile:
            self.stored_file(parent, name, value)
        elif cls.__module__.partition(".")[0] == "pandas" and cls.__name__ in _PANDAS:
            from .frames import write_pandas

            write_pandas(self, parent, name, value)
        else:
            self._unsupported(parent, name, value)

    def stored_file(self, parent: Any, name: str, value: StoredFile) -> None:
        """A StoredFile: its sha256 as text, its bytes once per export in ``/files``."""
        import h5py

        if copy_file(parent.file, value, self.compression, self.checkpoint):
            self.files.append(value.sha256)
        ds = self.scalar(parent, name, value.sha256, "StoredFile", dtype=h5py.string_dtype())
        for attr in STORED_FILE_ATTRS:
            set_attr(ds, attr, getattr(value, attr))

    def sequence(self, parent: Any, name: str, value: Any, ptype: str) -> None:
        packed = homogeneous(value)
        if packed is not None:
            ds = self.array(parent, name, packed[1])
            ds.attrs[TYPE_ATTR] = ptype
            ds.attrs[ITEMS_ATTR] = packed[0]
            return
        group = parent.create_group(name, track_order=True)
        group.attrs[TYPE_ATTR] = ptype
        for i, item in enumerate(value):
            self.write(group, str(i), item)

    def drop_files(self, root: Any, mark: int) -> None:
        """Remove the files copied since ``len(self.files)`` was *mark*.

        For a value left out after all (one of its parts is unsupported):
        ``/files`` holds only files that written values refer to.
        """
        for sha256 in self.files[mark:]:
            del root[FILES_GROUP][sha256]
        del self.files[mark:]

    def recording(self, parent: Any, name: str, rec: Recording) -> None:
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
            set_attr(group, attr, getattr(rec, attr))

    def _unsupported(self, parent: Any, name: str, value: Any, why: str = "") -> None:
        if self.on_unsupported != "pickle":
            raise Unsupported(f"{type_name(value)} {why}".rstrip())
        try:
            data = pickle.dumps(value, protocol=5)
        except Exception as exc:
            raise Unsupported(f"{type_name(value)} (not picklable either: {exc})") from exc
        self.scalar(parent, name, np.void(data), "pickle")
        self.pickled.append(type_name(value))


def has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def set_attr(obj: Any, name: str, value: Any) -> None:
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


def get_attrs(obj: Any) -> dict[str, Any]:
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
