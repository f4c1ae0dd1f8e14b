"""Damaged sessions: a flipped byte in a pickle, a metadata cell that is not
text, a broken .npy header.  Each failure to decode is a CorruptSessionError
(skipped with a warning in collation, raised with strict=True), verify()
reports without raising, and the command line ends in an error, never a
traceback."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from datamanager import CorruptSessionError, DataManager, DataManagerWarning
from datamanager._format import blob_dir
from datamanager.cli import main

ARRAY = np.arange(6.0).reshape(2, 3)


@pytest.fixture
def damaged(dm: DataManager) -> DataManager:
    """Sessions 'good' and 'bad' written by the library, each with 'arr', 'big'
    (a side file) and 'params'; the tests damage 'bad' on disk."""
    for name in ("good", "bad"):
        with dm.session(name) as s:
            s["arr"] = ARRAY
            s["big"] = np.arange(200_000.0)
            s["params"] = {"session": name}
    return dm


def _sql(dm: DataManager, sql: str, *params) -> None:
    conn = sqlite3.connect(f"{dm.basepath}/bad.sqlite")
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def _position(data: bytes, damage: str) -> tuple[int, int]:
    """Where to flip a byte of ``pickle.dumps(ARRAY, 5)``, and with what, so that
    plain ``pickle.loads`` fails in the way the damage is named after."""
    ops = list(pickletools.genops(data))
    if damage == "module name":  # numpy -> oumpy
        return data.index(b"numpy"), 0x01
    if damage == "attribute name":  # _frombuffer -> _grombuffer
        return data.index(b"_frombuffer") + 1, 0x01
    if damage == "dtype code":  # 'f8' -> 'g8'
        return data.index(b"\x02f8") + 1, 0x01
    if damage == "dtype state":  # the state tuple becomes a list
        return next(pos for op, _, pos in ops if op.name == "TUPLE"), ord("t") ^ ord("l")
    assert damage == "data length"  # the 8-byte length of the array's bytes
    return next(pos for op, _, pos in ops if op.name == "BYTEARRAY8") + 8, 0x7F


DAMAGES = {
    "module name": ModuleNotFoundError,
    "attribute name": AttributeError,
    "dtype code": TypeError,
    "dtype state": SystemError,
    "data length": MemoryError,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_flipped_pickle_byte_is_a_corrupt_value(damaged, damage, capsys):
    dm = damaged
    data = bytearray(pickle.dumps(ARRAY, 5))
    at, mask = _position(bytes(data), damage)
    data[at] ^= mask
    with pytest.raises(DAMAGES[damage]):  # what unpickling the damage raises
        pickle.loads(bytes(data))
    _sql(dm, "UPDATE items SET value = ? WHERE key = 'arr'", bytes(data))

    with pytest.raises(CorruptSessionError, match=r"bad\.sqlite \(key 'arr'\)") as info:
        dm.get("arr", strict=True)
    assert isinstance(info.value.__cause__, DAMAGES[damage])
    assert DAMAGES[damage].__name__ in str(info.value)
    with pytest.warns(DataManagerWarning, match="'arr'"):
        assert list(dm.get("arr")) == ["good"]
    with pytest.warns(DataManagerWarning, match="'arr'"):
        items = dm.items()
    # Only the damaged value is left out: the session's other values remain.
    assert sorted(k for k, _ in items) == ["arr", "big", "big", "params", "params"]
    with pytest.raises(CorruptSessionError):
        dm.items(strict=True)
    with pytest.warns(DataManagerWarning, match="'arr'"):
        assert dm.get_matching("a") == {"arr": {"good": pytest.approx(ARRAY)}}
    dm.verify()  # never raises (what it can see without running code, it reports)

    assert main(["--unsafe", "show", dm.basepath, "arr"]) == 1
    # (CPython's unpickler may print "SystemError: deallocated bytearray ..."
    # on its way to the MemoryError of a damaged length.)
    assert capsys.readouterr().err.splitlines()[-1].startswith("Error: corrupt session")


def test_a_damaged_length_is_reported_by_verify(damaged):
    data = bytearray(pickle.dumps(ARRAY, 5))
    at, mask = _position(bytes(data), "data length")
    data[at] ^= mask
    _sql(damaged, "UPDATE items SET value = ? WHERE key = 'arr'", bytes(data))
    [problem] = damaged.verify()
    assert problem.path.endswith("bad.sqlite") and "key 'arr': malformed pickle" in problem.message


def test_a_value_that_is_not_a_pickle_is_corrupt(damaged):
    _sql(damaged, "UPDATE items SET value = 'text, not bytes' WHERE key = 'arr'")
    with pytest.raises(CorruptSessionError, match="'arr'"):
        damaged.get("arr", strict=True)
    [problem] = damaged.verify()
    assert "key 'arr'" in problem.message


def test_a_creation_time_that_is_not_text_skips_the_session(damaged):
    dm = damaged
    _sql(dm, "UPDATE meta SET value = x'fffe00' WHERE name = 'created'")
    with pytest.warns(DataManagerWarning, match=r"bad\.sqlite"):
        assert dm.keys() == ["arr", "big", "params"]
    with pytest.warns(DataManagerWarning, match=r"bad\.sqlite"):
        assert list(dm.sessions()["name"]) == ["good"]
    with pytest.raises(CorruptSessionError, match="metadata entry 'created'"):
        dm.keys(strict=True)
    [problem] = dm.verify()
    assert problem.path.endswith("bad.sqlite") and "'created'" in problem.message
    proc = subprocess.run(
        [sys.executable, "-m", "datamanager", "ls", dm.basepath],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "good" in proc.stdout and "bad" not in proc.stdout


@pytest.mark.parametrize(
    "cell",
    [b"\xff", b'"not json', b"[" * 100_000],
    ids=["not text", "not JSON", "nested too deep"],
)
def test_a_metadata_entry_that_is_not_json_text_is_reported(damaged, cell):
    dm = damaged
    _sql(dm, "UPDATE meta SET value = ? WHERE name = 'host'", cell)
    assert dm.keys() == ["arr", "big", "params"]  # the values do not need it
    with pytest.warns(DataManagerWarning, match="metadata entry 'host'"):
        assert list(dm.sessions()["name"]) == ["good"]
    with pytest.raises(CorruptSessionError, match="metadata entry 'host'"):
        dm.sessions(strict=True)
    [problem] = dm.verify()
    assert "metadata entry 'host'" in problem.message


def test_a_damaged_npy_header_is_a_corrupt_value(damaged, capsys):
    dm = damaged
    side_dir = blob_dir(f"{dm.basepath}/bad.sqlite")
    [name] = os.listdir(side_dir)
    with open(f"{side_dir}/{name}", "r+b") as f:
        head = f.read(128)
        f.seek(head.index(b"}"))
        f.write(b" ")  # numpy's own reader: tokenize.TokenError
    with pytest.raises(CorruptSessionError, match=r"(?s)'big'.*header"):
        dm.get("big", strict=True)
    with pytest.warns(DataManagerWarning, match="'big'"):
        assert list(dm.get("big")) == ["good"]
    with pytest.warns(DataManagerWarning, match="'big'"):
        assert sorted(k for k, _ in dm.items()) == ["arr", "arr", "big", "params", "params"]
    [problem] = dm.verify()
    assert problem.path.endswith(name) and "not a valid .npy file" in problem.message
    assert main(["show", dm.basepath, "big"]) == 1
    assert capsys.readouterr().err.startswith("Error: corrupt session")


def test_show_summarises_a_value_nested_a_hundred_thousand_deep(damaged, capsys):
    # A few bytes of pickle: EMPTY_LIST pushed 100,000 times, then APPENDed
    # into each other.  Loading it is fine; printing it must not recurse.
    deep = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."
    _sql(damaged, "UPDATE items SET value = ? WHERE key = 'params'", deep)
    assert main(["show", damaged.basepath, "params"]) == 0
    assert "[[[[[[...]]]]]]" in capsys.readouterr().out


def _zero_width_header(descr: str) -> bytes:
    """A ``.npy`` header of 10**11 elements of the zero-width *descr*: 0 bytes
    of data by its own count, 400 GB of memory if numpy made the array."""
    out = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": (10**11,)}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


@pytest.mark.parametrize("safe", [False, True], ids=["unsafe", "safe"])
@pytest.mark.parametrize("descr", ["<U0", "|S0", "|V0"])
@pytest.mark.parametrize("kind", ["array", "value file"])
def test_a_zero_width_dtype_of_many_elements_is_a_corrupt_value(dm, kind, descr, safe):
    with dm.session("bad") as s:
        s["v"] = np.zeros(200_000) if kind == "array" else {"t": np.zeros(200_000)}
    [name] = os.listdir(blob_dir(s.path))
    path = f"{blob_dir(s.path)}/{name}"
    with open(path, "rb") as f:
        data = f.read()
    # The whole .npy file (or the value file's only part) gets the header.
    data = data[: data.index(b"\x93NUMPY")] + _zero_width_header(descr)
    with open(path, "wb") as f:
        f.write(data)
    _sql(dm, "UPDATE items SET side_size = ? WHERE key = 'v'", len(data))
    reader = DataManager(dm.name, dm.datapath, safe=safe)
    with pytest.raises(CorruptSessionError, match=r"'v'.*zero-width"):
        reader.get("v", strict=True)
    with pytest.warns(DataManagerWarning, match="'v'"):
        assert reader.get("v") == {}
    [problem] = reader.verify()
    assert problem.path == path and "zero-width" in problem.message
