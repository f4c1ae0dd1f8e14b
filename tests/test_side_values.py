"""Tables and collections of arrays in value files: exact, safe to read, crash-safe."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from fractions import Fraction

import dateutil.tz
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import frames

from datamanager import DataManager
from datamanager import _format as fmt
from datamanager.cli import main
from datamanager.errors import CorruptSessionError, UnsafeValueError

from conftest import start_python, stress_size

N = 7


def table() -> pd.DataFrame:
    """A DataFrame with a column of every dtype the value file holds."""
    frame = pd.DataFrame(
        {
            "int": np.arange(N, dtype=np.int32),
            "float": np.linspace(0, 1, N),
            "nan": np.array([np.nan, 1.5, -np.inf, 0, 1, 2, 3]),
            "bool": np.arange(N) % 2 == 0,
            "complex": np.arange(N) * 1j,
            "str": list("abcdéfg"),
            "str_missing": pd.array(["a", None, "", "d", "e", "f", "g"], dtype="str"),
            "str_na": pd.array(list("abc") + [None] * 4, dtype=pd.StringDtype("python")),
            "category": pd.Categorical(list("xyxyxzz"), ordered=True),
            "time": pd.date_range("2020-03-29", periods=N, freq="h"),
            "time_tz": pd.date_range("2020-03-29", periods=N, freq="h", tz="Europe/Paris"),
            "time_ns": pd.date_range("2020", periods=N, freq="ns", unit="ns"),
            "delta": pd.to_timedelta(np.arange(N), unit="s"),
            "nullable_int": pd.array([1, None, 3, 4, 5, 6, -7], dtype="Int16"),
            "nullable_float": pd.array([0.5, None, 3, 4, 5, 6, 7], dtype="Float64"),
            "nullable_bool": pd.array([True, None, False] * 2 + [None], dtype="boolean"),
        },
        index=pd.Index(list("pqrstuv"), name="cell"),
    )
    frame["objects"] = np.array(list("ABCDEFG"), dtype=object)
    frame.columns.name = "what"
    return frame


def large_table() -> pd.DataFrame:
    """:func:`table` repeated past 1 MiB of arrays: a table that gets a side file."""
    return pd.concat([table()] * 3000)


def values() -> dict[str, object]:
    frame = table()
    return {
        "frame": frame,
        "numbered": frame.set_axis(pd.RangeIndex(10, 10 + 2 * N, 2, name="step")),
        "multi": frame.set_index(["int", "str"], append=True),
        "int_labels": pd.DataFrame(np.eye(3), columns=[3, 1, 2], index=[0.5, 1.5, 2.5]),
        "empty": pd.DataFrame(index=pd.date_range("2021", periods=3, tz="UTC")),
        "series": frame["time_tz"],
        "unnamed": pd.Series([1, 2, 3], index=pd.Categorical(["a", "b", "a"])),
        "arrays": {"t": np.arange(200_000) * 0.1, "v": np.ones(200_000, np.float32)},
        "array_list": [np.zeros(300_000), np.array(["x", "yz"]), np.arange(3)],
    }


def side_files(dm: DataManager) -> dict[str, str]:
    """``{key: side file path}`` of every side file of the data directory."""
    return {key: path for r in dm.iter_sessions() for key, path, _ in r.side_files()}


def same(got: object, expected: object) -> None:
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
        assert got.columns.name == expected.columns.name
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got, expected, check_exact=True)
    elif isinstance(expected, dict):
        assert type(got) is dict and list(got) == list(expected)
        for k in expected:
            assert got[k].dtype == expected[k].dtype and np.array_equal(got[k], expected[k])
    else:
        assert type(got) is list and len(got) == len(expected)
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("safe", [False, True])
def test_tables_and_array_collections_come_back_exactly_in_either_mode(tmp_path, safe):
    dm = DataManager("sweep", str(tmp_path))
    expected = values()
    with dm.session("one") as s:
        for key, value in expected.items():
            s[key] = value
    reader = DataManager("sweep", str(tmp_path), safe=safe)
    for key, value in expected.items():
        (got,) = reader.get(key).values()
        same(got, value)
    sides = side_files(reader)
    assert set(sides) == {"arrays", "array_list"}
    assert all(path.endswith(fmt.VALUE_SUFFIX) for path in sides.values())
    assert reader.verify() == []


def inline_value_files(dm: DataManager) -> set[str]:
    """The keys whose rows hold a value file rather than a pickle."""
    return {
        k for r in dm.iter_sessions() for k, data in r.raw_values() if fmt.holds_value_file(data)
    }


@pytest.mark.parametrize("safe", [False, True])
def test_small_tables_are_value_files_in_their_rows_read_with_and_without_the_index(
    tmp_path, safe
):
    dm = DataManager("sweep", str(tmp_path))
    tables = {k: v for k, v in values().items() if isinstance(v, (pd.DataFrame, pd.Series))}
    with dm.session("one") as s:
        s.update(tables)  # a batch
        s["single"] = table()
    with dm.session("two") as s:
        s["single"] = table().iloc[::-1]
    assert not os.path.exists(os.path.join(dm.basepath, "one" + fmt.BLOB_SUFFIX))
    assert inline_value_files(dm) == {*tables, "single"}
    reader = DataManager("sweep", str(tmp_path), safe=safe)
    for indexed in (False, True):
        if indexed:
            reader.build_index()
        for key, value in tables.items():
            same(reader.get(key)["one"], value)
        merged = reader.get_merged("single")
        same(merged, pd.concat({"one": table(), "two": table().iloc[::-1]}, names=["session"]))
    assert reader.verify() == []


def test_a_damaged_value_file_in_a_row_is_reported_not_misread(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    with dm.session("one") as s:
        s["t"], s["u"] = table(), table()
    path = os.path.join(dm.basepath, "one.sqlite")
    conn = sqlite3.connect(path)
    with conn:
        (data,) = conn.execute("SELECT value FROM items WHERE key = 't'").fetchone()
        conn.execute("UPDATE items SET value = ? WHERE key = 't'", (data[:-64],))
    conn.close()
    for safe in (False, True):
        with pytest.raises(CorruptSessionError, match="value file in its row"):
            DataManager("sweep", str(tmp_path), safe=safe).get("t", strict=True)
    (problem,) = dm.verify()
    assert problem.path == path and "key 't': value file in its row" in problem.message


@pytest.mark.parametrize("n", [3, 200_000])  # pickled in its row, or a .npy side file
def test_string_datetime_and_structured_arrays_come_back_exactly_in_safe_mode(tmp_path, n):
    records = np.zeros(n, dtype=[("id", "<i4"), ("at", "M8[ms]"), ("name", "S5"), ("x", ">f8", 2)])
    records["name"] = b"n\x00"
    expected = {
        "text": np.array(["", "é", "abc"] * n),
        "bytes": np.array([b"a", b"bc"] * n),
        "when": np.arange(n).astype("M8[s]"),
        "delta": np.arange(n).astype("m8[us]").reshape(-1, 1),
        "records": records,
    }
    dm = DataManager("sweep", str(tmp_path))
    with dm.session("one") as s:
        s.update(expected)
    safe = DataManager("sweep", str(tmp_path), safe=True)
    for key, value in expected.items():
        got = safe.get(key)["one"]
        assert got.dtype == value.dtype and got.shape == value.shape
        assert got.tobytes() == value.tobytes(), key
    large = {k for k, v in expected.items() if v.nbytes >= fmt.SIDE_FILE_THRESHOLD}
    assert set(side_files(dm)) == large and len(large) == (0 if n == 3 else 4)


def test_small_collections_and_what_the_encoding_cannot_hold_stay_pickled(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    # A dateutil offset: pandas cannot name it back, and it needs no time zone database.
    zone = pd.Series(pd.date_range("2020", periods=2, tz=dateutil.tz.tzoffset("X", 3600)))
    periods = pd.DataFrame({"a": [1, 2]}, index=pd.period_range("2020", periods=2, freq="D"))
    mixed = pd.DataFrame({"a": ["text", 1]}, dtype=object)
    with dm.session("one") as s:
        s["small"] = {"t": np.arange(3)}
        s["many"] = [np.zeros(1000)] * (fmt.VALUE_FILE_MAX_ARRAYS + 1)
        s["periods"] = periods
        s["zone"] = zone
        s["mixed"] = mixed
        s.update(frame=large_table())
    assert list(side_files(dm)) == ["frame"]
    pd.testing.assert_frame_equal(dm.get("periods")["one"], periods)
    pd.testing.assert_frame_equal(dm.get("mixed")["one"], mixed)
    pd.testing.assert_series_equal(dm.get("zone")["one"], zone)
    same(dm.get("frame")["one"], large_table())
    with pytest.raises(UnsafeValueError, match="pandas"):
        DataManager("sweep", str(tmp_path), safe=True).get("periods")


def test_a_replaced_or_deleted_table_leaves_no_value_file(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    folder = os.path.join(dm.basepath, "one" + fmt.BLOB_SUFFIX)
    with dm.session("one") as s:
        s["t"] = large_table()
        first = os.listdir(folder)
        s["t"] = large_table().iloc[1:]
        second = os.listdir(folder)
        del s["t"]
        assert os.listdir(folder) == []
    assert len(first) == len(second) == 1 and first != second


def test_a_damaged_value_file_is_reported_not_misread(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    with dm.session("one") as s:
        s["t"] = large_table()
        s["d"] = values()["arrays"]
    paths = side_files(dm)
    with open(paths["t"], "r+b") as f:
        f.truncate(os.path.getsize(paths["t"]) - 64)
    with open(paths["d"], "r+b") as f:
        f.write(b"\x93NUMPY")  # over the magic string
    with dm.session("one") as s:
        s["e"], s["f"] = values()["arrays"], large_table()
    paths = side_files(dm)
    for key, old, new in [("e", b'"data":[0,1]', b'"data":[0,7]'), ("f", b'"tz"', b'"tx"')]:
        with open(paths[key], "r+b") as f:
            content = f.read()
            assert old in content
            f.seek(0)
            f.write(content.replace(old, new))  # a description naming what is not there
    for key in "tdef":
        with pytest.raises(CorruptSessionError, match=key):
            dm.get(key, strict=True)
    found = {p.path: p.message for p in dm.verify()}
    assert set(found) == {paths[key] for key in "tdef"}, found
    assert "tx" in found[paths["f"]] and "side file of key 'e'" in found[paths["e"]]


def test_verify_and_the_command_line_report_damaged_value_files_and_pickles(tmp_path, capsys):
    dm = DataManager("sweep", str(tmp_path))
    with dm.session("one") as s:
        s["cut"], s["longer"] = large_table(), values()["arrays"]
        s["pickle"], s["whole"] = list(range(400_000)), large_table()
    assert dm.verify() == []
    paths = side_files(dm)
    with open(paths["cut"], "r+b") as f:  # the last array part loses its tail
        f.truncate(os.path.getsize(paths["cut"]) - 200)
    with open(paths["longer"], "ab") as f:  # bytes its row does not count
        f.write(b"\0" * 64)
    with open(paths["pickle"], "r+b") as f:  # same size, but no pickle any more
        f.seek(-1, os.SEEK_END)
        f.write(b"\xff")
    found = {p.path: p.message for p in dm.verify()}
    assert set(found) == {
        paths["cut"],
        paths["longer"],
        os.path.join(dm.basepath, "one.sqlite"),
    }, found
    assert "key 'pickle': malformed pickle" in found[os.path.join(dm.basepath, "one.sqlite")]
    assert "expected" in found[paths["longer"]]
    assert main(["verify", dm.basepath]) == 1
    out, err = capsys.readouterr()
    assert err == "Error: 3 problem(s) found\n"
    assert all(path in out for path in found) and paths["whole"] not in out


def test_the_index_names_the_type_of_a_value_file(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    with dm.session("one") as s:
        s["t"], s["s"], s["d"] = large_table(), table()["str"], values()["arrays"]
        s["small"] = table()
    dm.build_index()
    items = dm.index_tables()["items"].set_index("key")
    kinds = list(items.loc[["t", "s", "d", "small"], "type"])
    assert kinds == ["pandas.DataFrame", "pandas.Series", "dict", "pandas.DataFrame"]
    assert items.loc["t", "side"].endswith(fmt.VALUE_SUFFIX)
    assert items.loc[["s", "small"], "side"].isna().all()
    # Collation now reads through the index, in safe mode too.
    safe = DataManager("sweep", str(tmp_path), safe=True)
    same(safe.get("t")["one"], large_table())
    same(safe.get("small")["one"], table())


def test_the_command_line_shows_a_table_in_safe_mode(tmp_path, capsys):
    dm = DataManager("sweep", str(tmp_path))
    with dm.session("one") as s:
        s["t"] = table()
    assert main(["show", dm.basepath, "t"]) == 0
    assert "DataFrame" in capsys.readouterr().out


def test_prune_removes_an_orphaned_value_file(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    with dm.session("one") as s:
        s["t"] = large_table()
    (path,) = side_files(dm).values()
    orphan = os.path.join(os.path.dirname(path), fmt.new_side_name(fmt.VALUE_SUFFIX))
    with open(path, "rb") as src, open(orphan, "wb") as dst:
        dst.write(src.read())
    os.utime(orphan, (1, 1))
    assert dm.prune(dry=False) and not os.path.exists(orphan) and os.path.exists(path)


@settings(
    max_examples=stress_size(full=200, ci=25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(frame=frames())
def test_generated_tables_come_back_exactly_in_safe_mode(tmp_path_factory, frame):
    datapath = str(tmp_path_factory.mktemp("generated"))
    with DataManager("sweep", datapath).session("one") as s:
        s["frame"] = frame
        if frame.shape[1]:
            s["first"] = frame.iloc[:, 0]
    safe = DataManager("sweep", datapath, safe=True)
    same(safe.get("frame")["one"], frame)
    if frame.shape[1]:
        same(safe.get("first")["one"], frame.iloc[:, 0])


def test_a_large_pickle_goes_to_a_side_file_read_as_its_row_would_be(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    numbers, text = list(range(400_000)), "x" * (2 << 20)
    fractions = [Fraction(i, 7) for i in range(200_000)]
    with dm.session("one") as s:
        s["numbers"], s["fractions"] = numbers, fractions
        s.update(text=text, small=[1, 2])
    sides = side_files(dm)
    assert set(sides) == {"numbers", "text", "fractions"}
    assert all(path.endswith(fmt.PICKLE_SUFFIX) for path in sides.values())
    safe = DataManager("sweep", str(tmp_path), safe=True)
    assert safe.get("numbers")["one"] == numbers and safe.get("text")["one"] == text
    assert dm.get("fractions")["one"] == fractions
    with pytest.raises(UnsafeValueError, match="Fraction"):
        safe.get("fractions")
    assert dm.verify() == []
    dm.build_index()
    items = dm.index_tables()["items"].set_index("key")
    assert list(items.loc[["numbers", "text"], "type"]) == ["list", "str"]
    with dm.session("one") as s:
        s["numbers"] = 1
        del s["text"]
    assert set(side_files(dm)) == {"fractions"}
    assert len(os.listdir(os.path.dirname(sides["fractions"]))) == 1
    with open(sides["fractions"], "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CorruptSessionError, match="fractions"):
        dm.get("fractions", strict=True)
    assert [p.path for p in dm.verify()] == [sides["fractions"]]


def test_stored_files_inside_a_large_pickle_are_found(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    source = tmp_path / "model.param"
    source.write_bytes(b"tau = 10 ms")
    stored = dm.store_file(str(source))
    with dm.session("one") as s:
        s["runs"] = [stored, *range(400_000)]
    assert list(side_files(dm)) == ["runs"]
    assert list(dm.files()["path"]) == [stored.path]


# Each acknowledged write is printed only after `s[key] = value` returned.
KILLED_TABLE_WRITER = """
import sys, numpy as np, pandas as pd
from datamanager import DataManager
s = DataManager("sweep", sys.argv[1]).session(sys.argv[2])
rows = int(sys.argv[4])
print("ready", flush=True)
for i in range(int(sys.argv[3]), 10**6):
    s["k%06d" % i] = pd.DataFrame(
        {"i": np.full(rows, i), "x": np.arange(rows) * 0.5, "c": pd.Categorical(["a"] * rows)}
    )
    s["p%06d" % i] = [i] * rows  # a large pickle
    print(i, flush=True)
"""


@pytest.mark.stress
def test_sigkill_while_writing_tables_and_pickles_loses_no_acknowledged_write(tmp_path):
    rows = stress_size(full=2_000_000, ci=200_000)
    rng = random.Random(99)
    acked: list[int] = []
    for _round in range(stress_size(full=8, ci=2)):
        start = str(acked[-1] + 1 if acked else 0)
        proc = start_python(KILLED_TABLE_WRITER, str(tmp_path), "w", start, str(rows))
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        if _round % 2 == 0:  # every other round kills only after a first acknowledgement
            acked.append(int(proc.stdout.readline()))
        time.sleep(rng.uniform(0.05, 0.5))  # a random moment to kill at
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err
        acked.extend(int(line) for line in out.split())
    assert acked, "the writer acknowledged nothing"
    found = DataManager("sweep", str(tmp_path), safe=True).get_matching("k", strict=True)
    assert {f"k{i:06d}" for i in acked} <= set(found)
    pickles = DataManager("sweep", str(tmp_path), safe=True).get_matching("p", strict=True)
    assert {f"p{i:06d}" for i in acked} <= set(pickles)
    for key, by_session in pickles.items():
        assert by_session["w"] == [int(key[1:])] * rows, key
    for key, by_session in found.items():
        frame = by_session["w"]
        assert frame.shape == (rows, 3) and (frame["i"] == int(key[1:])).all(), key
        assert str(frame["c"].dtype) == "category"


def test_a_table_refusing_duplicate_labels_keeps_refusing_them(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    strict = table().set_flags(allows_duplicate_labels=False)
    with dm.session("one") as s:
        s["frame"], s["series"] = strict, strict["int"]
    for key in ("frame", "series"):
        got = dm.get(key)["one"]
        assert got.flags.allows_duplicate_labels is False, key
        with pytest.raises(pd.errors.DuplicateLabelError):
            got.reindex([got.index[0]] * 2)
    # pandas objects beyond the value file's reach: pickled, which safe mode refuses.
    with pytest.raises(UnsafeValueError):
        DataManager("sweep", str(tmp_path), safe=True).get("frame")
