"""pandas DataFrames and Series in the HDF5 schema: one dataset per column.

A DataFrame is a group: its index in ``index``, its columns in the group
``columns`` (one member each, in order), and what HDF5 cannot say by itself
(labels, names, pandas dtypes, timezones) in attributes, so that plain h5py
or MATLAB reads every column and :func:`read_pandas` gives back the same
frame.  pandas is imported only when a pandas value is met.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .._sidecodec import masked_arrays
from .dtypes import stored_dtype
from .schema import TYPE_ATTR, Unsupported, Writer, escape_name, has_surrogates

#: ``python_type`` of the two pandas values.
PANDAS_TYPES = ("pandas.DataFrame", "pandas.Series")
#: Attribute of a column: its pandas dtype, as ``str(dtype)``.
PANDAS_DTYPE_ATTR = "pandas_dtype"
#: Attribute of a timezone-aware column: the timezone; the data is UTC.
TZ_ATTR = "tz"
#: Attribute of a text column whose items are JSON texts (``"JSON"``).
ENCODING_ATTR = "encoding"
#: Attribute of a RangeIndex: ``[start, stop, step]`` as JSON.
RANGE_ATTR = "range"
#: Member of a frame holding its column labels, stored as its index is.
LABELS = "column_labels"
#: Attribute of an axis: its name (a MultiIndex: its names) as JSON.
NAME_ATTR = "name"

_LABEL_TYPES = (str, int, float, bool, type(None))


def _plain_text(text: str) -> bool:
    """Whether an HDF5 string holds ``text``: no NUL (it ends one), valid UTF-8."""
    return "\x00" not in text and not has_surrogates(text)


def _label(value: Any) -> Any:
    """A label or name as JSON can hold it, or Unsupported."""
    if isinstance(value, np.generic):
        value = value.item()
    if type(value) not in _LABEL_TYPES:
        raise Unsupported(f"a label or name of type {type(value).__name__}")
    return value


def _kind(values: Any) -> str:
    """How a column (a Series or Index) is stored; Unsupported if it cannot be."""
    import pandas

    dtype = values.dtype
    if type(dtype) in masked_arrays():
        return "masked"
    if isinstance(dtype, pandas.CategoricalDtype):
        _kind(dtype.categories)
        return "categorical"
    if isinstance(dtype, pandas.DatetimeTZDtype):
        return "tz"
    if isinstance(dtype, pandas.StringDtype) or getattr(dtype, "kind", "") == "O":
        if all(type(x) is str and _plain_text(x) for x in values):
            return "str"
        # JSON has one null.  In a string column pd.NA is the missing value
        # and comes back from null, but an object column may hold both pd.NA
        # and None, which null would make one.
        text = isinstance(dtype, pandas.StringDtype)
        if not text and any(x is pandas.NA for x in values):
            raise Unsupported(f"a column of dtype {dtype} holding pd.NA")
        if all(type(x) in _LABEL_TYPES or x is pandas.NA for x in values):
            return "json"
        raise Unsupported(f"a column of dtype {dtype} holding other objects than scalars")
    if isinstance(dtype, np.dtype) and dtype.kind != "U":
        try:
            stored_dtype(dtype)
        except TypeError:
            raise Unsupported(f"a column of dtype {dtype}") from None
        return "numpy"
    raise Unsupported(f"a column of dtype {dtype}")


def _levels(index: Any) -> list[Any]:
    """The values of each level of a MultiIndex, by position."""
    # get_level_values(i) takes i as a level *name* first: with levels named
    # ["session", 0], get_level_values(0) would give the second level.
    numbered = index.set_names(list(range(index.nlevels)))
    return [numbered.get_level_values(i).rename(None) for i in range(index.nlevels)]


def _check(value: Any) -> None:
    """Raise Unsupported before anything is written, so nothing half-written stays."""
    import pandas

    axes = [value.index] + ([value.columns] if isinstance(value, pandas.DataFrame) else [])
    for axis in axes:
        if isinstance(axis, pandas.MultiIndex):
            for level in _levels(axis):
                _kind(level)
        else:
            _kind(axis)
        for name in axis.names:
            _label(name)
    if isinstance(value, pandas.DataFrame):
        if isinstance(value.columns, pandas.MultiIndex):
            raise Unsupported("MultiIndex columns")
        names = [escape_name(str(c)) for c in value.columns]
        if len(set(names)) != len(names):
            raise Unsupported("column labels that repeat as text")
        for i in range(value.shape[1]):
            _kind(value.iloc[:, i])
    else:
        _label(value.name)
        _kind(value)


def write_pandas(writer: Writer, parent: Any, name: str, value: Any) -> None:
    """Store a DataFrame or Series as ``parent[name]`` (see the schema reference)."""
    import pandas

    try:
        _check(value)
    except Unsupported as exc:
        writer._unsupported(parent, name, value, f"({exc.type_name})")
        return
    group = parent.create_group(name, track_order=True)
    _axis(writer, group, "index", value.index)
    if isinstance(value, pandas.DataFrame):
        group.attrs[TYPE_ATTR] = PANDAS_TYPES[0]
        _axis(writer, group, LABELS, value.columns)
        columns = group.create_group("columns", track_order=True)
        for i, label in enumerate(value.columns):
            _column(writer, columns, escape_name(str(label)), value.iloc[:, i])
    else:
        group.attrs[TYPE_ATTR] = PANDAS_TYPES[1]
        group.attrs[NAME_ATTR] = json.dumps(_label(value.name))
        _column(writer, group, "values", value)


def _axis(writer: Writer, parent: Any, name: str, index: Any) -> None:
    import pandas

    if isinstance(index, pandas.MultiIndex):
        group = parent.create_group(name, track_order=True)
        group.attrs[TYPE_ATTR] = "pandas.MultiIndex"
        group.attrs[NAME_ATTR] = json.dumps([_label(n) for n in index.names])
        for i, level in enumerate(_levels(index)):
            _column(writer, group, str(i), level)
        return
    obj = _column(writer, parent, name, index)
    obj.attrs[NAME_ATTR] = json.dumps(_label(index.name))
    if isinstance(index, pandas.RangeIndex):
        obj.attrs[RANGE_ATTR] = json.dumps([index.start, index.stop, index.step])


def _column(writer: Writer, parent: Any, name: str, values: Any) -> Any:
    """One column (a Series or Index) as a dataset, or a group (categorical, nullable)."""
    import h5py
    import pandas

    kind = _kind(values)
    if kind == "categorical":
        cat = values.array
        obj = parent.create_group(name, track_order=True)
        writer.write(obj, "codes", np.asarray(cat.codes))
        _column(writer, obj, "categories", cat.categories)
        obj.attrs["ordered"] = bool(cat.ordered)
    elif kind in ("str", "json"):
        items = list(values)
        if kind == "json":  # missing values and mixed scalars: one JSON text each
            items = [json.dumps(None if x is pandas.NA else x) for x in items]
        data = np.empty(len(items), dtype=object)
        data[:] = items
        obj = writer.array(parent, name, data, dtype=h5py.string_dtype())
        if kind == "json":
            obj.attrs[ENCODING_ATTR] = "JSON"
    elif kind == "masked":
        # The values where present (missing ones as 0, False or NaN, which
        # plain readers can use as they are) and a mask, True where missing.
        arr = values.array
        fill = np.nan if arr.dtype.kind == "f" else 0
        obj = parent.create_group(name, track_order=True)
        writer.write(obj, "values", arr.to_numpy(dtype=arr.dtype.numpy_dtype, na_value=fill))
        writer.write(obj, "mask", np.asarray(arr.isna()))
    elif kind == "tz":
        writer.write(parent, name, values.array.tz_convert(None).to_numpy())
        obj = parent[name]
        obj.attrs[TZ_ATTR] = str(values.dtype.tz)
    else:
        writer.write(parent, name, values.to_numpy())
        obj = parent[name]
    obj.attrs[PANDAS_DTYPE_ATTR] = _dtype_name(values.dtype)
    return obj


def _dtype_name(dtype: Any) -> str:
    """The pandas dtype as text that ``pandas.api.types.pandas_dtype`` reads back."""
    import pandas

    if (
        isinstance(dtype, pandas.StringDtype)
        and getattr(dtype, "na_value", pandas.NA) is pandas.NA
    ):
        return f"string[{dtype.storage}]"  # "string" alone names the default storage
    return str(dtype)
