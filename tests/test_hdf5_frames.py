"""HDF5 export of pandas DataFrames and Series: round trips, refusals, plain-h5py reads."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.extra import pandas as hpd
from test_hdf5 import fill, roundtrip

from datamanager import DataManager, UnsupportedValueError
from datamanager.hdf5 import export_hdf5, load_hdf5

from conftest import run_python


def assert_pandas_same(a: Any, b: Any) -> None:
    """Same values, dtypes, index, labels and names, exactly."""
    assert type(a) is type(b)
    check = pd.testing.assert_frame_equal if isinstance(a, pd.DataFrame) else None
    kw: dict[str, Any] = {"check_exact": True, "check_index_type": True}
    if check is None:
        pd.testing.assert_series_equal(a, b, check_categorical=True, **kw)
    else:
        check(a, b, check_column_type=True, check_categorical=True, **kw)
        assert list(map(type, a.columns)) == list(map(type, b.columns))


def rich_frame() -> pd.DataFrame:
    idx = pd.Index([10, 20, 30], name="trial")
    frame = pd.DataFrame(
        {
            "n": np.array([1, -2, 3], dtype=np.int16),
            "rate é/Hz": [1.5, np.nan, 3.0],
            "label": ["a", "héllo", ""],
            "cell": pd.Categorical(["u", "v", "u"], categories=["v", "u"], ordered=True),
            "t": pd.to_datetime(["2020-01-01 00:00", None, "2021-06-01 12:00"]).as_unit("ns"),
            "local": pd.date_range(
                "2020-03-29", periods=3, freq="h", tz="Europe/Berlin", unit="ns"
            ),
            "dt": pd.to_timedelta([1, None, 3], unit="s").as_unit("ns"),
            "ok": [True, False, True],
            "z": np.array([1 + 2j, 0, -1j]),
            "obj": pd.Series(["p", "q", "r"], dtype=object, index=idx),
        },
        index=idx,
    )
    frame.columns.name = "quantity"
    return frame


VALUES = {
    "rich": rich_frame(),
    "empty": pd.DataFrame(),
    "no rows": rich_frame().iloc[:0],
    "int labels": pd.DataFrame(np.arange(6.0).reshape(3, 2)),
    "multiindex": rich_frame().set_index(["label", "n"]),
    "datetime index": pd.DataFrame({"v": [1, 2]}, index=pd.to_datetime(["2020-01-01", "NaT"])),
    "missing and odd text": pd.DataFrame(
        {
            "s": pd.array(["a", None, "nul\x00"], dtype="str"),
            "string": pd.array(["\ud800", None, "b"], dtype="string[python]"),
            "o": pd.Series([1, "a", None], dtype=object),
        },
        index=pd.Index([1.5, 2, None], dtype=object),
    ),
    "nullable": pd.DataFrame(
        {
            "Int64": pd.array([1, None, -3], dtype="Int64"),
            "UInt8": pd.array([None, 2, 255], dtype="UInt8"),
            "boolean": pd.array([True, None, False], dtype="boolean"),
            # NaN, a value, beside NA, a missing one: both must come back.
            "Float32": pd.arrays.FloatingArray(
                np.array([np.nan, 1.5, 0], dtype="f4"), np.array([False, False, True])
            ),
        },
        index=pd.Index(pd.array([4, None, 6], dtype="Int32"), name="n"),
    ),
    "nullable series": pd.Series(pd.array([None, 2.5], dtype="Float64"), name="x"),
    "nullable levels": pd.DataFrame(
        {"v": [1, 2]},
        index=pd.MultiIndex.from_arrays([pd.array([None, True], dtype="boolean"), ["a", "b"]]),
    ),
    # A level named 0 that is not the level at position 0.
    "int-named levels": pd.DataFrame(
        {"v": [1, 2]}, index=pd.MultiIndex.from_arrays([["a", "b"], [5, 6]], names=["s", 0])
    ),
    "series": pd.Series([0.5, np.nan], index=["a", "b"], name="rate"),
    "categorical series": pd.Series(pd.Categorical(["x", None, "x"]), name=7),
    "empty series": pd.Series([], dtype="float32"),
}


@pytest.mark.parametrize("value", list(VALUES.values()), ids=list(VALUES))
def test_pandas_round_trip(value: Any):
    assert_pandas_same(roundtrip(value), value)


def test_session_to_export_to_load(dm: DataManager, tmp_path: Path):
    (name,) = fill(dm, [VALUES])
    export_hdf5(dm, tmp_path / "f.h5")
    back = load_hdf5(tmp_path / "f.h5")["sessions"][name]
    assert list(back) == list(VALUES)
    for key, value in VALUES.items():
        assert_pandas_same(back[key], value)


@pytest.mark.parametrize(
    "value, why",
    [
        (pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", 1), ("a", 2)])), "Multi"),
        (pd.DataFrame({"o": pd.Series([1, {}], dtype=object)}), "other objects than scalars"),
        (pd.DataFrame({"p": pd.period_range("2020", periods=2, freq="D")}), "dtype period"),
        (pd.DataFrame([[1, 2]], columns=["a", "a"]), "repeat"),
        (pd.Series([1], name=("a", "b")), "name of type tuple"),
        # JSON's one null would make pd.NA None.
        (pd.Series(["a", pd.NA, None, 1.5], dtype=object), "dtype object holding pd.NA"),
        (pd.Series([1, 2], index=pd.Index([pd.NA, "b"], dtype=object)), "holding pd.NA"),
    ],
    ids=["multiindex-columns", "mixed-object", "periods", "repeat", "tuple", "na", "na-index"],
)
def test_what_the_schema_cannot_hold_is_refused_clearly(
    dm: DataManager, tmp_path: Path, value: Any, why: str
):
    (name,) = fill(dm, [{"v": value}])
    with pytest.raises(UnsupportedValueError, match=why) as info:
        export_hdf5(dm, tmp_path / "u.h5")
    assert (info.value.session, info.value.key) == (name, "v")
    export_hdf5(dm, tmp_path / "p.h5", on_unsupported="pickle")
    assert_pandas_same(load_hdf5(tmp_path / "p.h5", unpickle=True)["sessions"][name]["v"], value)


def test_pd_na_in_an_object_column_comes_back_as_pd_na(dm: DataManager, tmp_path: Path):
    (name,) = fill(dm, [{"v": pd.Series(["a", pd.NA, None], dtype=object)}])
    export_hdf5(dm, tmp_path / "p.h5", on_unsupported="pickle")
    back = load_hdf5(tmp_path / "p.h5", unpickle=True)["sessions"][name]["v"]
    assert back[0] == "a" and back[1] is pd.NA and back[2] is None


def test_merged_export_of_a_dataframe_key_is_one_table(dm: DataManager, tmp_path: Path):
    frames = [pd.DataFrame({"x": np.arange(n, dtype=float), "s": ["a"] * n}) for n in (2, 0, 3)]
    names = fill(dm, [{"df": f, "n": pd.Series([i], name="n")} for i, f in enumerate(frames)])
    report = export_hdf5(dm, tmp_path / "m.h5", merged=True)
    assert report.merged == ["df", "n"]
    back = load_hdf5(tmp_path / "m.h5")
    expected = pd.concat(frames, keys=names, names=["session"])
    assert_pandas_same(back["merged"]["df"], expected)
    assert (
        list(back["merged"]["df"].index.get_level_values("session"))
        == [names[0]] * 2 + [names[2]] * 3
    )
    assert back["merged"]["n"].tolist() == [0, 1, 2]
    for name, frame in zip(names, frames):
        assert_pandas_same(back["sessions"][name]["df"], frame)


def test_plain_h5py_reads_every_column(dm: DataManager, tmp_path: Path):
    (name,) = fill(dm, [{"df": rich_frame()}])
    export_hdf5(dm, tmp_path / "x.h5")
    code = textwrap.dedent(
        """
        import json, sys, h5py, numpy as np
        with h5py.File(sys.argv[1], "r") as f:
            g = f["sessions"][sys.argv[2]]["df"]
            c = g["columns"]
            assert list(c) == ["n", "rate é%2FHz", "label", "cell", "t", "local", "dt",
                               "ok", "z", "obj"]
            assert g["index"][()].tolist() == [10, 20, 30]
            assert json.loads(g["index"].attrs["name"]) == "trial"
            assert g["column_labels"].asstr()[()].tolist()[1] == "rate é/Hz"
            assert c["n"][()].tolist() == [1, -2, 3] and c["n"].dtype == np.int16
            assert np.isnan(c["rate é%2FHz"][1])
            assert c["label"].asstr()[()].tolist() == ["a", "héllo", ""]
            assert c["cell"]["codes"][()].tolist() == [1, 0, 1]
            assert c["cell"]["categories"].asstr()[()].tolist() == ["v", "u"]
            assert c["t"].attrs["unit"] == "ns" and c["t"][1] == np.iinfo("i8").min
            assert c["t"][0] == np.datetime64("2020-01-01", "ns").astype("i8")
            assert c["local"].attrs["tz"] == "Europe/Berlin"
            # UTC: midnight in Berlin is 23:00 the day before
            assert c["local"][0] == np.datetime64("2020-03-28T23:00", "ns").astype("i8")
            assert c["dt"].attrs["unit"] == "ns" and c["dt"][0] == 10**9
            assert c["ok"][()].tolist() == [True, False, True]
            assert c["z"][2] == -1j
            assert c["obj"].attrs["pandas_dtype"] == "object"
        assert "datamanager" not in sys.modules and "pandas" not in sys.modules
        print("ok")
        """
    )
    proc = run_python(code, str(tmp_path / "x.h5"), name, cwd=str(tmp_path))
    assert proc.stdout.strip() == "ok"


# Hypothesis: frames of plain dtypes, any labels and index.
_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="=", sizes=(32, 64)),
    st.just(np.dtype("M8[ns]")),
    st.just(np.dtype("m8[ns]")),
)
_label = st.one_of(st.text(st.characters(codec="utf-8"), max_size=5), st.integers(-5, 5))


@st.composite
def _frames(draw: Any) -> pd.DataFrame:
    labels = draw(st.lists(_label, max_size=4, unique_by=str))
    columns = [hpd.column(label, dtype=draw(_dtypes)) for label in labels]
    if draw(st.booleans()):
        columns.append(hpd.column("text", elements=st.text(max_size=4).filter(_no_nul)))
        labels.append("text")
    if len({str(x) for x in labels}) != len(labels):
        columns.pop()
    index = hpd.range_indexes(max_size=5) | hpd.indexes(dtype="int64", max_size=5)
    return draw(hpd.data_frames(columns, index=index))


def _no_nul(text: str) -> bool:
    return "\x00" not in text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames())
def test_dataframes_round_trip_hypothesis(frame: pd.DataFrame):
    assert_pandas_same(roundtrip(frame), frame)


def test_merged_export_of_tables_is_what_get_merged_gives(dm: DataManager, tmp_path: Path):
    frames = [
        pd.DataFrame({"x": [0.5, 1.5]}, index=pd.Index([7, 3], name="trial")),
        pd.DataFrame({"x": [2.5]}, index=pd.Index([1], name="trial")),
    ]
    fill(dm, [{"df": f, "mixed": f} for f in frames])
    with dm.session() as s:  # a Series where the others hold DataFrames
        s["mixed"] = pd.Series([1.0], name="x")
    with pytest.raises(TypeError) as refused:
        dm.get_merged("mixed")
    report = export_hdf5(dm, tmp_path / "m.h5", merged=True)
    assert report.merged == ["df"]
    assert report.not_merged == {"mixed": str(refused.value)}
    assert_pandas_same(load_hdf5(tmp_path / "m.h5")["merged"]["df"], dm.get_merged("df"))


def test_plain_h5py_reads_nullable_columns_as_values_and_mask(dm: DataManager, tmp_path: Path):
    import h5py

    (name,) = fill(dm, [{"df": VALUES["nullable"]}])
    export_hdf5(dm, tmp_path / "n.h5")
    with h5py.File(tmp_path / "n.h5", "r") as f:
        frame = f["sessions"][name]["df"]
        ints = frame["columns"]["Int64"]
        assert ints.attrs["pandas_dtype"] == "Int64"
        assert ints["values"][()].tolist() == [1, 0, -3] and ints["values"].dtype == np.int64
        assert ints["mask"][()].tolist() == [False, True, False]
        floats = frame["columns"]["Float32"]
        assert floats["values"].dtype == np.float32
        assert np.isnan(floats["values"][()]).tolist() == [True, False, True]
        assert frame["index"]["mask"][()].tolist() == [False, True, False]
        assert frame["columns"]["boolean"]["values"].dtype == np.bool_


@pytest.mark.parametrize("dtype", ["string", "category", "int64"])
def test_a_masked_column_naming_another_dtype_is_refused(tmp_path: Path, dtype: str):
    import h5py

    from datamanager import ExportFormatError
    from datamanager.hdf5.load import read
    from datamanager.hdf5.schema import Writer

    with h5py.File(tmp_path / "c.h5", "w") as f:
        Writer(None, "error").write(f, "v", pd.Series(pd.array([1, None], dtype="Int8")))
        f["v"]["values"].attrs["pandas_dtype"] = dtype
        with pytest.raises(ExportFormatError, match="at /v"):
            read(f["v"])
