"""HDF5 export and loader: schema, round trips, atomicity, foreign readers."""

from __future__ import annotations

import inspect
import json
import math
import os
import pickle
import pydoc
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from datamanager import (
    DataManager,
    ExportError,
    ExportFormatError,
    Recording,
    UnsupportedValueError,
)
from datamanager.hdf5 import (
    PickledValue,
    escape_name,
    export_hdf5,
    load_hdf5,
    unescape_name,
)
from datamanager.hdf5.load import read
from datamanager.hdf5.schema import Writer

from conftest import interruptible, run_python

# ---------------------------------------------------------------------------
# Exact comparison: same types, dtypes, shapes and values (NaN equals NaN).


def assert_same(a: Any, b: Any, where: str = "value") -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fcmM"), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype, where
        assert_same(a.item(), b.item(), where)
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b)), where
    elif isinstance(a, complex):
        assert_same(a.real, b.real, where)
        assert_same(a.imag, b.imag, where)
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def roundtrip(value: Any) -> Any:
    """Write ``value`` with the schema into an in-memory HDF5 file and read it back."""
    name = f"rt-{uuid.uuid4()}"
    with h5py.File(name, "w", driver="core", backing_store=False) as f:
        Writer(None, "error").write(f, "v", value)
        return read(f["v"])


# Every mapping of the schema: value, and what plain h5py must see.
SCHEMA = [
    (np.arange(6, dtype=np.int16).reshape(2, 3), "<i2", (2, 3), None),
    (np.array([True, False]), "bool", (2,), None),
    (np.zeros((0, 4), dtype=np.float32), "<f4", (0, 4), None),
    (np.array(2.5), "<f8", (), None),
    (np.arange(4, dtype=">u8"), ">u8", (4,), None),
    (np.array([1 + 2j], dtype=np.complex64), "<c8", (1,), None),
    (np.float16(1.5), "<f2", (), "numpy.scalar"),
    (np.int8(-3), "|i1", (), "numpy.scalar"),
    (np.bool_(True), "bool", (), "numpy.scalar"),
    (True, "bool", (), "bool"),
    (7, "<i8", (), "int"),
    (2**64 - 1, "<u8", (), "int"),
    (-(2**70), "object", (), "int"),
    (0.1, "<f8", (), "float"),
    (1 - 1j, "<c16", (), "complex"),
    ("héllo", "object", (), "str"),
    ("nul\x00inside", "|V10", (), "str"),
    ("", "object", (), "str"),
    (b"\x00\xffraw", "|V5", (), "bytes"),
    (b"", "|u1", None, "bytes"),
    (bytearray(b"ab"), "|V2", (), "bytearray"),
    (None, "|i1", None, "None"),
    ([1.0, 2.0, 3.0], "<f8", (3,), "list"),
    ((1, 2), "<i8", (2,), "tuple"),
    ([np.int32(1), np.int32(2)], "<i4", (2,), "list"),
    ([np.ones(2), np.zeros(2)], "<f8", (2, 2), "list"),
    ({3.0, 4.0}, "<f8", (2,), "set"),
    (["a", "é"], "object", (2,), "list"),
]


def _dtype_name(dt: np.dtype) -> str:
    return "bool" if dt.kind == "b" else ("object" if dt.kind == "O" else dt.str)


@pytest.mark.parametrize("value, dtype, shape, ptype", SCHEMA, ids=lambda v: repr(v)[:30])
def test_schema_dataset_mapping(tmp_path: Path, value: Any, dtype: str, shape: Any, ptype: Any):
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        Writer(None, "error").write(f, "v", value)
    with h5py.File(path, "r") as f:
        ds = f["v"]
        assert isinstance(ds, h5py.Dataset)
        assert _dtype_name(ds.dtype) == dtype
        assert ds.shape == shape
        assert ds.attrs.get("python_type") == ptype
        assert_same(read(ds), value)


@pytest.mark.parametrize(
    "value, ptype, members",
    [
        ([1, "a", None], "list", ["0", "1", "2"]),
        (["a", "b\x00"], "list", ["0", "1"]),
        ((1, 2.0), "tuple", ["0", "1"]),
        ([], "list", []),
        ({"b": 1, "a/x": [2]}, None, ["b", "a%2Fx"]),
        ({}, None, []),
        ([[1.0], (2,)], "list", ["0", "1"]),
        (frozenset({"a", 1}), "frozenset", ["0", "1"]),
    ],
)
def test_schema_group_mapping(value: Any, ptype: Any, members: list[str]):
    with h5py.File(f"g-{uuid.uuid4()}", "w", driver="core", backing_store=False) as f:
        Writer(None, "error").write(f, "v", value)
        group = f["v"]
        assert isinstance(group, h5py.Group)
        assert group.attrs.get("python_type") == ptype
        assert list(group) == members
        assert_same(read(group), value)


class LabelledRecording(Recording):
    """A Recording in all but its class name."""

    __slots__ = ()


def test_a_recording_subclass_is_written_as_a_recording():
    data = np.arange(6.0).reshape(3, 2)
    back = roundtrip(LabelledRecording(data, ["t", "v"], ["ms", "mV"]))
    assert type(back) is Recording
    assert back == Recording(data, ["t", "v"], ["ms", "mV"])


def test_large_python_int_list_is_a_group_not_an_overflow():
    assert_same(roundtrip([1, 2**80]), [1, 2**80])
    assert_same(roundtrip([True, 1, 1.0]), [True, 1, 1.0])


@pytest.mark.parametrize(
    "value",
    [object(), np.array(["a\x00b"]), {1: 2}, [1, {"x": object()}], np.datetime64("2020-01-01")],
    ids=["object", "str-array-with-nul", "int-key", "nested", "datetime64"],
)
def test_unsupported_values_are_refused(dm: DataManager, tmp_path: Path, value: Any):
    (name,) = fill(dm, [{"v": value}])
    target = tmp_path / "u.h5"
    with pytest.raises(UnsupportedValueError) as info:
        export_hdf5(dm, target)
    assert (info.value.session, info.value.key) == (name, "v")
    assert not target.exists()


# ---------------------------------------------------------------------------
# Hypothesis: nested structures of every supported type.

_names = st.text(max_size=8)
_floats = st.floats(allow_nan=True, allow_infinity=True)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    _floats,
    st.complex_numbers(allow_nan=False),
    st.text(st.characters(codec=None), max_size=10),
    st.binary(max_size=10),
)
_numeric_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
)
_arrays = hnp.arrays(
    _numeric_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
)
_numpy_scalars = _arrays.filter(lambda a: a.size > 0).map(lambda a: a.flat[0])
_leaves = st.one_of(_scalars, _arrays, _numpy_scalars)
_values = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(_names, children, max_size=4),
        st.lists(_floats, max_size=5),
        st.lists(st.text(max_size=3), max_size=3),
        st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=5).map(tuple),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_roundtrip_hypothesis(value: Any):
    assert_same(roundtrip(value), value)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec=None)))
def test_escaping_is_reversible_and_valid(name: str):
    escaped = escape_name(name)
    assert unescape_name(escaped) == name
    assert escaped and "/" not in escaped and "\x00" not in escaped
    assert not escaped.startswith(".")
    escaped.encode("utf-8")  # HDF5 names are UTF-8


def test_escaped_names_work_as_hdf5_links():
    names = ["a/b", ".", "..", ".hidden", "", "%41", "\x00", "\udc80x", "ü/%"]
    with h5py.File(f"n-{uuid.uuid4()}", "w", driver="core", backing_store=False) as f:
        value = {n: i for i, n in enumerate(names)}
        Writer(None, "error").write(f, "v", value)
        assert_same(read(f["v"]), value)


# ---------------------------------------------------------------------------
# Export from a real DataManager.


def fill(dm: DataManager, sessions: list[dict[str, Any]]) -> list[str]:
    names = []
    for values in sessions:
        with dm.session() as s:
            s.update(values)
            names.append(s.name)
    return names


def test_export_roundtrip_every_type(dm: DataManager, tmp_path: Path):
    values = {f"k{i}": v for i, (v, *_rest) in enumerate(SCHEMA)}
    values["nested/dict"] = {"a": [1, (2.0, None)], "b": {"c": np.eye(2)}}
    values[""] = "empty key"
    names = fill(dm, [values, {"other": [1, 2]}])
    report = export_hdf5(dm, tmp_path / "out.h5")
    assert report.sessions == 2 and report.values == len(values) + 1
    out = load_hdf5(tmp_path / "out.h5", metadata=True)
    assert set(out) == {"sessions", "metadata", "attrs"}
    assert list(out["sessions"]) == names
    assert_same(out["sessions"][names[0]], values)
    assert_same(out["sessions"][names[1]], {"other": [1, 2]})
    assert out["attrs"]["datamanager_name"] == "sweep"
    for name, reader in zip(names, dm.iter_sessions()):
        with reader:
            assert out["metadata"][name] == reader.metadata


def test_export_match_prefix_and_callable(dm: DataManager, tmp_path: Path):
    fill(dm, [{"rate": 1.0, "rate_sd": 2.0, "v": [1]}])
    export_hdf5(dm, tmp_path / "a.h5", match="rate")
    (session,) = load_hdf5(tmp_path / "a.h5")["sessions"].values()
    assert list(session) == ["rate", "rate_sd"]
    export_hdf5(dm, tmp_path / "b.h5", match=lambda k: k == "v")
    (session,) = load_hdf5(tmp_path / "b.h5")["sessions"].values()
    assert list(session) == ["v"]


def test_merged_equals_get_merged(dm: DataManager, tmp_path: Path):
    fill(
        dm,
        [
            {
                "a": np.arange(3.0),
                "l": [1.0, 2.0],
                "t": (1, 2),
                "mix": [1],
                "d": {"x": 1},
                "dt": np.arange(2, dtype=np.int32),
                "empty": [],
                "x0": np.float64(1),
            },
            {
                "a": np.arange(2.0),
                "l": [3.0],
                "t": (3,),
                "mix": ("a", None),
                "d": {"x": 2},
                "dt": np.arange(2.0),
                "empty": [],
                "x0": np.float64(2),
            },
            {"a": np.arange(4.0), "l": [], "mix": [2.5], "empty": [1]},
        ],
    )
    report = export_hdf5(dm, tmp_path / "m.h5", merged=True)
    out = load_hdf5(tmp_path / "m.h5")
    for key in ["a", "l", "t", "mix", "dt", "empty"]:
        assert_same(out["merged"][key], dm.get_merged(key), key)
    assert set(report.not_merged) == {"d", "x0"}
    assert set(report.stacked) >= {"a", "l", "t", "empty"}
    # Every per-session value comes back, stacked or not.
    for name, values in dm.get_matching(lambda k: True).items():
        for session, value in values.items():
            assert_same(out["sessions"][session][name], value, f"{session}/{name}")


def test_merged_stacks_small_values_into_few_objects(dm: DataManager, tmp_path: Path):
    fill(dm, [{f"k{j}": np.full(100, i + j, dtype=float) for j in range(5)} for i in range(20)])
    export_hdf5(dm, tmp_path / "flat.h5")
    export_hdf5(dm, tmp_path / "stacked.h5", merged=True)

    def datasets(path: Path) -> int:
        found: list[str] = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
        return len(found)

    assert datasets(tmp_path / "flat.h5") == 100
    # 5 stacked + 1 index table, which the 5 keys (same sessions, same
    # lengths) share through hard links.
    assert datasets(tmp_path / "stacked.h5") == 6
    with h5py.File(tmp_path / "stacked.h5", "r") as f:
        assert f["merged/k0"].shape == (2000,)
        index = f["merged_index/k0"][()]
        assert f["merged_index/k4"] == f["merged_index/k0"]  # one object
        assert list(index["start"][:3]) == [0, 100, 200]
    flat, stacked = load_hdf5(tmp_path / "flat.h5"), load_hdf5(tmp_path / "stacked.h5")
    for session, values in flat["sessions"].items():
        for key, value in values.items():
            assert_same(stacked["sessions"][session][key], value)


def test_stacking_gives_way_when_a_later_value_differs(dm: DataManager, tmp_path: Path):
    # Enough rows to flush the first values to disk before the odd one arrives.
    big = [{"x": np.arange(200_000.0) + i} for i in range(3)]
    fill(dm, [*big, {"x": np.arange(5, dtype=np.int32)}, {"x": np.arange(2.0)}])
    report = export_hdf5(dm, tmp_path / "m.h5", merged=True)
    assert report.stacked == [] and report.merged == ["x"]
    out = load_hdf5(tmp_path / "m.h5")
    assert_same(out["merged"]["x"], dm.get_merged("x"))
    for session, value in dm.get("x").items():
        assert_same(out["sessions"][session]["x"], value)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_large_side_file_values_stream_exactly(
    dm: DataManager, tmp_path: Path, compression: str | None
):
    # Values over 1 MiB live in session side files; export copies them in slabs.
    rng = np.random.default_rng(3)
    values = {
        "f32": rng.random((3000, 101)).astype(np.float32),
        "i16": rng.integers(-9, 9, size=(7, 300, 400)).astype(">i2"),
        "rows": rng.random((1, 200_000)),
        "c": rng.random(70_000) + 1j,
    }
    (name,) = fill(dm, [values])
    export_hdf5(dm, tmp_path / "big.h5", compression=compression, fsync=True)
    assert_same(load_hdf5(tmp_path / "big.h5")["sessions"][name], values)


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression_on_request(dm: DataManager, tmp_path: Path, compression: str):
    fill(dm, [{"a": np.zeros(10_000), "s": 1.0, "l": [1.0] * 50}] * 2)
    export_hdf5(dm, tmp_path / "c.h5", compression=compression, merged=True)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        (session,) = list(f["sessions"])[:1]
        assert f["merged/a"].compression == compression
        assert f["merged/l"].compression == compression
    export_hdf5(dm, tmp_path / "plain.h5")
    with h5py.File(tmp_path / "plain.h5", "r") as f:
        group = next(iter(f["sessions"].values()))
        assert group["a"].compression is None and group["a"].chunks is None
    # merged=True may change the key order inside a session (stacked keys come last).
    packed, plain = load_hdf5(tmp_path / "c.h5"), load_hdf5(tmp_path / "plain.h5")
    for session, values in plain["sessions"].items():
        assert_same(
            dict(sorted(packed["sessions"][session].items())), dict(sorted(values.items()))
        )


def test_bad_options(dm: DataManager, tmp_path: Path):
    with pytest.raises(ValueError, match="compression"):
        export_hdf5(dm, tmp_path / "x.h5", compression="zstd")
    with pytest.raises(ValueError, match="on_unsupported"):
        export_hdf5(dm, tmp_path / "x.h5", on_unsupported="ignore")
    with pytest.raises(ExportError, match="no such folder"):
        export_hdf5(dm, tmp_path / "missing" / "x.h5")


def test_options_are_keyword_only_in_function_and_method(dm: DataManager, tmp_path: Path):
    function = list(inspect.signature(export_hdf5).parameters.values())
    method = list(inspect.signature(DataManager.export_hdf5).parameters.values())
    assert [(p.name, p.kind, p.default) for p in function[1:]] == [
        (p.name, p.kind, p.default) for p in method[1:]
    ]  # the method is the function, with the DataManager as ``self``
    assert {p.kind for p in function[2:]} == {inspect.Parameter.KEYWORD_ONLY}
    assert "ExportReport" in pydoc.render_doc(DataManager.export_hdf5)
    with pytest.raises(TypeError):
        export_hdf5(dm, tmp_path / "x.h5", "rate")
    with pytest.raises(TypeError):
        dm.export_hdf5(tmp_path / "x.h5", "rate")
    assert not (tmp_path / "x.h5").exists()
    assert {p.kind for p in list(inspect.signature(load_hdf5).parameters.values())[1:]} == {
        inspect.Parameter.KEYWORD_ONLY
    }


# ---------------------------------------------------------------------------
# Unsupported values.


class Opaque:
    """Picklable, but no HDF5 mapping."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.x == self.x


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_unsupported_error_names_session_key_type(dm: DataManager, tmp_path: Path):
    (name,) = fill(dm, [{"ok": 1, "bad": {"deep": [Opaque(1)]}}])
    target = tmp_path / "u.h5"
    with pytest.raises(UnsupportedValueError) as info:
        export_hdf5(dm, target)
    err = info.value
    assert (err.session, err.key) == (name, "bad")
    assert "Opaque" in err.type_name and "Opaque" in str(err)
    assert not target.exists() and leftovers(tmp_path) == []


def test_unsupported_skip_and_pickle(dm: DataManager, tmp_path: Path):
    (name,) = fill(dm, [{"ok": 1, "bad": {"deep": [Opaque(1), 2]}}])
    report = export_hdf5(dm, tmp_path / "s.h5", on_unsupported="skip")
    assert report.skipped == [(name, "bad", f"{__name__}.Opaque")]
    assert load_hdf5(tmp_path / "s.h5")["sessions"][name] == {"ok": 1}

    report = export_hdf5(dm, tmp_path / "p.h5", on_unsupported="pickle")
    assert [r[:2] for r in report.pickled] == [(name, "bad")]
    stored = load_hdf5(tmp_path / "p.h5")["sessions"][name]["bad"]["deep"]
    assert isinstance(stored[0], PickledValue) and stored[1] == 2
    assert stored[0].load() == Opaque(1)
    loaded = load_hdf5(tmp_path / "p.h5", unpickle=True)["sessions"][name]["bad"]["deep"]
    assert loaded == [Opaque(1), 2]
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert f[f"sessions/{name}/bad/deep/0"].attrs["python_type"] == "pickle"


# ---------------------------------------------------------------------------
# Crafted files: load_hdf5 refuses what the writer never makes.


def crafted(dm: DataManager, path: Path, change: Any) -> str:
    """Export two sessions, then ``change(file, first session group)``; its HDF5 path."""
    if not dm.session_filenames():
        fill(dm, [{"a": np.arange(3.0), "d": {"x": 1, "l": [1, "a"]}, "m": "s"}] * 2)
    export_hdf5(dm, path, merged=True)
    with h5py.File(path, "a") as f:
        group = f["sessions"][next(iter(f["sessions"]))]
        session = group.name
        change(f, group)
    return session


def shared_groups(f: h5py.File, g: h5py.Group) -> None:
    # 40 levels, each with two hard links to the next: 2**40 paths, no cycle.
    level = g.create_group("bomb")
    for _ in range(40):
        below = level.create_group("0")
        level["1"] = below
        level = below


# What to write into the first session group; the link refused; what was found.
LINK_ATTACKS = {
    "soft cycle": (
        lambda f, g: g.__setitem__("loop", h5py.SoftLink(g.name)),
        "{s}/loop",
        "a soft link to {s}",
    ),
    "hard cycle": (lambda f, g: g.__setitem__("loop", g), "{s}", "2 hard links"),
    "root cycle": (lambda f, g: g["d"].__setitem__("up", f["/"]), "{s}/d/up", "2 hard links"),
    "soft inside": (
        lambda f, g: g.__setitem__("again", h5py.SoftLink(g.name + "/m")),
        "{s}/again",
        "a soft link to {s}/m",
    ),
    "external": (
        lambda f, g: g.__setitem__("ext", h5py.ExternalLink("other.h5", "/secret")),
        "{s}/ext",
        "an external link to /secret in other.h5",
    ),
    "shared groups": (shared_groups, "{s}/bomb/0", "2 hard links"),
}


def test_links_other_than_one_hard_link_are_refused(dm: DataManager, tmp_path: Path):
    with h5py.File(tmp_path / "other.h5", "w") as other:
        other["secret"] = np.arange(5)
    files = [tmp_path / f"{attack}.h5" for attack in LINK_ATTACKS]
    for path, (change, *_) in zip(files, LINK_ATTACKS.values()):
        session = crafted(dm, path, change)
    # In a fresh process with a time limit: following these links used to
    # recurse without end, or read another file.
    code = textwrap.dedent(
        """
        import json, sys
        from datamanager import load_hdf5
        for path in sys.argv[1:]:
            try:
                load_hdf5(path)
                print(json.dumps(["loaded"]))
            except Exception as exc:
                print(json.dumps([type(exc).__name__, isinstance(exc, OSError),
                                  getattr(exc, "h5path", None), str(exc)]))
        """
    )
    proc = run_python(code, *map(str, files), cwd=str(tmp_path), timeout=60)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    for (attack, (_, h5path, found)), result in zip(LINK_ATTACKS.items(), results):
        assert result[:3] == ["ExportFormatError", True, h5path.format(s=session)], attack
        assert found.format(s=session) in result[3], (attack, result[3])
    assert len(results) == len(LINK_ATTACKS)


def retyped(f: h5py.File, g: h5py.Group, name: str, data: Any = 1) -> None:
    del f[name]
    f[name] = data


# How a file is changed; the object named; what was found.
DAMAGES = {
    "no sessions": (lambda f, g: f.__delitem__("sessions"), "/sessions", "nothing"),
    "sessions a dataset": (lambda f, g: retyped(f, g, "sessions"), "/sessions", "a dataset"),
    "session a dataset": (lambda f, g: retyped(f, g, g.name), "{s}", "a dataset"),
    "merged a dataset": (lambda f, g: retyped(f, g, "merged"), "/merged", "a dataset"),
    "index of numbers": (
        lambda f, g: retyped(f, g, "merged_index/a", [0, 3]),
        "/merged_index/a",
        "TypeError",
    ),
    "unknown type": (
        lambda f, g: g["d"].attrs.__setitem__("python_type", "nonsense"),
        "{s}/d",
        "unknown python_type 'nonsense'",
    ),
    "no items": (
        lambda f, g: f["merged/a"].attrs.__setitem__("python_type", "list"),
        "/merged/a",
        "KeyError",
    ),
    "list not numbered": (lambda f, g: g["d/l"].__setitem__("x", 1), "{s}/d/l", "ValueError"),
    "metadata not JSON": (
        lambda f, g: g.attrs.__setitem__("metadata", "{"),
        "{s}",
        "JSONDecodeError",
    ),
    "metadata a list": (lambda f, g: g.attrs.__setitem__("metadata", "[]"), "{s}", "a JSON list"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_structure_is_a_clear_error(dm: DataManager, tmp_path: Path, damage: str):
    change, h5path, found = DAMAGES[damage]
    path = tmp_path / "x.h5"
    session = crafted(dm, path, change)
    with pytest.raises(ExportFormatError) as info:
        load_hdf5(path, metadata=True)
    err = info.value
    assert isinstance(err, OSError) and err.path == str(path)
    assert err.h5path == h5path.format(s=session)
    assert found in err.found and str(path) in str(err)
    assert pickle.loads(pickle.dumps(err)).h5path == err.h5path


# ---------------------------------------------------------------------------
# Atomic publication.


def test_refuses_to_overwrite(dm: DataManager, tmp_path: Path):
    fill(dm, [{"a": 1}])
    target = tmp_path / "o.h5"
    target.write_bytes(b"precious")
    with pytest.raises(ExportError, match="exists") as info:
        export_hdf5(dm, target)
    assert isinstance(info.value, OSError) and info.value.path == str(target)
    assert target.read_bytes() == b"precious"
    export_hdf5(dm, target, overwrite=True)
    assert load_hdf5(target)["sessions"]
    assert leftovers(tmp_path) == []


def test_exception_mid_export_leaves_nothing(dm: DataManager, tmp_path: Path):
    fill(dm, [{f"k{i}": np.arange(1000.0) for i in range(10)}] * 3)
    seen = []

    def explode(key: str) -> bool:
        seen.append(key)
        if len(seen) == 15:
            raise RuntimeError("injected")
        return True

    fresh, existing = tmp_path / "fresh.h5", tmp_path / "existing.h5"
    existing.write_bytes(b"old")
    for target in (fresh, existing):
        seen.clear()
        with pytest.raises(RuntimeError, match="injected"):
            export_hdf5(dm, target, match=explode, overwrite=True, merged=True)
    assert not fresh.exists()
    assert existing.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_full_disk_leaves_nothing(dm: DataManager, tmp_path: Path):
    # A file-size limit makes writes fail with EFBIG, as a full disk would.
    fill(dm, [{"a": np.zeros(2_000_000)}])
    code = textwrap.dedent(
        """
        import resource, signal, sys
        from datamanager import DataManager, ExportError
        from datamanager.hdf5 import export_hdf5
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            export_hdf5(DataManager.from_path(sys.argv[1]), sys.argv[2])
        except ExportError as exc:
            print("ExportError", exc)
        """
    )
    proc = run_python(code, dm.basepath, str(tmp_path / "full.h5"))
    assert proc.stdout.startswith("ExportError")
    assert not (tmp_path / "full.h5").exists() and leftovers(tmp_path) == []


def test_an_export_is_an_ordinary_file_like_any_other(tmp_path: Path):
    # Written under a private temporary name (mkstemp makes it 0600), the
    # published file is readable by others, as the NWB export's is.
    dm = DataManager("perm", str(tmp_path))
    with dm.session() as s:
        s["x"] = [1]
    out = tmp_path / "perm.h5"
    export_hdf5(dm, str(out), progress=False)
    assert out.stat().st_mode & 0o777 == 0o644


EXPORTER = """
import sys
from datamanager import DataManager
from datamanager.hdf5 import export_hdf5
print("start", flush=True)
export_hdf5(DataManager.from_path(sys.argv[1]), sys.argv[2], overwrite=True, merged=True)
print("done", flush=True)
"""


def test_sigkill_mid_export(tmp_path: Path):
    dm = DataManager("big", str(tmp_path))
    fill(
        dm,
        [
            {"a": np.random.default_rng(i).random(500_000), "b": list(range(100))}
            for i in range(12)
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    target = out / "x.h5"
    rng = np.random.default_rng(0)
    old = None
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", EXPORTER, dm.basepath, str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"start\n"
            deadline = time.monotonic() + 30
            while not any(p.suffix == ".part" for p in out.iterdir()):
                assert time.monotonic() < deadline and proc.poll() is None, "no export started"
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.05))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.communicate()  # reaps the worker and closes its pipe
        if proc.returncode != -signal.SIGKILL:
            continue  # finished first: the next attempt overwrites a complete file
        if old is None:
            assert not target.exists()
        else:
            assert target.read_bytes() == old
        for part in out.glob("*.part"):
            part.unlink()
        if old is None:  # from now on, an existing file must survive
            export_hdf5(dm, target)
            old = target.read_bytes()
    assert old is not None
    load_hdf5(target)


# Both ways to export, given DATADIR and OUT after these arguments.
INTERRUPTIBLE = {
    "library": [
        "-c",
        "import sys\nfrom datamanager import DataManager, export_hdf5\n"
        "dm = DataManager.from_path(sys.argv[1])\n"
        "export_hdf5(dm, sys.argv[2], compression='gzip')",
    ],
    "cli": ["-m", "datamanager", "export", "--compression", "gzip"],
}


def _part_bytes(folder: Path) -> int:
    total = 0
    for part in folder.glob("*.part"):
        try:
            total += part.stat().st_size
        except FileNotFoundError:  # published or removed meanwhile
            pass
    return total


@pytest.fixture(scope="module")
def side_file_arrays(tmp_path_factory: pytest.TempPathFactory) -> DataManager:
    """Sessions of one 4 MB array each, kept in side files."""
    dm = DataManager("big", str(tmp_path_factory.mktemp("side")))
    fill(dm, [{"a": np.random.default_rng(i).random(500_000)} for i in range(8)])
    return dm


@pytest.mark.parametrize("how, status", [("library", -signal.SIGINT), ("cli", 130)])
def test_ctrl_c_stops_export_and_leaves_nothing(
    side_file_arrays: DataManager, tmp_path: Path, how: str, status: int
):
    # Compressed side-file arrays: the export spends its time inside HDF5
    # writes, after which h5py runs weakref callbacks, where a pending
    # KeyboardInterrupt was dropped ("Exception ignored in ...").
    dm = side_file_arrays
    target = tmp_path / "x.h5"
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, *INTERRUPTIBLE[how], dm.basepath, str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=interruptible,
        )
        try:
            deadline = time.monotonic() + 60
            # Signal once the first array is being written.
            while proc.poll() is None and _part_bytes(tmp_path) < 1 << 20:
                assert time.monotonic() < deadline, "the export did not start"
                time.sleep(0.001)
            proc.send_signal(signal.SIGINT)  # nothing if it has already exited
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.communicate()
        if not (target.exists() and "Exception ignored" not in err):
            break
        target.unlink()  # the export finished before the signal came: again
    else:
        pytest.fail("every export finished before it could be interrupted")
    assert "Exception ignored" not in err, err
    assert proc.returncode == status, err
    assert ("KeyboardInterrupt" if how == "library" else "Error: interrupted") in err, err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# Foreign readers.


def test_plain_h5py_reads_export_in_subprocess(dm: DataManager, tmp_path: Path):
    (name,) = fill(dm, [{"rate/Hz": np.arange(3.0), "label": "été", "n": 3, "l": [1.0, 2.0]}])
    export_hdf5(dm, tmp_path / "x.h5")
    export_hdf5(dm, tmp_path / "m.h5", merged=True)
    code = textwrap.dedent(
        """
        import json, sys, h5py
        with h5py.File(sys.argv[1], "r") as f:
            g = f["sessions"][sys.argv[3]]
            assert list(g["rate%2FHz"][()]) == [0.0, 1.0, 2.0]
            assert g["label"].asstr()[()] == "été"
            assert int(g["n"][()]) == 3 and g["n"].attrs["python_type"] == "int"
            assert json.loads(g.attrs["metadata"])["user"]
            assert f.attrs["datamanager_name"] == "sweep"
        with h5py.File(sys.argv[2], "r") as f:
            assert list(f["merged"]["l"][()]) == [1.0, 2.0]
            (row,) = f["merged_index"]["l"][()]
            assert row["session"].decode() == sys.argv[3] and row["stop"] == 2
        assert "datamanager" not in sys.modules
        print("ok")
        """
    )
    proc = run_python(
        code, str(tmp_path / "x.h5"), str(tmp_path / "m.h5"), name, cwd=str(tmp_path)
    )
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("tool, args", [("h5ls", ["-r"]), ("h5dump", ["-H"])])
def test_hdf5_tools_read_export(dm: DataManager, tmp_path: Path, tool: str, args: list[str]):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (Debian package hdf5-tools)")
    fill(dm, [{"a": np.arange(3.0), "s": "x", "d": {"k/1": [1, None, b"b"]}, "l": [1.0]}] * 2)
    export_hdf5(dm, tmp_path / "x.h5", merged=True)
    proc = subprocess.run([tool, *args, str(tmp_path / "x.h5")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "sessions" in proc.stdout and "merged" in proc.stdout


def test_import_datamanager_does_not_import_h5py():
    proc = run_python(
        "import sys, datamanager, datamanager.hdf5, datamanager.cli\n"
        "print(sorted(m for m in ('h5py', 'pandas', 'tqdm') if m in sys.modules))"
    )
    assert proc.stdout.strip() == "[]"


def test_progress_bar_only_on_a_terminal(dm: DataManager, tmp_path: Path):
    pytest.importorskip("tqdm")
    import fcntl
    import pty
    import struct
    import termios

    fill(dm, [{"a": 1}] * 3)
    code = (
        "import sys\nfrom datamanager import DataManager\n"
        "from datamanager.hdf5 import export_hdf5\n"
        "export_hdf5(DataManager.from_path(sys.argv[1]), sys.argv[2], progress=sys.argv[3] == '1')"
    )
    outputs = []
    for n, progress in enumerate(["1", "0"]):
        leader, follower = pty.openpty()
        # A real terminal has a size; tqdm draws nothing on a 0-column one.
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        proc = subprocess.run(
            [sys.executable, "-c", code, dm.basepath, str(tmp_path / f"{n}.h5"), progress],
            stderr=follower,
            stdout=subprocess.PIPE,
            timeout=60,
        )
        assert proc.returncode == 0
        # Read while our end keeps the terminal open: Linux drops what is
        # pending once every follower descriptor is closed.
        os.set_blocking(leader, False)
        chunks = []
        while True:
            try:
                chunks.append(os.read(leader, 65536))
            except BlockingIOError:
                break
        os.close(follower)
        os.close(leader)
        outputs.append(b"".join(chunks))
    assert b"session" in outputs[0] and outputs[1] == b""
