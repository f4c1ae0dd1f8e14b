"""Tables and collections of arrays as side files that reading cannot turn into code.

A pandas DataFrame or Series of plain dtypes, and a dict (str keys) or list
of numpy arrays, is stored as one *value file*: its arrays as ``.npy``
parts written straight from memory, and a JSON description of how they
make up the value.  Reading parses JSON and ``.npy`` headers only (see
:mod:`._npyheader`) and calls a fixed set of pandas constructors: no
pickle, so it is as safe as reading a bare array.

Layout of a value file, every number little-endian::

    b"\\x93DMVAL" 1 0        magic and format version 1.0 (8 bytes)
    uint32 L                 length of the description
    L bytes                  the description: UTF-8 JSON, padded with spaces
                             so that the first part starts at a multiple of 64
    part 0, part 1, ...      each a whole .npy file (np.save, no pickles),
                             followed by zero bytes up to a multiple of 64

The description is ``{"kind": ..., "parts": N, ...}``; *kind* is
``"DataFrame"``, ``"Series"``, ``"dict"`` or ``"list"``.  Arrays are named
by part number.  A pandas column (or index values) is a *column node*:

* ``{"numpy": i}``: numbers, bool, complex, datetime64, timedelta64;
* ``{"tz": "Europe/Paris", "utc": i}``: timezone-aware datetimes, as UTC;
* ``{"category": node, "codes": i, "ordered": bool}``: a categorical;
* ``{"masked": "Int64", "data": i, "mask": j}``: pandas' nullable
  numbers and bools (``Int8``...``UInt64``, ``Float32``, ``Float64``,
  ``boolean``), values and a mask of the missing ones;
* ``{"text": "object" | "str", "storage": ..., "na": ..., "utf8": i,
  "ends": j, "missing": k | null}``: strings, as their UTF-8 bytes and the
  end offset of each; *missing* marks missing values (NaN or NA, after
  *na*), for pandas' string dtype, whose *storage* it gives.

An index is ``{"range": [start, stop, step], "name": ...}``,
``{"levels": [index, ...], "codes": [i, ...], "names": [...]}`` (a
MultiIndex), or
``{"values": node, "dtype": ..., "name": ..., "freq": ...}`` (*freq* only
for a DatetimeIndex or TimedeltaIndex that has one).  A DataFrame has
``"columns"`` (its column labels, an index) ``"index"`` and ``"data"``
(one column node per column, in order); a Series ``"index"``, ``"data"``
(one node) and ``"name"``; a dict ``"keys"`` and ``"data"`` (part numbers),
a list ``"data"``.  Labels and names are JSON null, str or int.

A value this encoding cannot describe exactly (object columns that are not
all str, periods, intervals, sparse or Arrow-backed columns other than str,
attrs, flags other than pandas' defaults, a label that is a tuple) is not
*encodable*: it is pickled as any other value.

The same bytes, held in memory (:func:`to_bytes`, :func:`from_bytes`), are
how a small table is stored in its SQLite row: no pickle starts with the
magic string (protocol 2 and later start with ``b"\\x80"``, and ``b"\\x93"``
is an opcode that needs a stack no pickle has yet).
"""

from __future__ import annotations

import functools
import io
import json
import struct
import sys
from typing import IO, Any

import numpy as np

from ._npyheader import NpyHeader, read_npy_data, read_npy_header

__all__ = [
    "MAGIC",
    "describe",
    "encodable",
    "from_bytes",
    "is_value_bytes",
    "masked_arrays",
    "pandas_kind",
    "read_value",
    "to_bytes",
    "write_value_file",
]

MAGIC = b"\x93DMVAL\x01\x00"
_ALIGN = 64
_LENGTH = struct.Struct("<I")
# Parts smaller than this skip np.save (see write_value_file).
_SMALL_PART = 1 << 16
# np.save writes the header of a 1-d or 2-d array of a plain dtype in 128 bytes.
_SHORT_HEADER = 128
# Descriptions are small: a longer one is damage, not a value.
_MAX_DESCRIPTION = 1 << 24


class _NotEncodable(Exception):
    """The value holds something the encoding cannot give back exactly."""


def _pandas() -> Any:
    # Only a value that is already a pandas object needs pandas: a writer of
    # plain values never imports it.
    return sys.modules.get("pandas")


def pandas_kind(value: Any) -> str | None:
    """``"DataFrame"`` or ``"Series"`` if *value* is one (a subclass too), else None.

    Never imports pandas: a pandas value exists only once pandas is imported,
    so a process that stores or shows plain values never pays for it.
    """
    pd = _pandas()
    if pd is None:
        return None
    if isinstance(value, pd.DataFrame):
        return "DataFrame"
    if isinstance(value, pd.Series):
        return "Series"
    return None


def _is_plain(array: Any) -> bool:
    return type(array) is np.ndarray and not array.dtype.hasobject


def _label(name: Any) -> Any:
    if name is None or type(name) in (str, int):
        return name
    raise _NotEncodable(f"label {name!r:.40}")


def _check_metadata(value: Any) -> None:
    """Refuse a DataFrame or Series whose attrs or flags the description has no place for."""
    if value.attrs:
        raise _NotEncodable("attrs")
    # pandas' only flag so far; a table refusing duplicate labels must keep refusing them.
    if not value.flags.allows_duplicate_labels:
        raise _NotEncodable("flags")


class _Encoder:
    """Turns a value into a description and the list of arrays it names."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def part(self, array: np.ndarray) -> int:
        self.parts.append(array)
        return len(self.parts) - 1

    def value(self, value: Any) -> dict[str, Any]:
        pd = _pandas()
        if type(value) is dict:
            if not all(type(k) is str and _is_plain(v) for k, v in value.items()):
                raise _NotEncodable("a dict of other than str keys and arrays")
            data = [self.part(v) for v in value.values()]
            return {"kind": "dict", "keys": list(value), "data": data}
        if type(value) is list:
            if not all(_is_plain(v) for v in value):
                raise _NotEncodable("a list of other than arrays")
            return {"kind": "list", "data": [self.part(v) for v in value]}
        if pd is not None and type(value) is pd.DataFrame:
            _check_metadata(value)
            return {
                "kind": "DataFrame",
                "columns": self.index(value.columns),
                "index": self.index(value.index),
                # items() goes by position: duplicate labels are fine.
                "data": [self.column(column) for _, column in value.items()],
            }
        if pd is not None and type(value) is pd.Series:
            _check_metadata(value)
            return {
                "kind": "Series",
                "index": self.index(value.index),
                "data": self.column(value),
                "name": _label(value.name),
            }
        raise _NotEncodable(type(value).__name__)

    def index(self, index: Any) -> dict[str, Any]:
        pd = _pandas()
        name = _label(index.name)
        if type(index) is pd.RangeIndex:
            return {"range": [index.start, index.stop, index.step], "name": name}
        if type(index) is pd.MultiIndex:
            return {
                "levels": [self.index(level) for level in index.levels],
                "codes": [self.part(np.asarray(codes)) for codes in index.codes],
                "names": [_label(n) for n in index.names],
            }
        node = {"values": self.column(index), "dtype": str(index.dtype), "name": name}
        freq = getattr(index, "freqstr", None)  # of a DatetimeIndex or TimedeltaIndex
        if freq is not None:
            node["freq"] = freq
        return node

    def column(self, column: Any) -> dict[str, Any]:
        pd = _pandas()
        dtype = column.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
            return {"numpy": self.part(np.ascontiguousarray(column.to_numpy()))}
        if isinstance(dtype, pd.DatetimeTZDtype):
            tz = str(dtype.tz)
            try:  # a time zone whose name pandas does not resolve back (dateutil's)
                same = pd.DatetimeTZDtype(dtype.unit, tz) == dtype
            except (LookupError, ValueError, TypeError):
                same = False
            if not same:
                raise _NotEncodable(f"time zone {dtype.tz!r}")
            utc = pd.Series(column).dt.tz_convert("UTC").dt.tz_localize(None)
            return {"tz": tz, "utc": self.part(utc.to_numpy())}
        if isinstance(dtype, pd.CategoricalDtype):
            codes = np.asarray(pd.Series(column).cat.codes)
            category = self.index(dtype.categories)
            return {"category": category, "codes": self.part(codes), "ordered": dtype.ordered}
        if isinstance(dtype, pd.StringDtype):
            na = "NA" if dtype.na_value is pd.NA else "nan"
            return self.text(column, {"text": "str", "storage": dtype.storage, "na": na})
        if dtype == np.dtype(object):
            return self.text(column, {"text": "object"})
        if type(dtype) in masked_arrays():
            # pandas' nullable numbers and bools: values, and a mask of the missing.
            array = pd.array(column, dtype=dtype)
            missing = np.asarray(array.isna(), dtype=bool)
            values = array.to_numpy(dtype=dtype.numpy_dtype, na_value=dtype.numpy_dtype.type(0))
            return {"masked": dtype.name, "data": self.part(values), "mask": self.part(missing)}
        raise _NotEncodable(f"a column of {dtype}")

    def text(self, column: Any, node: dict[str, Any]) -> dict[str, Any]:
        items = np.asarray(column, dtype=object)
        missing = np.asarray(_pandas().isna(items), dtype=bool)
        if node["text"] == "object" and missing.any():
            raise _NotEncodable("missing values among text objects")
        present = items[~missing] if missing.any() else items
        if not all(type(s) is str for s in present):
            raise _NotEncodable("objects other than str")
        try:
            encoded = [s.encode("utf-8") for s in present]
        except UnicodeEncodeError:
            raise _NotEncodable("a str that is no UTF-8") from None
        lengths = np.zeros(len(items), np.int64)
        lengths[~missing] = [len(b) for b in encoded]
        node["utf8"] = self.part(np.frombuffer(b"".join(encoded), np.uint8))
        node["ends"] = self.part(np.cumsum(lengths))
        node["missing"] = self.part(missing) if missing.any() else None
        return node


def masked_arrays() -> dict[type, Any]:
    """pandas' nullable dtypes, each with the array type that holds values and a mask."""
    import pandas as pd

    masked: dict[type, Any] = {pd.BooleanDtype: pd.arrays.BooleanArray}
    for bits in (8, 16, 32, 64):
        masked[getattr(pd, f"Int{bits}Dtype")] = pd.arrays.IntegerArray
        masked[getattr(pd, f"UInt{bits}Dtype")] = pd.arrays.IntegerArray
    for bits in (32, 64):
        masked[getattr(pd, f"Float{bits}Dtype")] = pd.arrays.FloatingArray
    return masked


def encodable(value: Any) -> tuple[dict[str, Any], list[np.ndarray]] | None:
    """The description and arrays of *value*, or None if this encoding cannot hold it."""
    encoder = _Encoder()
    try:
        description = encoder.value(value)
    except _NotEncodable:
        return None
    description["parts"] = len(encoder.parts)
    return description, encoder.parts


def write_value_file(f: IO[bytes], description: dict[str, Any], parts: list[np.ndarray]) -> None:
    """Write a value file to the open binary file *f* (see the module's layout)."""
    text = json.dumps(description, separators=(",", ":")).encode("utf-8")
    start = len(MAGIC) + _LENGTH.size
    text += b" " * (-(start + len(text)) % _ALIGN)
    f.write(MAGIC + _LENGTH.pack(len(text)) + text)
    for array in parts:
        if array.nbytes < _SMALL_PART and array.flags.c_contiguous and array.dtype.names is None:
            # What np.save writes, without its per-call cost, which a small table's parts pay
            # several times over (a large part is written faster by np.save).
            f.write(_npy_header(array.dtype, array.shape))
            f.write(array.reshape(-1).view(np.uint8))
        else:
            np.save(f, array, allow_pickle=False)
        f.write(b"\0" * (-f.tell() % _ALIGN))


@functools.lru_cache(maxsize=1024)
def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header np.save writes for a C-ordered array of *dtype* and *shape*."""
    f = io.BytesIO()
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, fields)
    return f.getvalue()


def to_bytes(description: dict[str, Any], parts: list[np.ndarray]) -> bytes:
    """The bytes of a value file, held in memory (see :func:`write_value_file`)."""
    f = io.BytesIO()
    write_value_file(f, description, parts)
    return f.getvalue()


def is_value_bytes(data: Any) -> bool:
    """Whether *data* is bytes that start as a value file does (and so are no pickle)."""
    return type(data) is bytes and data[: len(MAGIC)] == MAGIC


def from_bytes(data: bytes) -> Any:
    """The value of the value file *data* (:func:`to_bytes`), checked as a file is.

    Raises
    ------
    ValueError
        If *data* is not a whole value file, or is damaged.
    """
    f = io.BytesIO(data)
    description, headers = _layout(f, len(data))
    parts = []
    for start, header in headers:  # each header parsed once: a small table has several
        f.seek(start + header.offset)
        parts.append(read_npy_data(f, header))
    return _build(parts, description)


def describe(f: IO[bytes], size: int) -> dict[str, Any]:
    """Read and check the description of the value file open in *f*, *size* bytes long.

    Every part's header is read and checked against the file's size, so that
    a file cut short or with parts missing is found without loading it.
    The file is left at the first part.

    Raises
    ------
    ValueError
        If the file is not a whole value file.
    """
    description, headers = _layout(f, size)
    f.seek(headers[0][0] if headers else size)
    return description


def _layout(f: IO[bytes], size: int) -> tuple[dict[str, Any], list[tuple[int, NpyHeader]]]:
    """The description of the value file in *f*, and where each part starts, with its header."""
    head = f.read(len(MAGIC) + _LENGTH.size)
    if len(head) < len(MAGIC) + _LENGTH.size or head[: len(MAGIC)] != MAGIC:
        raise ValueError("not a value file (no magic string, or another version)")
    (length,) = _LENGTH.unpack(head[len(MAGIC) :])
    if length > _MAX_DESCRIPTION:
        raise ValueError(f"a description of {length} bytes")
    text = f.read(length)
    try:
        description = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"unreadable description ({exc})") from None
    if type(description) is not dict or type(description.get("parts")) is not int:
        raise ValueError(f"a description of {description!r:.80}")
    position = len(head) + len(text)
    headers = []
    for _ in range(description["parts"]):
        header = _header_at(f, position)
        headers.append((position, header))
        position += header.size
        position += -position % _ALIGN
        if position > size:
            break
    if position != size:
        raise ValueError(f"{size} bytes, but its parts describe {position}")
    return description, headers


def _header_at(f: IO[bytes], position: int) -> NpyHeader:
    """The ``.npy`` header at *position* in *f*; *f* is left at the data that follows it."""
    f.seek(position)
    first = f.read(_SHORT_HEADER)
    try:
        header = _short_header(first)
    except ValueError:  # longer than a short one, or damaged: read_npy_header says which
        f.seek(position)
        return read_npy_header(f)
    f.seek(position + header.offset)
    return header


@functools.lru_cache(maxsize=1024)
def _short_header(first: bytes) -> NpyHeader:
    """The header that *first* starts with and holds whole.

    A table's parts share a few headers (``<f8`` of its length...): parsing
    one takes longer than reading a small table's data, so a header seen
    before is not parsed again.  The same bytes always parse the same way.
    """
    header = read_npy_header(io.BytesIO(first))
    if header.offset > len(first):
        raise ValueError("a longer header")
    return header


def read_value(f: IO[bytes], description: dict[str, Any]) -> Any:
    """The value of the value file open in *f*, from its checked *description*.

    Raises
    ------
    ValueError
        If the file is damaged or describes what this encoding never writes.
    """
    parts = []
    for _ in range(description["parts"]):
        start = f.tell()
        header = _header_at(f, start)
        parts.append(read_npy_data(f, header))
        end = start + header.size
        f.seek(end + (-end % _ALIGN))
    return _build(parts, description)


def _build(parts: list[np.ndarray], description: dict[str, Any]) -> Any:
    """The value *description* makes of *parts*; ValueError if it cannot be followed."""
    try:
        return _Decoder(parts).value(description)
    except Exception as exc:  # a damaged description makes pandas raise almost anything
        raise ValueError(f"a description this reader cannot follow ({exc!r:.200})") from None


def _objects(node: Any) -> bool:
    """Whether column *node* is of str objects (dtype object)."""
    return type(node) is dict and node.get("text") == "object"


class _Decoder:
    """Builds a value back from its description and its arrays."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts

    def part(self, number: Any) -> np.ndarray:
        if type(number) is not int or number < 0:
            raise ValueError(f"part {number!r:.40}")
        return self.parts[number]

    def value(self, d: dict[str, Any]) -> Any:
        kind = d["kind"]
        if kind == "dict":
            if not all(type(k) is str for k in d["keys"]) or len(d["keys"]) != len(d["data"]):
                raise ValueError("dict keys")
            return {k: self.part(i) for k, i in zip(d["keys"], d["data"])}
        if kind == "list":
            return [self.part(i) for i in d["data"]]
        import pandas as pd

        if kind == "Series":
            data = d["data"]
            return pd.Series(
                self.column(data),
                index=self.index(d["index"]),
                name=d["name"],
                dtype=object if _objects(data) else None,
                copy=False,
            )
        if kind == "DataFrame":
            columns = self.index(d["columns"])
            index = self.index(d["index"])
            data = {i: self.column(node) for i, node in enumerate(d["data"])}
            frame = pd.DataFrame(data, index=index, copy=False)
            # pandas 3 infers its str dtype from columns of str objects.
            objects = {i: object for i, node in enumerate(d["data"]) if _objects(node)}
            if objects:
                frame = frame.astype(objects)
            frame.columns = columns
            return frame
        raise ValueError(f"kind {kind!r:.40}")

    def index(self, d: dict[str, Any]) -> Any:
        import pandas as pd

        if "range" in d:
            start, stop, step = (int(n) for n in d["range"])
            return pd.RangeIndex(start, stop, step, name=d["name"])
        if "levels" in d:
            levels = [self.index(level) for level in d["levels"]]
            codes = [self.part(i) for i in d["codes"]]
            return pd.MultiIndex(levels=levels, codes=codes, names=d["names"])
        values = self.column(d["values"])
        dtype = d["dtype"]
        if not isinstance(values, np.ndarray) and str(values.dtype) == dtype:
            dtype = None  # already of it: pandas would check the values all over again
        index = pd.Index(values, dtype=dtype, name=d["name"], copy=False)
        if "freq" not in d:
            return index
        if isinstance(index, pd.DatetimeIndex):
            return pd.DatetimeIndex(index, freq=str(d["freq"]))
        return pd.TimedeltaIndex(index, freq=str(d["freq"]))

    def column(self, d: dict[str, Any]) -> Any:
        import pandas as pd

        if "numpy" in d:
            return self.part(d["numpy"])
        if "tz" in d:
            utc = pd.DatetimeIndex(self.part(d["utc"])).tz_localize("UTC")
            return pd.array(utc.tz_convert(str(d["tz"])))
        if "category" in d:
            categories = self.index(d["category"])
            dtype = pd.CategoricalDtype(categories, ordered=bool(d["ordered"]))
            return pd.Categorical.from_codes(self.part(d["codes"]), dtype=dtype)
        if "text" in d:
            return self.text(d)
        if "masked" in d:
            dtype = pd.api.types.pandas_dtype(str(d["masked"]))
            array_type = masked_arrays()[type(dtype)]  # KeyError for any other dtype
            values = self.part(d["data"]).astype(dtype.numpy_dtype, copy=False)
            return array_type(values, self.part(d["mask"]).astype(bool))
        raise ValueError(f"column {sorted(d)!r:.80}")

    def text(self, d: dict[str, Any]) -> Any:
        data = self.part(d["utf8"]).tobytes()
        ends = self.part(d["ends"]).tolist()
        starts = [0, *ends[:-1]]
        items = np.empty(len(ends), dtype=object)
        items[:] = [data[a:b].decode("utf-8") for a, b in zip(starts, ends)]
        if d["text"] == "object":
            return items
        import pandas as pd

        storage = str(d["storage"])
        if d["na"] == "NA":
            # pandas before 2.3 knows this one only, and takes no na_value.
            na, dtype = pd.NA, pd.StringDtype(storage)
        else:
            na, dtype = np.nan, pd.StringDtype(storage, na_value=np.nan)
        if d["missing"] is not None:
            items[self.part(d["missing"]).astype(bool)] = na
        return pd.array(items, dtype=dtype)
