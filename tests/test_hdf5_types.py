"""HDF5 export of string, datetime and structured arrays: round trips and plain-h5py reads."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import typed_arrays
from test_hdf5 import assert_same, fill, roundtrip

from datamanager import DataManager, ExportFormatError, UnsupportedValueError
from datamanager.hdf5 import export_hdf5, load_hdf5
from datamanager.hdf5.load import read
from datamanager.hdf5.schema import Writer

from conftest import run_python

_NESTED = np.dtype([("t", "<M8[s]"), ("x", "<f4", (2,)), ("n", [("ok", "?"), ("tag", "S2")])])
_PADDED = np.dtype(
    {"names": ["a", "b"], "formats": ["<i2", "<m8[us]"], "offsets": [0, 8], "itemsize": 24}
)

# Each typed array, and the dtype and attributes that plain h5py sees.
TYPED = [
    (np.array(["a", "héllo", ""], dtype="<U5"), "object", {"numpy_dtype": "<U5"}),
    (np.array("ü", dtype=">U2"), "object", {"numpy_dtype": ">U2"}),
    (np.zeros((0, 2), dtype="<U3"), "object", {"numpy_dtype": "<U3"}),
    (np.array([b"a", b"\xffc"]), "|S2", {}),
    (
        np.array(["2020-01-01T12:00", "NaT"], dtype="M8[ns]"),
        "<i8",
        {"numpy_dtype": "<M8[ns]", "unit": "ns"},
    ),
    (np.array([[1, -2]], dtype="m8[10ms]"), "<i8", {"numpy_dtype": "<m8[10ms]", "unit": "10ms"}),
    # A generic-unit datetime holds only NaT; a view makes one without the
    # deprecation warning that numpy 2.5 gives for writing NaT into it.
    (
        np.array([np.iinfo(np.int64).min]).view("M8"),
        "<i8",
        {"numpy_dtype": "<M8", "unit": "generic"},
    ),
    (np.array([("2001-02-03", [1.5, 2], (True, b"xy"))] * 2, dtype=_NESTED), None, {}),
    (np.zeros(3, dtype=_PADDED), None, {}),
    (np.array(["ab", ""], dtype="<U10"), "object", {"numpy_dtype": "<U10"}),  # padded
]


@pytest.mark.parametrize("value, h5dtype, attrs", TYPED, ids=lambda v: repr(v)[:40])
def test_typed_arrays_round_trip_and_describe_themselves(value: Any, h5dtype: Any, attrs: Any):
    assert_same(roundtrip(value), value)
    with h5py.File("t.h5", "w", driver="core", backing_store=False) as f:
        Writer(None, "error").write(f, "v", value)
        ds = f["v"]
        if h5dtype == "object":
            assert h5py.check_string_dtype(ds.dtype).encoding == "utf-8"
        elif h5dtype is not None:
            assert ds.dtype.str == h5dtype
        else:  # structured: an HDF5 compound with the same field names
            assert ds.dtype.names == value.dtype.names
        for name, expected in attrs.items():
            assert ds.attrs[name] == expected
        assert ds.attrs.get("python_type") == (
            None if value.dtype.kind == "S" else "numpy.ndarray"
        )


def test_session_to_export_to_load(dm: DataManager, tmp_path: Path):
    values = {f"v{i}": value for i, (value, _, _) in enumerate(TYPED)}
    (name,) = fill(dm, [values])
    export_hdf5(dm, tmp_path / "t.h5")
    back = load_hdf5(tmp_path / "t.h5", metadata=True)
    assert_same(back["sessions"][name], values)
    assert back["attrs"]["schema_version"] == 4


def test_merged_string_and_datetime_arrays(dm: DataManager, tmp_path: Path):
    fill(
        dm,
        [
            {"s": np.array(["a", "bb"]), "t": np.array([1, 2], dtype="M8[s]")},
            {"s": np.array(["ccc"]), "t": np.array(["NaT"], dtype="M8[s]")},
        ],
    )
    report = export_hdf5(dm, tmp_path / "m.h5", merged=True)
    assert sorted(report.merged) == ["s", "t"]
    merged = load_hdf5(tmp_path / "m.h5")["merged"]
    assert_same(merged["s"], np.array(["a", "bb", "ccc"]))
    assert_same(merged["t"], np.array([1, 2, "NaT"], dtype="M8[s]"))


@pytest.mark.parametrize(
    "value, why",
    [
        (np.array(["a\x00b"]), "NUL"),
        (np.array(["\ud800"]), "surrogates"),
        (np.zeros(2, dtype=[("x", "<f8"), ("o", "O")]), "a field of dtype object"),
        (np.zeros(2, dtype=[("u", "<U3")]), "a field of dtype <U3"),
        (np.zeros(2, dtype=[(("title", "x"), "<f8")]), "titled fields"),
        (np.zeros(2, dtype=[("a", "<f2"), ("\x00", "<f2")]), "field name holding NUL"),
        # 68 MB of memory from strings of a few bytes each in the file.
        (np.array(["x"] * 17, dtype="<U1000000"), "padding its strings .longest 1. by more"),
    ],
    ids=[
        "nul",
        "surrogate",
        "object-field",
        "unicode-field",
        "titles",
        "nul-field-name",
        "padded-beyond-the-limit",
    ],
)
def test_what_hdf5_cannot_hold_is_refused_clearly(
    dm: DataManager, tmp_path: Path, value: Any, why: str
):
    (name,) = fill(dm, [{"v": value}])
    with pytest.raises(UnsupportedValueError, match=why) as info:
        export_hdf5(dm, tmp_path / "u.h5")
    assert (info.value.session, info.value.key) == (name, "v")
    report = export_hdf5(dm, tmp_path / "p.h5", on_unsupported="pickle")
    assert [p[:2] for p in report.pickled] == [(name, "v")]
    assert_same(load_hdf5(tmp_path / "p.h5", unpickle=True)["sessions"][name]["v"], value)


def test_a_crafted_dtype_attribute_is_refused(tmp_path: Path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        ds = f.create_dataset("v", data=np.arange(2, dtype="<i8"))
        ds.attrs["python_type"] = "numpy.ndarray"
        ds.attrs["numpy_dtype"] = "|O"  # would view integers as pointers
        with pytest.raises(ExportFormatError, match="numpy_dtype"):
            read(ds)


@pytest.mark.parametrize(
    "width, why",
    [(250_000, "padding its strings .longest 2. by more than 64 MiB"), (1, "narrower")],
)
def test_a_unicode_width_the_strings_do_not_fit_is_refused(
    dm: DataManager, tmp_path: Path, width: int, why: str
):
    (name,) = fill(dm, [{"u": np.array(["ab"] * 1000)}])
    export_hdf5(dm, tmp_path / "e.h5")
    with h5py.File(tmp_path / "e.h5", "a") as f:
        # 1 GB of memory for a file of some 60 KB, or strings cut short.
        f[f"sessions/{name}/u"].attrs["numpy_dtype"] = f"<U{width}"
    with pytest.raises(ExportFormatError, match=f"numpy_dtype of <U{width} {why}"):
        load_hdf5(tmp_path / "e.h5")


def test_plain_h5py_reads_every_typed_array(dm: DataManager, tmp_path: Path):
    (name,) = fill(dm, [{f"v{i}": value for i, (value, _, _) in enumerate(TYPED)}])
    export_hdf5(dm, tmp_path / "x.h5")
    code = textwrap.dedent(
        """
        import sys, h5py, numpy as np
        with h5py.File(sys.argv[1], "r") as f:
            g = f["sessions"][sys.argv[2]]
            assert list(g["v0"].asstr()[()]) == ["a", "héllo", ""]
            assert list(g["v3"][()]) == [b"a", b"\\xffc"]
            t = g["v4"]
            assert t.attrs["unit"] == "ns"
            assert t[0] == np.datetime64("2020-01-01T12:00", "ns").astype("i8")
            assert t[1] == np.iinfo("i8").min  # NaT
            s = g["v7"][()]
            assert s["x"].tolist() == [[1.5, 2.0]] * 2 and s["n"]["tag"][0] == b"xy"
        assert "datamanager" not in sys.modules
        print("ok")
        """
    )
    proc = run_python(code, str(tmp_path / "x.h5"), name, cwd=str(tmp_path))
    assert proc.stdout.strip() == "ok"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_arrays())
def test_typed_arrays_round_trip_hypothesis(value: np.ndarray):
    back = roundtrip(value)
    assert back.dtype == value.dtype and back.shape == value.shape
    assert back.tobytes() == value.tobytes() or (
        value.dtype.names is not None  # padding bytes are not data
        and all(np.array_equal(back[n], value[n]) for n in value.dtype.names)
    )


@pytest.mark.parametrize(
    "arrays",
    [
        [np.arange(2), np.array([b"a", b"b"])],
        [np.array([True]), np.arange(2.0), np.array([b"xy"])],
    ],
    ids=["int-bytes", "bool-float-bytes"],
)
def test_merging_on_disk_refuses_what_get_merged_refuses(
    dm: DataManager, tmp_path: Path, arrays: list[np.ndarray]
):
    fill(dm, [{"a": a} for a in arrays])
    with pytest.raises(TypeError) as refused:
        dm.get_merged("a")
    report = export_hdf5(dm, tmp_path / "m.h5", merged=True)
    assert report.not_merged == {"a": str(refused.value)}
    assert "|S" in str(refused.value) and "session" in str(refused.value)
    assert "a" not in load_hdf5(tmp_path / "m.h5").get("merged", {})


def test_numbers_merged_on_disk_are_promoted_as_get_merged_promotes(
    dm: DataManager, tmp_path: Path
):
    fill(dm, [{"a": np.arange(2, dtype=np.int16)}, {"a": np.array([True])}, {"a": np.ones(1)}])
    export_hdf5(dm, tmp_path / "m.h5", merged=True)
    assert_same(load_hdf5(tmp_path / "m.h5")["merged"]["a"], dm.get_merged("a"))


def test_stacked_arrays_and_lists_keep_their_byte_order(dm: DataManager, tmp_path: Path):
    parts = [np.arange(n, dtype=">i2") for n in (2, 0, 3)]
    names = fill(dm, [{"a": p, "l": [np.full(2, len(p), ">f4")]} for p in parts])
    report = export_hdf5(dm, tmp_path / "m.h5", merged=True)
    assert report.stacked == ["a", "l"]
    back = load_hdf5(tmp_path / "m.h5")
    assert_same(back["merged"]["a"], dm.get_merged("a"))
    assert back["merged"]["a"].dtype == np.dtype(">i2")
    for name, part in zip(names, parts):
        assert_same(back["sessions"][name]["a"], part)
        assert back["sessions"][name]["l"][0].dtype == np.dtype(">f4")
