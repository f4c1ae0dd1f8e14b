"""numpy dtypes in the HDF5 schema: which arrays HDF5 holds, and how.

Numeric arrays are datasets of their own dtype.  String, datetime and
structured arrays (*typed arrays*) are stored in a dtype HDF5 has, with
their numpy dtype in attributes so that the loader restores it exactly.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

#: ``python_type`` of an array whose dtype HDF5 does not carry by itself.
TYPED_ARRAY = "numpy.ndarray"
#: Attribute of a typed array: its numpy dtype, as the ``descr`` of a ``.npy``
#: header (a string such as ``<M8[ns]``; for a structured array, JSON text).
DTYPE_ATTR = "numpy_dtype"
#: Attribute of a datetime64/timedelta64 array: its unit (``ns``, ``10ms``, ...).
UNIT_ATTR = "unit"

_NUMERIC_KINDS = "biufc"
#: The most memory the padding of a unicode array past its longest string
#: may take.  Only the strings are stored, so the loader would otherwise
#: allocate whatever width a (crafted) ``numpy_dtype`` names.
MAX_UNICODE_PADDING = 64 * 2**20


def numeric(dtype: np.dtype) -> bool:
    return dtype.kind in _NUMERIC_KINDS and dtype.fields is None


def typed_array_attrs(dtype: np.dtype) -> dict[str, str]:
    """The attributes besides ``python_type`` that describe a typed array of ``dtype``."""
    # What np.lib.format.dtype_to_descr gives, without its spurious warning
    # about metadata on datetime dtypes under numpy 2.0.
    descr = dtype.str if dtype.names is None else dtype.descr
    attrs = {DTYPE_ATTR: descr if isinstance(descr, str) else json.dumps(descr)}
    if dtype.kind in "Mm":
        unit, count = np.datetime_data(dtype)
        attrs[UNIT_ATTR] = unit if count == 1 else f"{count}{unit}"
    return attrs


def stored_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype in which an array of ``dtype`` is stored, field by field.

    Numbers and byte strings as they are, datetime64/timedelta64 as int64 of
    the same byte order, structured dtypes as compounds of the same layout
    (names, offsets, itemsize) made of those; the stored array is a view of
    the original.  Raises TypeError, naming the part, for anything else
    (objects, unicode strings inside a structured dtype: HDF5 has no
    fixed-length form of them, and field names holding NUL).
    """
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return np.dtype((stored_dtype(base), shape))
    if dtype.names is not None:
        fields = [dtype.fields[n] for n in dtype.names]
        if any(len(f) > 2 for f in fields):  # titles: no HDF5 counterpart
            raise TypeError("titled fields")
        if any("\x00" in n for n in dtype.names):  # HDF5 member names end at NUL
            raise TypeError("a field name holding NUL")
        return np.dtype(
            {
                "names": list(dtype.names),
                "formats": [stored_dtype(f[0]) for f in fields],
                "offsets": [f[1] for f in fields],
                "itemsize": dtype.itemsize,
            }
        )
    if numeric(dtype) or (dtype.kind == "S" and dtype.itemsize):
        return dtype
    if dtype.kind in "Mm":
        return np.dtype("i8").newbyteorder(dtype.byteorder)
    raise TypeError(f"a field of dtype {dtype}")


def bad_text(arr: np.ndarray) -> bool:
    """Whether a unicode array holds what HDF5 strings cannot: NUL before
    the end of an item (HDF5 strings end there) or lone surrogates (no UTF-8)."""
    if not arr.size or not arr.dtype.itemsize:
        return False
    native = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    codes = np.ascontiguousarray(native).view(np.uint32).reshape(arr.size, -1)
    nul = codes == 0
    # numpy pads items with trailing NULs; only a NUL followed by text is lost.
    inner = np.logical_or.accumulate(nul, axis=1) & ~nul
    return bool(inner.any() or ((codes >= 0xD800) & (codes <= 0xDFFF)).any())


def unicode_width_problem(dtype: np.dtype, longest: int, count: int) -> str | None:
    """Why *count* strings, the longest of *longest* code points, cannot be
    an array of the unicode *dtype* in the schema; None if they can."""
    width = dtype.itemsize // 4
    if width < longest:
        return f"of {dtype} narrower than its longest string ({longest} characters)"
    if (width - longest) * 4 * count > MAX_UNICODE_PADDING:
        limit = MAX_UNICODE_PADDING >> 20
        return f"of {dtype} padding its strings (longest {longest}) by more than {limit} MiB"
    return None


def longest_string(arr: np.ndarray) -> int:
    """The length in code points of the longest item of the str array *arr*."""
    return int(np.char.str_len(arr).max()) if arr.size else 0


def dtype_from_attr(descr: str) -> np.dtype:
    """Invert the ``numpy_dtype`` attribute of a typed array.

    Only dtypes that :func:`stored_dtype` accepts come back (never objects),
    so a crafted attribute cannot make the reader view numbers as pointers.
    """

    def fields(value: Any) -> Any:  # JSON lists back into the tuples of a descr
        if isinstance(value, str):
            return value
        return [(f[0], fields(f[1]), *(tuple(x) for x in f[2:])) for f in value]

    dtype = np.lib.format.descr_to_dtype(fields(json.loads(descr)) if descr[:1] == "[" else descr)
    if dtype.kind != "U":
        try:
            stored_dtype(dtype)
        except TypeError as exc:
            raise ValueError(f"{DTYPE_ATTR} {descr!r}: {exc}") from None
    return dtype
