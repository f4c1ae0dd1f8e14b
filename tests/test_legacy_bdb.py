"""Berkeley DB hash shelves (Python 2's dbhash, Debian's dbm.ndbm) read without libdb."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from datamanager import DataManager
from datamanager.errors import CorruptSessionError, DataManagerWarning

DATA = Path(__file__).parent / "data"
LAYOUTS = {"bdb_debian_py3.data": ".db", "bdb_py2_dbhash.data": ""}
SESSIONS = ("carol.cluster", "carol.cluster.0a1b", "dave.laptop.9f")
PAGE = 4096  # the page size of the sample files


def copy(tmp_path: Path, folder: str) -> Path:
    target = tmp_path / folder
    shutil.copytree(DATA / folder, target)
    return target


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def check_contents(dm: DataManager) -> None:
    """The values the README of the samples lists, session j = 0, 1, 2."""
    assert dm.get("v_rest") == {name: [-65.0 - j] for j, name in enumerate(SESSIONS)}
    assert len(dm.get_merged("trace")) == 4000 + 4001 + 4002
    assert dm.get("trace")["dave.laptop.9f"] == [x / 7 for x in range(4002)]
    matching = dm.get_matching("p/")
    assert sorted(matching) == [f"p/{k:03d}" for k in range(150)]
    for k in range(150):
        expected = {name: {"k": k, "session": j} for j, name in enumerate(SESSIONS)}
        assert matching[f"p/{k:03d}"] == expected
    assert sorted(dm.keys()) == sorted(["v_rest", "trace", *matching])
    assert dm.itemcount() == 3 * 152


@pytest.mark.parametrize("folder", sorted(LAYOUTS))
def test_bdb_shelves_collate_verify_and_migrate_without_writing(tmp_path, folder):
    path = copy(tmp_path, folder)
    before = snapshot(path)
    dm = DataManager.from_path(str(path))
    check_contents(dm)
    assert dm.verify() == []
    assert snapshot(path) == before  # reading wrote nothing, created nothing
    assert sorted(dm.migrate()) == sorted(SESSIONS)
    after = snapshot(path)
    assert {name: after[name] for name in before} == before
    assert sorted(dm.session_filenames()) == sorted(str(path / f"{n}.sqlite") for n in SESSIONS)
    check_contents(dm)  # now from the native sessions
    assert dm.verify() == []
    assert dm.migrate() == []


def swap_order(data: bytes) -> bytes:
    """A little-endian Berkeley DB hash file rewritten as a big-endian machine writes it."""
    out = bytearray(data)

    def swap(offset: int, fmt: str) -> None:
        struct.pack_into(">" + fmt, out, offset, *struct.unpack_from("<" + fmt, data, offset))

    swap(8, "IIII")  # metadata: page number, magic, version, page size,
    swap(28, "II")  # free list, last page
    for start in range(PAGE, len(data), PAGE):
        swap(start + 8, "IIIHH")
        if data[start + 25] in (2, 13):
            entries = struct.unpack_from("<H", data, start + 20)[0]
            for i in range(entries):
                swap(start + 26 + 2 * i, "H")
                offset = struct.unpack_from("<H", data, start + 26 + 2 * i)[0]
                if data[start + offset] == 3:  # an overflow reference: page, length
                    swap(start + offset + 4, "II")
    return bytes(out)


def test_big_endian_files_read_alike(tmp_path):
    path = copy(tmp_path, "bdb_py2_dbhash.data")
    for name in SESSIONS:
        file = path / name
        file.write_bytes(swap_order(file.read_bytes()))
    check_contents(DataManager.from_path(str(path)))


def damage(file: Path, page: int, offset: int, fmt: str, value: int) -> None:
    data = bytearray(file.read_bytes())
    struct.pack_into("<" + fmt, data, page * PAGE + offset, value)
    file.write_bytes(bytes(data))


def trace_reference(file: Path) -> tuple[int, int]:
    """The page and offset of the overflow reference of 'trace' in *file*."""
    data = file.read_bytes()
    for page in range(1, len(data) // PAGE):
        start = page * PAGE
        if data[start + 25] != 13:
            continue
        for i in range(1, struct.unpack_from("<H", data, start + 20)[0], 2):
            key_at = struct.unpack_from("<H", data, start + 26 + 2 * i - 2)[0]
            end = PAGE if i == 1 else struct.unpack_from("<H", data, start + 26 + 2 * i - 4)[0]
            if data[start + key_at + 1 : start + end] == b"trace":
                return page, struct.unpack_from("<H", data, start + 26 + 2 * i)[0]
    raise AssertionError("no trace key")


# Damage found when the key index is built, rather than when a value is read.
FOUND_AT_OPEN = ("item_outside", "truncated", "duplicates")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("loop", "overflow chain loops back to page"),
        ("out_of_range", "page 99999: out of range"),
        ("item_outside", "outside the page"),
        ("truncated", "file cut short"),
        ("duplicates", "duplicate data items, which shelve never writes"),
    ],
)
def test_damaged_files_give_clear_errors(tmp_path, where, expected):
    path = copy(tmp_path, "bdb_debian_py3.data")
    file = path / "carol.cluster.db"
    page, offset = trace_reference(file)
    first = struct.unpack_from("<I", file.read_bytes(), page * PAGE + offset + 4)[0]
    if where == "loop":  # the second overflow page leads back to the first
        nxt = struct.unpack_from("<I", file.read_bytes(), first * PAGE + 16)[0]
        damage(file, nxt, 16, "I", first)
    elif where == "out_of_range":
        damage(file, page, offset + 4, "I", 99999)
    elif where == "item_outside":
        damage(file, page, 26, "H", 5000)
    elif where == "duplicates":  # the reference to trace's value becomes a duplicate set
        damage(file, page, offset, "B", 4)
    else:  # cut before the last overflow page
        with open(file, "r+b") as f:
            f.truncate(11 * PAGE + 100)
    dm = DataManager.from_path(str(path))
    problems = dm.verify()
    assert [p.path for p in problems] == [str(path / "carol.cluster")]
    assert str(file) in problems[0].message and expected in problems[0].message
    if where in FOUND_AT_OPEN:  # no key can be trusted: the shelf is skipped
        with pytest.warns(DataManagerWarning, match=expected):
            assert list(dm.get("v_rest")) == ["carol.cluster.0a1b", "dave.laptop.9f"]
    else:
        with pytest.warns(DataManagerWarning, match=expected):
            assert len(dm.get("trace")) == 2
        with pytest.raises(CorruptSessionError, match=expected):
            dm.get("trace", strict=True)
