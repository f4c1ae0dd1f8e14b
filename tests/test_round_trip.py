"""Every value stored without pickle, all the way: session, collation, HDF5 export, load_hdf5.

Generated DataFrames, Series, arrays and collections of arrays are split
across sessions, read back with ``get`` and ``get_merged``, exported per
session and merged, and loaded again, in normal and in safe mode: each step
must give back exactly what was stored (or what ``get_merged`` gives).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import frames, paddings, same_value, typed_arrays

from datamanager import DataManager
from datamanager.collator import merge_values
from datamanager.hdf5 import export_hdf5, load_hdf5

from conftest import stress_size

_numeric = hnp.arrays(
    st.one_of(hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes()),
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4),
)


def _pickle_keeps(dtype: np.dtype) -> bool:
    """Whether pickle gives arrays of *dtype* back in it.

    numpy unpickles a datetime64 or timedelta64 array of the other byte
    order in the native one (values intact); small values are pickled.
    """
    if dtype.subdtype is not None:
        return _pickle_keeps(dtype.subdtype[0])
    if dtype.names is not None:
        return all(_pickle_keeps(dtype.fields[n][0]) for n in dtype.names)
    return dtype.kind not in "Mm" or dtype.isnative


_arrays = st.one_of(typed_arrays(min_dims=1), _numeric).filter(lambda a: _pickle_keeps(a.dtype))


def _split(value: Any, cuts: list[int]) -> list[Any]:
    """*value* cut into consecutive parts along its rows, one per session."""
    bounds = [0, *sorted(min(c, len(value)) for c in cuts), len(value)]
    rows = value.iloc if isinstance(value, (pd.DataFrame, pd.Series)) else value
    return [rows[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def _sessions(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The values of one to three sessions: parts of one table and of one array.

    A session's dict and list of arrays may be padded into value files.
    """
    frame, array = draw(frames()), draw(_arrays)
    cuts = draw(st.lists(st.integers(0, 12), max_size=2))
    sessions = [{"frame": f} for f in _split(frame, cuts)]
    for values, part in zip(sessions, _split(array, cuts)):
        values["array"] = part
        values["dict"] = {"a": part, "t": draw(_arrays)}
        values["list"] = [part, draw(_arrays)]
        padding = draw(paddings())
        if padding is not None:
            values["dict"]["pad"] = padding
            values["list"].append(padding)
    if frame.shape[1]:
        for values in sessions:
            values["series"] = values["frame"].iloc[:, 0]
    return sessions


#: Keys whose values merge; a dict per session does not.
_MERGED = ("frame", "series", "array", "list")


# numpy warns that it stores an array whose field names are not Latin-1 in
# .npy format 3.0 (for NumPy >= 1.17); readers of value files read that format.
@pytest.mark.filterwarnings("ignore:Stored array in format 3.0:UserWarning")
@settings(
    max_examples=stress_size(full=40, ci=6),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sessions=_sessions())
def test_generated_values_round_trip_through_collation_and_export(tmp_path_factory, sessions):
    folder = tmp_path_factory.mktemp("rt")
    writer = DataManager("rt", str(folder))
    names = []
    for i, values in enumerate(sessions):
        with writer.session(f"s{i}") as s:
            s.update(values)
        names.append(f"s{i}")
    sides = {
        (r.name, key): path for r in writer.iter_sessions() for key, path, _ in r.side_files()
    }
    for name, values in zip(names, sessions):
        padded = "pad" in values["dict"]
        for key in ("dict", "list"):
            assert (str(sides.get((name, key))).endswith(".dmv")) == padded, (name, key, sides)
    for safe in (False, True):
        dm = DataManager("rt", str(folder), safe=safe)
        for key in sessions[0]:
            got = dm.get(key)
            assert list(got) == names
            for name, values in zip(names, sessions):
                same_value(got[name], values[key])
        merged = {}
        for key in _MERGED:
            if key in sessions[0]:
                merged[key] = dm.get_merged(key)
                expected = merge_values(key, [(n, v[key]) for n, v in zip(names, sessions)])
                same_value(merged[key], expected)
        path = folder / f"{safe}.h5"
        report = export_hdf5(dm, path, merged=True, progress=False)
        assert "dict" in report.not_merged and sorted(report.merged) == sorted(merged)
        back = load_hdf5(path)
        for name, values in zip(names, sessions):
            assert set(back["sessions"][name]) == set(values)
            for key, value in values.items():
                same_value(back["sessions"][name][key], value)
        for key, value in merged.items():
            same_value(back["merged"][key], value)


def test_each_kind_round_trips_from_value_files_in_safe_mode(tmp_path):
    """The generated round trip, by hand, for one value of each kind, some in value files."""
    frame = pd.DataFrame(
        {
            "n": pd.array([1, None, 3], dtype="Int32"),
            "when": pd.date_range("2020", periods=3, tz="Europe/Paris"),
            "cell": pd.Categorical(["a", "b", "a"]),
            "name": pd.array(["x", None, "z"], dtype="string"),
        }
    )
    records = np.zeros(3, dtype=[("id", "<i4"), ("at", "M8[ms]"), ("tag", "S3")])
    first = {"frame": frame.iloc[:2], "records": records[:2], "text": np.array(["é", ""])}
    second = {"frame": frame.iloc[2:], "records": records[2:], "text": np.array(["abc"])}
    # Large enough for value files rather than pickles in their rows.
    first["arrays"] = {"t": np.arange(200_000) * 0.1, "tag": np.array([b"a", b"b"])}
    second["arrays"] = [np.arange(200_000).astype("M8[ms]"), np.array(["x"])]
    dm = DataManager("rt", str(tmp_path))
    for name, values in (("a", first), ("b", second)):
        with dm.session(name) as s:
            s.update(values)
    safe = DataManager("rt", str(tmp_path), safe=True)
    same_value(
        safe.get_merged("frame"),
        pd.concat([frame.iloc[:2], frame.iloc[2:]], keys=["a", "b"], names=["session"]),
    )
    report = export_hdf5(safe, tmp_path / "x.h5", merged=True, progress=False)
    assert sorted(report.merged) == ["frame", "records", "text"]
    assert "arrays" in report.not_merged  # a dict, then a list
    back = load_hdf5(tmp_path / "x.h5")["merged"]
    same_value(back["frame"], safe.get_merged("frame"))
    same_value(back["records"], records)
    same_value(back["text"], np.array(["é", "", "abc"]))
    sessions = load_hdf5(tmp_path / "x.h5")["sessions"]
    for name, values in (("a", first), ("b", second)):
        for key, value in values.items():
            same_value(sessions[name][key], value)
            same_value(safe.get(key)[name], value)
    sides = {(r.name, key): path for r in safe.iter_sessions() for key, path, _ in r.side_files()}
    assert {("a", "arrays"), ("b", "arrays")} <= set(sides)
    assert all(path.endswith(".dmv") for path in sides.values())
