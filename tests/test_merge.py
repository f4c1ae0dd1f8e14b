"""get_merged and get_merged_matching: arrays by numpy's promotion rules,
DataFrames and Series labelled by session, refusals that name who holds what."""

from __future__ import annotations

import tempfile
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import pandas as hpd

from datamanager import DataManager

from conftest import stress_size


def write(dm: DataManager, sessions: dict[str, dict[str, Any]]) -> None:
    """One session per name, in the order given (names sort the same way)."""
    for name, values in sessions.items():
        with dm.session(name) as s:
            s.update(values)


def outcome(call: Callable[[], Any]) -> Any:
    """The answer of *call*, or its error as (type, message)."""
    try:
        return call()
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)


def assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def both_ways(dm: DataManager, call: Callable[[DataManager], Any]) -> Any:
    """``call(dm)`` read session by session, then through the index: the same answer."""
    plain = outcome(lambda: call(dm))
    dm.build_index()
    assert_same(outcome(lambda: call(dm)), plain)
    return plain


@pytest.mark.parametrize(
    "arrays, dtype",
    [
        ([np.arange(2), np.array([0.5])], np.float64),
        ([np.array([True]), np.arange(2, dtype=np.int8)], np.int8),
        ([np.arange(2, dtype=np.int32), np.array([1 + 2j])], np.complex128),
        ([np.array(["ab"]), np.array(["c"])], np.dtype("<U2")),
        ([np.array([b"x"]), np.array([b"yz"])], np.dtype("S2")),
        ([np.array([{"a": 1}], dtype=object), np.array([None], dtype=object)], object),
        ([np.arange(2, dtype=">i2"), np.arange(1, dtype=">i2")], np.dtype(">i2")),
        ([np.arange(2, dtype=">i2"), np.arange(1, dtype="<i2")], np.dtype("=i2")),
        ([np.array([1], "M8[s]"), np.array([2], "M8[ms]")], np.dtype("M8[ms]")),
        ([np.array([1], "m8[s]"), np.array([2], "m8[ms]")], np.dtype("m8[ms]")),
    ],
    ids=[
        "int-float",
        "bool-int",
        "int-complex",
        "str-str",
        "bytes-bytes",
        "object-object",
        "one-byte-order",
        "two-byte-orders",
        "datetime-units",
        "timedelta-units",
    ],
)
def test_arrays_merge_by_numpy_promotion(dm, arrays, dtype):
    write(dm, {f"s{i}": {"v": a} for i, a in enumerate(arrays)})
    merged = both_ways(dm, lambda d: d.get_merged("v"))
    assert isinstance(merged, np.ndarray) and merged.dtype == dtype
    assert merged.tolist() == [x for a in arrays for x in a.tolist()]


@pytest.mark.parametrize(
    "arrays, named",
    [
        (
            [np.arange(2), np.arange(2.0), np.array(["a", "b"])],
            "int64 (session 's0'), float64 (session 's1'), <U1 (session 's2') into <U",
        ),
        ([np.array([b"x"]), np.array(["y"])], "|S1 (session 's0'), <U1 (session 's1')"),
        ([np.array([1], dtype=object), np.arange(2)], "object (session 's0'), int64"),
        ([np.array([True]), np.array(["a"])], "bool (session 's0'), <U1 (session 's1')"),
        (
            [np.array([5]), np.array([1], "m8[s]")],
            "int64 (session 's0'), timedelta64[s] (session 's1') into timedelta64[s]",
        ),
        ([np.array([True]), np.array([1], "m8[s]")], "bool (session 's0'), timedelta64[s]"),
        (
            [np.zeros(1, [("a", "<i8")]), np.zeros(1, [("a", "<f8")])],
            "[('a', '<i8')] (session 's0'), [('a', '<f8')] (session 's1')",
        ),
    ],
    ids=[
        "int-float-str",
        "bytes-str",
        "object-int",
        "bool-str",
        "int-timedelta",
        "bool-timedelta",
        "structured-fields",
    ],
)
def test_numbers_and_text_are_refused_naming_sessions_and_dtypes(dm, arrays, named):
    write(dm, {f"s{i}": {"v": a} for i, a in enumerate(arrays)})
    error = both_ways(dm, lambda d: d.get_merged("v"))
    assert error[0] is TypeError and "cannot merge key 'v': numpy would turn" in error[1]
    assert named.replace("|S1", "S1") in error[1].replace("|S1", "S1")
    assert outcome(lambda: dm.get_merged_matching("v")) == error


def test_dtypes_without_a_common_type_are_refused(dm):
    write(dm, {"s0": {"v": np.array(["2024-01-01"], dtype="M8[D]")}, "s1": {"v": np.arange(2)}})
    error = both_ways(dm, lambda d: d.get_merged("v"))
    assert error == (
        TypeError,
        "cannot merge key 'v': numpy has no common dtype for "
        "datetime64[D] (session 's0'), int64 (session 's1')",
    )


def test_refusal_names_a_few_sessions_per_dtype(dm):
    write(dm, {f"s{i}": {"v": np.arange(i + 1)} for i in range(5)})
    write(dm, {"t": {"v": np.array(["x"])}})
    _, message = outcome(lambda: dm.get_merged("v"))
    assert "int64 (sessions 's0', 's1', 's2' and 2 more), <U1 (session 't')" in message


def test_dataframes_concatenate_labelled_by_session(dm):
    a = pd.DataFrame({"t": [0.1, 0.4], "i": [3, 7]}, index=pd.Index([10, 11], name="row"))
    b = pd.DataFrame({"t": [0.2], "v": [-60.0]}, index=pd.Index([5], name="row"))
    write(dm, {"a": {"spikes": a}, "b": {"spikes": b}})
    merged = both_ways(dm, lambda d: d.get_merged("spikes"))
    assert merged.index.names == ["session", "row"]
    assert merged.index.tolist() == [("a", 10), ("a", 11), ("b", 5)]
    # Columns only some sessions hold are NaN elsewhere; int becomes float.
    assert list(merged.columns) == ["t", "i", "v"]
    assert merged["i"].dtype == np.float64 and np.isnan(merged.loc[("b", 5), "i"])
    assert np.isnan(merged.loc["a", "v"]).all()
    pd.testing.assert_frame_equal(merged.loc["a"][["t", "i"]], a.astype({"i": float}))
    pd.testing.assert_frame_equal(merged.loc["b"][["t", "v"]], b)


def test_series_concatenate_labelled_by_session(dm):
    a = pd.Series([1, 2], name="n")
    b = pd.Series([3], name="n")
    write(dm, {"a": {"n": a}, "b": {"n": b}})
    merged = both_ways(dm, lambda d: d.get_merged("n"))
    pd.testing.assert_series_equal(merged, pd.concat([a, b], keys=["a", "b"], names=["session"]))
    pd.testing.assert_series_equal(merged.loc["b"], b)


@pytest.mark.parametrize(
    "other, type_name",
    [([1, 2], "list"), (np.arange(2), "ndarray"), (pd.Series([1.0]), "Series")],
)
def test_dataframes_mixed_with_other_values_are_refused(dm, other, type_name):
    write(dm, {"a": {"x": pd.DataFrame({"c": [1.0]})}, "b": {"x": other}})
    error = both_ways(dm, lambda d: d.get_merged("x"))
    assert error[0] is TypeError
    assert f"cannot merge key 'x': session 'b' holds a {type_name}, but session 'a'" in error[1]


def test_a_list_then_a_dataframe_is_refused(dm):
    write(dm, {"a": {"x": [1]}, "b": {"x": pd.DataFrame({"c": [1.0]})}})
    with pytest.raises(
        TypeError,
        match=r"session .b. holds a DataFrame, but merging needs list.*or pandas DataFrames",
    ):
        dm.get_merged("x")


def test_merged_matching_labels_dataframes_by_key_then_session(dm):
    frames = {
        ("a", "f/1"): pd.DataFrame({"x": [1, 2]}),
        ("b", "f/1"): pd.DataFrame({"x": [3]}),
        ("a", "f/2"): pd.DataFrame({"x": [4]}),
    }
    write(dm, {"a": {"f/1": frames["a", "f/1"], "f/2": frames["a", "f/2"]}})
    write(dm, {"b": {"f/1": frames["b", "f/1"]}})
    merged = both_ways(dm, lambda d: d.get_merged_matching("f/"))
    assert merged.index.names == ["key", "session", None]
    pd.testing.assert_frame_equal(merged.loc["f/1"], dm.get_merged("f/1"))
    pd.testing.assert_frame_equal(merged.loc[("f/1", "b")], frames["b", "f/1"])
    assert merged["x"].tolist() == [1, 2, 3, 4]


def test_merged_matching_refuses_dataframes_with_lists(dm):
    write(dm, {"a": {"k/1": pd.DataFrame({"x": [1]}), "k/2": [5]}})
    error = both_ways(dm, lambda d: d.get_merged_matching("k/"))
    assert error == (
        TypeError,
        "cannot merge the matching keys: key 'k/2' holds a list, but key 'k/1' holds a "
        "DataFrame; merging needs DataFrames in every key, or Series in every key; "
        "use get() and merge by hand",
    )
    assert both_ways(dm, lambda d: d.get_merged_matching("k/2")) == [5]


_columns = hpd.columns(
    ["a", "b", "c"],
    elements=st.one_of(st.integers(-5, 5), st.floats(allow_nan=True, width=32)),
    dtype=float,
)
_frames = st.lists(
    st.tuples(
        hpd.data_frames(_columns, index=hpd.range_indexes(max_size=4)),
        st.sets(st.sampled_from("abc")),
    ).map(lambda t: t[0][sorted(t[1])]),  # each session a subset of the columns
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=stress_size(60, 15),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_frames)
def test_merged_dataframes_equal_pandas_concat(frames: list[pd.DataFrame]):
    names = [f"s{i}" for i in range(len(frames))]
    with tempfile.TemporaryDirectory() as folder:
        dm = DataManager("frames", folder)
        write(dm, {n: {"f": f} for n, f in zip(names, frames)})
        expected = pd.concat(frames, keys=names, names=["session"])
        # Sessions without rows leave no level value (see merge_values).
        expected.index = expected.index.remove_unused_levels()
        pd.testing.assert_frame_equal(dm.get_merged("f"), expected)
        dm.build_index()
        pd.testing.assert_frame_equal(dm.get_merged("f"), expected)


def test_a_session_without_rows_leaves_no_unused_level_value(dm):
    write(dm, {"a": {"f": pd.DataFrame({"x": [1.0]})}, "b": {"f": pd.DataFrame({"x": []})}})
    merged = both_ways(dm, lambda d: d.get_merged("f"))
    assert list(merged.index.levels[0]) == ["a"] and merged["x"].tolist() == [1.0]


def test_an_export_refuses_to_merge_what_get_merged_refuses(dm, tmp_path):
    pytest.importorskip("h5py")
    from datamanager import export_hdf5

    write(
        dm,
        {
            "a": {"n": np.arange(3), "t": np.arange(2), "f": pd.DataFrame({"x": [1, 2]})},
            "b": {
                "n": np.arange(2.0),
                "t": np.array([1], "m8[s]"),
                "f": pd.DataFrame({"x": ["p"]}),
            },
        },
    )
    report = export_hdf5(dm, tmp_path / "m.h5", merged=True)
    assert report.merged == ["n"]
    assert report.not_merged["t"] == outcome(lambda: dm.get_merged("t"))[1]
    assert report.not_merged["f"] == outcome(lambda: dm.get_merged("f"))[1]
    assert "timedelta64[s] (session 'b')" in report.not_merged["t"]
    assert "column 'x' holds int64 (session 'a')" in report.not_merged["f"]


@pytest.mark.parametrize("as_series", [False, True], ids=["DataFrame", "Series"])
def test_columns_of_numbers_and_text_are_refused_naming_column_sessions_dtypes(dm, as_series):
    frames = {
        "a": pd.DataFrame({"x": [1, 2], "y": [0.5, 1.0]}),
        "b": pd.DataFrame({"x": ["p"], "y": [2.5]}),  # str or object, by pandas' version
        "c": pd.DataFrame({"y": [3.0]}),
    }
    values = {name: f["x" if as_series and name != "c" else "y"] for name, f in frames.items()}
    write(dm, {n: {"v": values[n] if as_series else f} for n, f in frames.items()})
    error = both_ways(dm, lambda d: d.get_merged("v"))
    where = "the Series hold" if as_series else "column 'x' holds"
    text = frames["b"]["x"].dtype
    assert error[0] is TypeError and error[1].startswith(
        f"cannot merge key 'v': {where} int64 (session 'a'), {text} (session 'b')"
    )
    assert outcome(lambda: dm.get_merged_matching("v")) == error
    dm.session("b").clear()  # numbers alone, column 'x' missing from 'c': merged
    merged = both_ways(dm, lambda d: d.get_merged("v"))
    assert list(merged.to_frame().dtypes if as_series else merged.dtypes) == [float] * (
        1 if as_series else 2
    )


def test_columns_of_bools_and_other_numbers_are_refused(dm):
    # numpy makes ints of bools and ints; pandas.concat makes objects of them.
    write(dm, {"a": {"f": pd.DataFrame({"x": [True]})}, "b": {"f": pd.DataFrame({"x": [2]})}})
    error = both_ways(dm, lambda d: d.get_merged("f"))
    assert error[0] is TypeError
    assert error[1].startswith("cannot merge key 'f': column 'x' holds bool (session 'a')")
    write(dm, {"c": {"a": np.array([True])}, "d": {"a": np.array([2])}})
    assert both_ways(dm, lambda d: d.get_merged("a")).tolist() == [1, 2]


def test_columns_of_equal_or_numeric_dtypes_merge(dm):
    def frame(n: int, offset: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "cat": pd.Categorical(["u", "v"][:n], categories=["u", "v"]),
                "when": pd.date_range("2024", periods=n, tz="Europe/Paris"),
                "count": pd.array(range(offset, offset + n), dtype="Int64"),
                "text": pd.array(["s"] * n, dtype="string"),
            }
        )

    b = frame(1, 5).astype({"count": "int64"})
    write(dm, {"a": {"f": frame(2, 0)}, "b": {"f": b}})
    merged = both_ways(dm, lambda d: d.get_merged("f"))
    expected = pd.concat([frame(2, 0), b], keys=["a", "b"], names=["session"])
    pd.testing.assert_frame_equal(merged, expected)
    assert str(merged["count"].dtype) == "Int64" and merged["cat"].dtype.name == "category"
    with dm.session("c") as s:  # other categories: pandas would make them objects
        s["f"] = frame(1, 9).assign(cat=pd.Categorical(["w"]))
    _, message = outcome(lambda: dm.get_merged("f"))
    assert message.startswith(
        "cannot merge key 'f': column 'cat' holds category (sessions 'a', 'b')"
    )


def test_a_session_without_rows_merges_whatever_its_column_dtypes(dm):
    empty = pd.DataFrame({"x": pd.Series([], dtype=object)})  # as an empty list makes it
    write(dm, {"a": {"f": pd.DataFrame({"x": [1, 2]})}, "b": {"f": empty}})
    merged = both_ways(dm, lambda d: d.get_merged("f"))
    assert merged["x"].tolist() == [1, 2]
