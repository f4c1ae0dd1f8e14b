"""GNU dbm shelves and Python 2 strings, read on a Python without ``dbm.gnu``.

The sample folders in ``tests/data/legacy_shelves`` (see SOURCES.md and the
README beside the originals) were written by Debian's python3 with GNU dbm
1.23 on x86-64, and by CPython 2.7 with ``dumbdbm``.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from datamanager import CorruptSessionError, DataManager, DataManagerWarning, safepickle

SAMPLES = Path(__file__).parent / "data" / "legacy_shelves"
GDBM_SESSIONS = ["frank.hpc", "frank.hpc.3c2d", "grace.node7.e1"]


def _copy(tmp_path: Path, folder: str) -> DataManager:
    shutil.copytree(SAMPLES / folder, tmp_path / folder)
    return DataManager(folder.removesuffix(".data"), str(tmp_path))


def _snapshot(folder: str) -> dict[str, tuple[bytes, int]]:
    return {
        name: (Path(folder, name).read_bytes(), os.stat(os.path.join(folder, name)).st_mtime_ns)
        for name in sorted(os.listdir(folder))
    }


@pytest.mark.parametrize("safe", [False, True])
def test_gdbm_shelves_collate_verify_and_migrate_untouched(tmp_path: Path, safe: bool):
    dm = _copy(tmp_path, "gdbm_py3.data")
    dm = DataManager(dm.name, dm.datapath, safe=safe)
    before = _snapshot(dm.basepath)
    assert dm.get("v_rest", strict=True) == {
        name: [-70.0 - j] for j, name in enumerate(GDBM_SESSIONS)
    }
    assert [len(t) for t in dm.get("trace", strict=True).values()] == [5000, 5001, 5002]
    assert dm.get("trace")["frank.hpc.3c2d"][3] == 1.0
    assert dm.get("q/000") == {name: ("overwritten", j) for j, name in enumerate(GDBM_SESSIONS)}
    assert dm.get("q/001")["grace.node7.e1"] == (1, 2)
    assert dm.get("q/119") == {}
    keys = dm.keys()
    assert sum(k.startswith("q/") for k in keys) == 119 and "q/119" not in keys
    assert sorted(keys) == sorted(["trace", "v_rest", *(f"q/{k:03d}" for k in range(119))])
    assert dm.itemcount() == 3 * 121
    assert dm.verify() == []
    assert _snapshot(dm.basepath) == before  # reading writes no byte

    assert dm.migrate() == GDBM_SESSIONS
    for name in GDBM_SESSIONS:  # the shelves stay, beside their verified copies
        assert Path(dm.basepath, name).read_bytes() == before[name][0]
    assert all(p.endswith(".sqlite") for p in dm.session_filenames())
    assert dm.get_merged("v_rest") == [-70.0, -71.0, -72.0]
    assert dm.itemcount() == 3 * 121 and dm.verify() == []


def _element(data: bytes, bucket: int, used: int = 0) -> int:
    """Offset of the *used*-th used slot of the bucket at *bucket* (64-bit layout)."""
    slots = struct.unpack_from("<i", data, 28)[0]
    found = [
        bucket + 112 + 24 * n
        for n in range(slots)
        if struct.unpack_from("<i", data, bucket + 112 + 24 * n)[0] != -1
    ]
    return found[used]


def _damage(data: bytearray, how: str) -> None:
    """Damage a 64-bit little-endian GNU dbm file as *how* says."""
    if how == "magic only":
        del data[4:]
        return
    directory = struct.unpack_from("<q", data, 8)[0]
    bucket = struct.unpack_from("<q", data, directory)[0]
    element = _element(data, bucket)
    patches = {
        "directory past the end": [(8, "<q", 10**12)],
        # a directory size that agrees with its bits, both too large
        "directory of 2**27 entries": [(16, "<i", 8 << 27), (20, "<i", 27)],
        "bucket past the end": [(directory, "<q", len(data) + 4096)],
        "negative bucket address": [(directory, "<q", -4096)],
        # distinct addresses, overlapping buckets: more work than the file holds
        "overlapping buckets": [(directory + 8 * i, "<q", 4096 + 8 * i) for i in range(512)],
        "more records than slots": [(bucket + 108, "<i", 10**6)],
        "key past the end": [(element + 8, "<q", len(data) - 2)],
        "huge key": [(element + 16, "<i", 2**31 - 1)],
        "huge value": [(element + 20, "<i", 2**31 - 1)],
        "negative value size": [(element + 20, "<i", -5)],
        "slot count": [(28, "<i", 7)],
        "unused slot counted": [(element, "<i", -1)],
        "key start differs": [(element + 4, "4s", b"\xff\xff\xff\xff")],
    }
    for offset, form, value in patches[how]:
        struct.pack_into(form, data, offset, value)


@pytest.mark.parametrize(
    "how",
    [
        "directory past the end",
        "directory of 2**27 entries",
        "bucket past the end",
        "negative bucket address",
        "overlapping buckets",
        "more records than slots",
        "key past the end",
        "huge key",
        "huge value",
        "negative value size",
        "slot count",
        "unused slot counted",
        "key start differs",
        "magic only",
    ],
)
def test_damaged_gdbm_shelf_is_a_clear_error(tmp_path: Path, how: str):
    dm = _copy(tmp_path, "gdbm_py3.data")
    path = Path(dm.basepath, "frank.hpc")
    data = bytearray(path.read_bytes())
    _damage(data, how)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSessionError, match=r"frank\.hpc.*(legacy shelf|GNU dbm|outside)"):
        dm.get("v_rest", strict=True)
    problems = dm.verify()
    assert [p.path for p in problems] == [str(path)]
    with pytest.warns(DataManagerWarning, match="frank.hpc"):
        assert dm.get_merged("v_rest") == [-71.0, -72.0]  # the others still read
    assert (
        Path(dm.basepath, "frank.hpc.3c2d").read_bytes()
        == (SAMPLES / "gdbm_py3.data" / "frank.hpc.3c2d").read_bytes()
    )


@pytest.mark.parametrize("safe", [False, True])
def test_python2_str_is_utf8_text_and_arrays_stay_exact(tmp_path: Path, safe: bool):
    # A Python 2 str holding UTF-8 text reads back as that text, like the
    # unicode value beside it; numpy arrays (whose bytes Python 2 also
    # pickled as str) and longs stay exact.
    dm = _copy(tmp_path, "py2_dumbdbm.data")
    dm = DataManager(dm.name, dm.datapath, safe=safe)
    assert dm.get("label", strict=True) == {
        "erin.lab": "cellule n°0",
        "erin.lab.c0ffee": "cellule n°1",
    }
    assert dm.get("ulabel") == dm.get("label")
    for j, spikes in enumerate(dm.get("spikes").values()):
        assert spikes.dtype == np.float64
        np.testing.assert_array_equal(spikes, np.arange(5.0) * (j + 1))
    assert list(dm.get("big").values()) == [2**70, 2**70 + 1]
    assert dm.get_merged("rates") == [0.0, 0.0, 1.0, 2.0]
    assert dm.verify() == []
    assert dm.migrate() == ["erin.lab", "erin.lab.c0ffee"]
    assert dm.get("label")["erin.lab"] == "cellule n°0"


def test_python2_str_keys_and_values_follow_one_rule(tmp_path: Path):
    # UTF-8 when valid, else latin-1, for keys as for values; a latin-1 key
    # that would take another key's name keeps surrogate escapes instead.
    import dbm.dumb

    dm = DataManager("old", str(tmp_path))
    os.makedirs(dm.basepath)
    utf8, latin1 = b"\x80\x02U\x04cl\xc3\xa9.", b"\x80\x02U\x04caf\xe9."  # py2 str values
    with dbm.dumb.open(os.path.join(dm.basepath, "py2"), "c") as db:
        db[b"cl\xc3\xa9"] = utf8
        db[b"caf\xe9"] = latin1
        db[b"\xc3\xa9"] = utf8
        db[b"\xe9"] = latin1
    for safe in (False, True):
        reader = DataManager("old", str(tmp_path), safe=safe)
        assert sorted(reader.keys()) == sorted(["clé", "café", "é", "\udce9"])
        assert reader.get("clé") == {"py2": "clé"} == reader.get("é")
        assert reader.get("café") == {"py2": "café"} == reader.get("\udce9")


def test_gdbm_numsync_format_is_read(tmp_path: Path):
    # gdbm >= 1.21 may write the "numsync" format: another magic number,
    # which Python's dbm.whichdb does not know, and the same layout.
    dm = _copy(tmp_path, "gdbm_py3.data")
    path = Path(dm.basepath, "grace.node7.e1")
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 0, 0x13579AD1)
    path.write_bytes(bytes(data))
    assert dm.get("v_rest", strict=True)["grace.node7.e1"] == [-72.0]
    assert dm.itemcount() == 3 * 121


@pytest.mark.parametrize("safe", [False, True])
def test_a_python2_str_in_a_shared_tuple_is_decoded_everywhere(safe: bool):
    # Protocol 2 as Python 2 writes [t, t]: the second t is a memo reference
    # to the first tuple, holding the UTF-8 bytes of 'café' as a str.
    data = b"\x80\x02]q\x00(U\x05caf\xc3\xa9q\x01\x85q\x02h\x02e."
    value = safepickle.loads(data, safe=safe, session="s", key="k")
    assert value == [("café",), ("café",)]
    assert value[0] is value[1]  # still shared
