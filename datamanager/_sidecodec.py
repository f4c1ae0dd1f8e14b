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
attrs, a label that is a tuple) is not *encodable*:
it is pickled as any other value.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import IO, Any

import numpy as np

from ._npyheader import read_npy_data, read_npy_header

__all__ = ["MAGIC", "describe", "encodable", "masked_arrays", "read_value", "write_value_file"]

MAGIC = b"\x93DMVAL\x01\x00"
_ALIGN = 64
_LENGTH = struct.Struct("<I")
# Descriptions are small: a longer one is damage, not a value.
_MAX_DESCRIPTION = 1 << 24


class _NotEncodable(Exception):
    """The value holds something the encoding cannot give back exactly."""


def _pandas() -> Any:
    # Only a value that is already a pandas object needs pandas: a writer of
    # plain values never imports it.
    return sys.modules.get("pandas")


def _is_plain(array: Any) -> bool:
    return type(array) is np.ndarray and not array.dtype.hasobject


def _label(name: Any) -> Any:
    if name is None or type(name) in (str, int):
        return name
    raise _NotEncodable(f"label {name!r:.40}")


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
            if value.attrs:
                raise _NotEncodable("attrs")
            return {
                "kind": "DataFrame",
                "columns": self.index(value.columns),
                "index": self.index(value.index),
                "data": [self.column(value.iloc[:, i]) for i in range(value.shape[1])],
            }
        if pd is not None and type(value) is pd.Series:
            if value.attrs:
                raise _NotEncodable("attrs")
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
        np.save(f, array, allow_pickle=False)
        f.write(b"\0" * (-f.tell() % _ALIGN))


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
    first = position = len(head) + len(text)
    for _ in range(description["parts"]):
        f.seek(position)
        header = read_npy_header(f)
        position += header.size
        position += -position % _ALIGN
        if position > size:
            break
    if position != size:
        raise ValueError(f"{size} bytes, but its parts describe {position}")
    f.seek(first)
    return description


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
        header = read_npy_header(f)
        parts.append(read_npy_data(f, header))
        end = start + header.size
        f.seek(end + (-end % _ALIGN))
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
        index = pd.Index(self.column(d["values"]), dtype=d["dtype"], name=d["name"], copy=False)
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
