"""Hypothesis strategies for the values datamanager stores without pickle, and an exact check.

Shared by the value-file, HDF5 and round-trip tests: DataFrames of every
column kind (numbers, bool, text, categorical, datetime64/timedelta64 with and
without timezone, nullable numbers and bools, ``string``) and numpy arrays of
byte and unicode strings, datetimes, timedeltas and structured dtypes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.extra import pandas as hpd

from datamanager._format import SIDE_FILE_THRESHOLD

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
labels = st.one_of(st.none(), st.integers(-5, 5), text)

#: A column kind drawn as a numpy dtype, then made nullable with missing values.
_NULLABLE = {"i2": "Int16", "u8": "UInt64", "?": "boolean", "f8": "Float64", "O": "string"}


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    """DataFrames of every column kind a value file holds, some empty, odd labels."""
    names = draw(st.lists(text, max_size=5, unique=True))
    kinds = [
        draw(st.sampled_from(["f8", "i2", "u8", "?", "c16", "M8[ns]", "m8[ns]", "O"]))
        for _ in names
    ]
    columns = [
        hpd.column(n, dtype=k, elements=text if k == "O" else None) for n, k in zip(names, kinds)
    ]
    index = st.one_of(hpd.range_indexes(max_size=12), hpd.indexes(dtype="i8", max_size=12))
    frame = draw(hpd.data_frames(columns, index=index))
    frame.index.name, frame.columns.name = draw(labels), draw(labels)
    rows = len(frame)
    for name, kind in zip(names, kinds):
        change = draw(st.sampled_from(["none", "nullable", "other"]))
        if change == "nullable" and kind in _NULLABLE:
            missing = draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
            column = frame[name].astype(_NULLABLE[kind])
            frame[name] = column.mask(np.array(missing, dtype=bool))
        elif change == "other" and kind == "O":
            frame[name] = frame[name].astype("category")
        elif change == "other" and kind == "M8[ns]":
            # Within a day of datetime64[ns]'s bounds, pandas 2 cannot localize
            # a time or concatenate localized ones (OutOfBoundsDatetime).
            inner = frame[name].clip(pd.Timestamp("1678-01-01"), pd.Timestamp("2261-12-31"))
            frame[name] = inner.dt.tz_localize(draw(st.sampled_from(["UTC", "Asia/Tokyo"])))
    return frame


_units = st.sampled_from(["Y", "M", "D", "h", "m", "s", "ms", "us", "ns"])
#: Dtypes whose arrays are more than numbers: strings, datetimes, timedeltas.
typed_dtypes = st.one_of(
    hnp.unicode_string_dtypes(min_len=1, max_len=6),
    hnp.byte_string_dtypes(min_len=1, max_len=6),
    hnp.datetime64_dtypes(),
    hnp.timedelta64_dtypes(),
    st.builds(lambda u: np.dtype(f"M8[{u}]"), _units),
)
structured_dtypes = hnp.array_dtypes(
    st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.datetime64_dtypes()),
    min_size=1,
    max_size=3,
).filter(  # HDF5 has no titles, and its member names end at NUL
    lambda d: all(len(d.fields[n]) == 2 and "\x00" not in n for n in d.names)
)
#: Text that HDF5 strings hold: no NUL (it ends them), no lone surrogates.
hdf5_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=6
)


def typed_arrays(min_dims: int = 0) -> st.SearchStrategy[np.ndarray]:
    """Unicode, byte-string, datetime, timedelta and structured arrays, any byte order."""
    shapes = hnp.array_shapes(min_dims=min_dims, max_dims=2, min_side=0, max_side=4)
    return st.one_of(
        hnp.arrays(st.sampled_from(["<U6", ">U6"]), shapes, elements=hdf5_text),
        hnp.arrays(typed_dtypes.filter(lambda d: d.kind != "U"), shapes),
        hnp.arrays(structured_dtypes, shapes),
    )


@st.composite
def paddings(draw: st.DrawFn) -> np.ndarray | None:
    """An array that takes a dict or list of arrays to the side-file threshold, or None.

    Added to a small dict or list of arrays, it makes the collection a value
    file rather than a pickle in its row.  The simplest example pads.
    """
    dtype = draw(st.sampled_from(["<f8", "u1", "<i4", None]))
    if dtype is None:
        return None
    return np.arange(SIDE_FILE_THRESHOLD // np.dtype(dtype).itemsize).astype(dtype)


def same_array(got: Any, expected: np.ndarray) -> None:
    """Same type, dtype, shape and bytes (NaNs and NaTs included; padding excluded)."""
    assert type(got) is np.ndarray, type(got)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if expected.dtype.names is None:
        assert got.tobytes() == expected.tobytes()
    else:  # padding bytes between fields are not data
        for name in expected.dtype.names:
            same_array(got[name], expected[name])


def same_value(got: Any, expected: Any) -> None:
    """Exactly the same value: for pandas, dtypes, index, labels and names too."""
    assert type(got) is type(expected), (type(got), type(expected))
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected, check_exact=True, check_column_type=True)
        assert got.columns.names == expected.columns.names
        assert list(map(type, got.columns)) == list(map(type, expected.columns))
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got, expected, check_exact=True)
    elif isinstance(expected, np.ndarray):
        same_array(got, expected)
    elif isinstance(expected, dict):
        assert list(got) == list(expected)
        for key in expected:
            same_value(got[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            same_value(a, b)
    else:
        assert got == expected
