"""Safe mode against numpy pickles: what numpy, Python 2 and this library write
loads as pickle.loads loads it; crafted and mutated pickles are refused with
an error, never run or dereferenced."""

from __future__ import annotations

import pickle
import pickletools
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamanager import CorruptSessionError, DataManager, DataManagerWarning, UnsafeValueError
from datamanager._format import decode
from datamanager.recordings.recording import Recording

from conftest import stress_size

VALUES = {
    "float64 2-d": np.arange(6.0).reshape(2, 3),
    "big-endian": np.arange(5, dtype=">i4"),
    "structured": np.zeros(3, dtype=[("a", "i4"), ("b", ">f8", (2,))]),
    "aligned struct": np.ones(2, dtype=np.dtype([("a", "i1"), ("b", "f8")], align=True)),
    "titled fields": np.zeros(
        2,
        dtype={
            "names": ["a", "b"],
            "formats": ["i4", "f8"],
            "offsets": [0, 8],
            "titles": ["A", None],
            "itemsize": 24,
        },
    ),
    "datetime64[ms]": np.array(["2020-01-01", "2021-05-03T10:00"], dtype="M8[ms]"),
    "timedelta64[2s]": np.array([1, 2], dtype="m8[2s]"),
    "generic datetime": np.array([], dtype="M8"),
    "unicode": np.array(["abc", "é"], dtype="U4"),
    "bytes": np.array([b"ab", b"c"]),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "fortran slice": np.asfortranarray(np.arange(12.0).reshape(3, 4))[:, ::2],
    "0-d": np.array(3.5),
    "empty": np.zeros((0, 3)),
    "longdouble": np.arange(3, dtype=np.longdouble),
    "subarray field": np.zeros((2,), dtype=[("a", "f4", (2, 2))]),
    "dtype metadata": np.zeros(2, dtype=np.dtype("i4", metadata={"k": 1})),
    "float32 scalar": np.float32(2.5),
    "int64 scalar": np.int64(-3),
    "complex scalar": np.complex128(1 + 2j),
    "datetime scalar": np.datetime64("2020-01-01T10:00", "m"),
    "void scalar": np.zeros(1, dtype=[("a", "i4"), ("b", "f8")])[0],
    "str_ scalar": np.str_("héllo"),
    "bytes_ scalar": np.bytes_(b"xy"),
    "bool scalar": np.bool_(True),
    "float16 scalar": np.float16(1.5),
    "object array": np.array(["a", 1, [2, 3], np.arange(2)], dtype=object),
    "fortran objects": np.asfortranarray(np.array([[1, "a"], [2.5, None]], dtype=object)),
    "object field": np.array([(1, "x")], dtype=[("a", "i4"), ("b", "O")]),
    "dtype": np.dtype(">f8"),
    "dtypes in containers": [np.dtype([("a", "U3")]), {np.dtype("i2"): 1}, (np.dtype("M8[s]"),)],
    "shared dtype": [np.arange(3)[::2], np.dtype("f8"), np.arange(3.0)],
    "recording of text": Recording(np.array([[1.0, "a"]], dtype=object), ["x", "y"]),
    "recording": Recording(np.ones((2, 2)), ["t", "v"], ["ms", None]),
    "builtins": [{1, 2}, frozenset({3}), bytearray(b"xy"), 1 + 2j, range(3), slice(1, 2), b""],
}


def _same(a, b) -> bool:
    """Equal values of one type; arrays also in dtype, layout and every byte."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        same_layout = a.shape == b.shape and (a.strides == b.strides or a.size == 0)
        return (
            a.dtype == b.dtype
            # numpy 2.0's unpickling gives datetime dtypes metadata {} where None was stored
            and (a.dtype.metadata or None) == (b.dtype.metadata or None)
            and same_layout
            and a.flags.writeable == b.flags.writeable
            and _same(a.tolist(), b.tolist())
            and (a.dtype.hasobject or a.tobytes("A") == b.tobytes("A"))
        )  # not pointers
    if isinstance(a, (np.generic, np.dtype)):  # dtype and raw bytes
        return pickle.dumps(a, 2) == pickle.dumps(b, 2)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, Recording):
        return _same(a.data, b.data) and a == b
    return a == b


def _safe(data: bytes):
    return decode(data, "test.sqlite", "test", "key", safe=True)


@pytest.mark.parametrize("protocol", [2, 3, 5])
@pytest.mark.parametrize("name", list(VALUES))
def test_values_load_in_safe_mode_as_pickle_loads_them(name, protocol):
    data = pickle.dumps(VALUES[name], protocol)
    assert _same(_safe(data), pickle.loads(data))


@pytest.mark.parametrize(
    "name",
    [
        "float64 2-d",
        "structured",
        "datetime64[ms]",
        "fortran slice",
        "float32 scalar",
        "object array",
    ],
)
def test_numpy_1_pickles_load_in_safe_mode(name):
    # numpy 1.x names its functions numpy.core.*; in protocol 3 they are
    # newline-terminated names, so the 1.x pickle is a plain replacement.
    data = pickle.dumps(VALUES[name], 3)
    old = data.replace(b"numpy._core.", b"numpy.core.")
    assert old != data
    assert _same(_safe(old), pickle.loads(data))


# What numpy 1.x on Python 2 wrote for np.arange(3.0), np.float64(2.5) and a
# structured array, opcode by opcode: byte strings (U, SHORT_BINSTRING) load as
# latin-1 text; ints where Python 3 has bools.
_PY2_STATE = b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
_PY2_F8 = b"cnumpy\ndtype\nU\x02f8K\x00K\x01\x87R" + _PY2_STATE
_PY2_I4 = b"cnumpy\ndtype\nU\x02i4K\x00K\x01\x87R" + _PY2_STATE
_PY2_NEW = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
_PY2_ARRAY = (
    _PY2_NEW + b"(K\x01K\x03\x85" + _PY2_F8 + b"\x89U\x18" + np.arange(3.0).tobytes() + b"tb."
)
_PY2_SCALAR = (
    b"\x80\x02cnumpy.core.multiarray\nscalar\n"
    + _PY2_F8
    + b"U\x08"
    + np.float64(2.5).tobytes()
    + b"\x86R."
)
_PY2_RECORDS = (
    _PY2_NEW + b"(K\x01K\x02\x85cnumpy\ndtype\nU\x03V12K\x00K\x01\x87R"
    b"(K\x03U\x01|NU\x01a"
    b"U\x01b\x86}(U\x01a" + _PY2_I4 + b"K\x00\x86U\x01b" + _PY2_F8 + b"K\x04\x86uK\x0c"
    b"K\x01K\x10tb\x89U\x18" + bytes(range(24)) + b"tb."
)


def test_python_2_numpy_pickles_load_in_safe_mode():
    assert _same(_safe(_PY2_ARRAY), np.arange(3.0))
    assert _same(_safe(_PY2_SCALAR), np.float64(2.5))
    expected = np.frombuffer(bytes(range(24)), dtype=[("a", "<i4"), ("b", "<f8")]).copy()
    assert _same(_safe(_PY2_RECORDS), expected)
    assert _same(pickle.loads(_PY2_RECORDS, encoding="latin1"), expected)  # as numpy reads it


class _Reduce:
    """Pickles as ``func(*args)`` followed by ``state``: how numpy's own values pickle."""

    def __init__(self, func, args, state=None):
        self.reduced = (func, args) if state is None else (func, args, state)

    def __reduce__(self):
        return self.reduced


def _dtype(code: str, **state_changes) -> _Reduce:
    """numpy's pickle of ``np.dtype(code)``, with fields of its state replaced."""
    cls, args, state = np.dtype(code).__reduce__()
    names = [
        "version",
        "byteorder",
        "subarray",
        "names",
        "fields",
        "elsize",
        "alignment",
        "flags",
        "metadata",
    ][: len(state)]
    return _Reduce(cls, args, tuple(state_changes.get(n, v) for n, v in zip(names, state)))


def _array(dtype, data, shape=(2,)) -> _Reduce:
    """numpy's protocol-2 pickle of an array: _reconstruct, then its state."""
    func, args, _ = np.zeros(1).__reduce__()
    return _Reduce(func, args, (1, shape, dtype, False, data))


def _crafted_object_array() -> bytes:
    """An object array whose dtype state clears NPY_LIST_PICKLE (flags 0): numpy's
    own unpickling then reads its 16 raw bytes as two object pointers."""
    return pickle.dumps(_array(_dtype("O", flags=0), b"\x41" * 16), 3)


_FROMBUFFER = np.arange(2.0).__reduce_ex__(5)[0]
_SCALAR = np.float64(0).__reduce__()[0]


def _struct(fields: dict, flags: int = 16) -> _Reduce:
    """numpy's pickle of an 8-byte structured dtype with *fields* as given."""
    return _Reduce(
        np.dtype, ("V8", False, True), (3, "|", None, tuple(fields), fields, 8, 1, flags)
    )


_F8_STATE = b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"

CRAFTED = {
    "object array of raw bytes": _crafted_object_array(),
    "object array, flags intact": pickle.dumps(_array(_dtype("O"), b"\x41" * 16), 3),
    "object field of raw bytes": pickle.dumps(
        _array(_struct({"a": (_dtype("O"), 0)}, flags=0), b"\x41" * 16), 3
    ),
    "object dtype in protocol 5": pickle.dumps(
        _Reduce(_FROMBUFFER, (bytearray(16), _dtype("O", flags=0), (2,), "C")), 5
    ),
    "object scalar": pickle.dumps(_Reduce(_SCALAR, (_dtype("O"), b"A" * 8)), 3),
    "item size beyond the data": pickle.dumps(_array(_dtype("V8", elsize=1 << 20), b"\0" * 16), 3),
    "field beyond the item": pickle.dumps(
        _array(_struct({"a": (_dtype("f8"), 4096)}), b"\0" * 16), 3
    ),
    "subarray larger than the item": pickle.dumps(
        _array(_dtype("V8", subarray=(_dtype("f8"), (1000,))), b"\0" * 16), 3
    ),
    "bad byte order": pickle.dumps(_array(_dtype("f8", byteorder="x"), b"\0" * 16), 3),
    "data shorter than the shape": pickle.dumps(_array(_dtype("f8"), b"\0" * 8, (1000,)), 3),
    "negative shape": pickle.dumps(_array(_dtype("f8"), b"", (-1,)), 3),
    "structured type code": pickle.dumps(_array(_Reduce(np.dtype, ("f8,O", False, True)), b""), 3),
    "state given twice": b"\x80\x03cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R"
    + _F8_STATE
    + b"b"
    + _F8_STATE
    + b"b.",
    "ndarray called": pickle.dumps(_Reduce(np.ndarray, ((1 << 20,), "f8")), 3),
    "datetime unit": pickle.dumps(
        _array(_dtype("M8[s]", metadata=(None, (b"zz", 1, 1, 1))), b"\0" * 16), 3
    ),
}


def _store_raw(path: str, key: str, data: bytes) -> None:
    """Put *data* as the stored pickle of *key*, with plain sqlite3."""
    conn = sqlite3.connect(path)
    conn.execute("UPDATE items SET value = ? WHERE key = ?", (data, key))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_numpy_values_are_refused_as_corrupt(dm, name):
    with dm.session("crafted") as s:
        s["x"] = 0
    _store_raw(s.path, "x", CRAFTED[name])
    safe = DataManager(dm.name, dm.datapath, safe=True)
    with pytest.raises(CorruptSessionError, match="'x'"):
        safe.get("x", strict=True)
    with pytest.warns(DataManagerWarning, match="'x'"):
        assert safe.get("x") == {}


READ_CRAFTED = """
import sys
from datamanager import DataManager, CorruptSessionError
dm = DataManager("sweep", sys.argv[1], safe=True)
try:
    print("loaded:", dm.get("x", strict=True))  # repr reads the objects
except CorruptSessionError as exc:
    print("refused:", exc)
"""


def test_crafted_object_dtype_cannot_crash_safe_readers(dm):
    """The crafted object array makes numpy read raw bytes as object pointers
    (SIGSEGV); safe mode must refuse it before numpy sees it."""
    with dm.session("crafted") as s:
        s["x"] = 0
    _store_raw(s.path, "x", _crafted_object_array())
    read = subprocess.run(
        [sys.executable, "-c", READ_CRAFTED, dm.datapath],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert read.returncode == 0, f"reader died ({read.returncode}):\n{read.stderr}"
    assert "refused:" in read.stdout and "(key 'x')" in read.stdout
    show = subprocess.run(
        [sys.executable, "-m", "datamanager", "show", dm.basepath, "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert show.returncode == 1, f"show died ({show.returncode}):\n{show.stderr}"
    assert show.stderr.startswith("Error: ") and "Traceback" not in show.stderr


# -- fuzzing ------------------------------------------------------------------

FUZZ_BASES = [
    pickle.dumps(value, protocol)
    for value in (
        VALUES["structured"],
        VALUES["datetime64[ms]"],
        VALUES["void scalar"],
        VALUES["object field"],
        VALUES["dtypes in containers"],
        {"a": [1, 2.5, "x"], "b": (1, b"zz")},
    )
    for protocol in (2, 3, 5)
]


def _memo_blowup(data: bytes) -> bool:
    """Whether CPython's unpickler would be told to size its memo past the data
    (one flipped byte can make a LONG_BINPUT of ~2**31): that allocates, and
    may exhaust memory, before any safe-mode check can run."""
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > len(data):
                return True
    except Exception:
        return False
    return False


@st.composite
def mutated_pickles(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(FUZZ_BASES)))
    for _ in range(draw(st.integers(1, 3))):
        if len(data) < 2:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[max(at, 1) :]
    return bytes(data)


@st.composite
def crafted_dtype_states(draw) -> bytes:
    code = draw(st.sampled_from(["O", "f8", "V8", "U2", "M8[s]", "S3"]))
    field = draw(
        st.sampled_from(
            ["byteorder", "subarray", "names", "fields", "elsize", "alignment", "flags"]
        )
    )
    junk = draw(
        st.one_of(
            st.integers(-(2**40), 2**40),
            st.text(max_size=3),
            st.none(),
            st.tuples(st.integers(), st.integers()),
        )
    )
    data = draw(st.binary(max_size=32))
    return pickle.dumps(
        _array(_dtype(code, **{field: junk}), data, (len(data) // 8,)),
        draw(st.sampled_from([3, 5])),
    )


@pytest.mark.stress
@settings(
    max_examples=stress_size(600, 150),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.one_of(mutated_pickles(), crafted_dtype_states()))
def test_safe_loader_fuzz_gives_a_value_or_a_clear_error(data):
    if _memo_blowup(data):
        return
    try:
        _safe(data)
    except (UnsafeValueError, CorruptSessionError):
        pass  # anything else it raises fails the test


FUZZ_BATCH = """
import pickle, random, sys
from datamanager import CorruptSessionError, UnsafeValueError
from datamanager._format import decode
import test_safepickle as t
rng = random.Random(int(sys.argv[1]))
for n in range(int(sys.argv[2])):
    data = bytearray(rng.choice(t.FUZZ_BASES))
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] ^= rng.randint(1, 255)
    if t._memo_blowup(bytes(data)):
        continue
    try:
        decode(bytes(data), "f.sqlite", "f", "k", safe=True)
    except (UnsafeValueError, CorruptSessionError):
        pass
print("done")
"""


@pytest.mark.stress
def test_safe_loader_fuzz_batch_in_a_subprocess_exits_cleanly():
    # A segfault would kill pytest itself: this batch runs apart.
    tests = str(Path(__file__).parent)
    proc = subprocess.run(
        [sys.executable, "-c", FUZZ_BATCH, "20251130", str(stress_size(3000, 400))],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tests,
    )
    assert proc.returncode == 0, f"fuzz batch died ({proc.returncode}):\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "done"
