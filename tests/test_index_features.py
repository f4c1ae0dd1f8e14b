"""The index where features meet it: run_tasks keeps it current, the command line builds it."""

from __future__ import annotations

import contextlib
import os
import sqlite3

import pandas
import pytest

from datamanager import DataManager, run_tasks, task_failures, task_results
from datamanager._format import INDEX_NAME, is_side_name
from datamanager.cli import main

from conftest import run_python
from test_index_consistency import sometimes


def triple(x: int) -> int:
    return 3 * x


def test_a_sweep_leaves_an_index_that_answers_for_every_session(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    run_tasks(dm, triple, range(12), processes=2, progress=False)
    assert os.path.isfile(os.path.join(dm.basepath, INDEX_NAME))
    sessions = dm.index_tables()["sessions"]
    assert len(sessions) == len(dm.session_filenames()) > 0
    assert sessions["settled"].all()
    results = dm.get_matching("triple/")
    assert sorted(v for values in results.values() for v in values.values()) == [
        3 * x for x in range(12)
    ]


def test_a_sweep_can_leave_the_index_alone(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    run_tasks(dm, triple, range(4), processes=1, progress=False, index=False)
    assert not os.path.exists(os.path.join(dm.basepath, INDEX_NAME))
    assert dm.itemcount() == 4


def test_a_resumed_sweep_updates_the_index_with_its_new_sessions(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    run_tasks(dm, triple, range(4), processes=1, progress=False)
    before = set(dm.index_tables()["sessions"]["name"])
    run_tasks(dm, triple, range(8), processes=1, progress=False)
    tables = dm.index_tables()
    assert before < set(tables["sessions"]["name"])
    keys = set(tables["items"]["key"])
    assert len(keys) == 8 and all(k.startswith("triple/") for k in keys)


def test_the_index_command_builds_the_index_and_writes_parquet(tmp_path, capsys):
    dm = DataManager("sweep", str(tmp_path))
    for i in range(3):
        with dm.session() as s:
            s["rate"] = [float(i)]
    out = tmp_path / "tables"
    assert main(["index", dm.basepath, "--hash", "--parquet", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 sessions (3 read" in printed and "sessions.parquet" in printed
    items = pandas.read_parquet(out / "items.parquet")
    assert list(items["key"]) == ["rate"] * 3 and items["sha256"].str.len().eq(64).all()
    sessions = pandas.read_parquet(out / "sessions.parquet")
    assert sorted(sessions["name"]) == sorted(dm.get("rate"))
    # A second run reads nothing again.
    assert main(["index", dm.basepath]) == 0
    assert "3 sessions (0 read, 3 unchanged" in capsys.readouterr().out


def test_the_index_command_names_a_missing_directory(tmp_path, capsys):
    assert main(["index", str(tmp_path / "nowhere.data")]) == 1
    assert "nowhere.data" in capsys.readouterr().err


def test_export_index_without_pyarrow_names_the_extra(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    with dm.session() as s:
        s["x"] = 1
    code = f"""
import sys

class NoPyarrow:
    def find_spec(self, name, path=None, target=None):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("pyarrow is hidden")

sys.meta_path.insert(0, NoPyarrow())
from datamanager import DataManager
dm = DataManager.from_path({dm.basepath!r})
try:
    dm.export_index({str(tmp_path / "out")!r})
except ImportError as exc:
    print("ImportError:", exc)
"""
    done = run_python(code)
    assert "ImportError:" in done.stdout and "sim-datamanager[parquet]" in done.stdout


@pytest.mark.parametrize("hash_values", [False, True])
def test_index_tables_describe_what_the_sessions_hold(tmp_path, hash_values):
    import numpy as np

    dm = DataManager("sweep", str(tmp_path))
    with dm.session("one") as s:
        s["n"] = 3
        s["v"] = np.zeros((2, 5), dtype=np.float32)
        s["big"] = np.arange(200_000, dtype=np.int64)
        s["text"] = "x" * 70_000
    dm.build_index(hash_values=hash_values)
    items = dm.index_tables()["items"].set_index("key")
    assert items.loc["n", "type"] == "int" and items.loc["n", "cached"]
    assert items.loc["v", "type"] == "numpy.ndarray"
    assert (items.loc["v", "dtype"], items.loc["v", "shape"]) == ("<f4", "[2, 5]")
    assert is_side_name(items.loc["big", "side"]) and not items.loc["big", "cached"]
    assert (items.loc["big", "dtype"], items.loc["big", "shape"]) == ("<i8", "[200000]")
    assert items.loc["text", "stored_size"] > 70_000 and not items.loc["text", "cached"]
    assert items["sha256"].notna().all() == hash_values


def test_task_records_are_served_from_the_index(tmp_path):
    # That they read alike with and without the index is checked in
    # test_index_consistency; here, that the index is what answers.
    dm = DataManager("sweep", str(tmp_path))
    run_tasks(dm, sometimes, range(10), processes=2, progress=False)
    assert sorted(f.item for f in task_failures(dm, sometimes)) == [3, 7]
    assert sorted(task_results(dm, sometimes))[0] == (0, 1)
    # Records removed from the index only, not from the sessions: what the
    # index serves changes, so it is the index that was read.
    index = os.path.join(dm.basepath, INDEX_NAME)
    with contextlib.closing(sqlite3.connect(index)) as conn, conn:
        assert conn.execute("DELETE FROM records").rowcount > 0
    assert task_failures(dm, sometimes) == []
    assert sorted(task_results(dm, sometimes))[0] == (None, 1)
