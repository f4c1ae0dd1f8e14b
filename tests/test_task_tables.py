"""Sweeps as tables: task_table, task_sweeps and the ``sweeps`` and ``table`` commands."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas
import pytest

from datamanager import DataManager, task_sweeps, task_table
from datamanager.cli import main
from datamanager.tasks import item_key, run_tasks, task_failures, task_results

# -- tasks (module level, so that the workers find them) ---------------------------------


def rate(current, tau):
    return {"rate": current / tau, "trace": np.arange(3) * current}


def square(x):
    return x * x


def spread(*values):
    return float(sum(values))


def ramp(n):
    return np.arange(n, dtype=float)


def echo(params):
    return {"x": params["x"] * 10, "session": "mine", "y": 1}


def fussy(x):
    if str(x) in os.environ.get("FUSSY", "").split():
        raise ValueError(f"no {x} today")
    return x + 0.5


class Gain:
    def __init__(self, gain):
        self.gain = gain

    def __call__(self, current, tau):
        return self.gain * current / tau


def run(dm: DataManager, task, items, **kwds):
    return run_tasks(dm, task, items, processes=2, progress=False, **kwds)


RATE_ITEMS = [(0.5, 0.1), (1.0, 0.1), (1.5, 0.2)]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> DataManager:
    """Two sweeps in one directory, one with a failure: read, never changed."""
    dm = DataManager("two", str(tmp_path_factory.mktemp("swept")))
    run(dm, rate, RATE_ITEMS)
    os.environ["FUSSY"] = "3"
    try:
        run(dm, fussy, [1, 2, 3])
    finally:
        del os.environ["FUSSY"]
    return dm


def stored(dm: DataManager, session: str, key: str):
    """The value of *key* in the session named *session*."""
    for reader in dm.iter_sessions():
        if reader.name == session:
            return reader[key]
    raise AssertionError(f"no session {session}")


def by_key(table: pandas.DataFrame) -> dict[str, dict]:
    return {row["key"]: row for row in table.to_dict("records")}


# -- the table --------------------------------------------------------------------------


def test_tuple_items_are_named_after_the_parameters(swept: DataManager):
    table = task_table(swept, rate)
    assert list(table.columns) == ["current", "tau", "rate", "trace", "session", "key"]
    rows = by_key(table)
    assert set(rows) == {item_key(item) for item in RATE_ITEMS}
    for current, tau in RATE_ITEMS:
        row = rows[item_key((current, tau))]
        assert (row["current"], row["tau"], row["rate"]) == (current, tau, current / tau)
        np.testing.assert_array_equal(row["trace"], np.arange(3) * current)
        # The session and key say where the result is stored.
        assert stored(swept, row["session"], f"rate/{row['key']}")["rate"] == current / tau
    assert table["trace"].dtype == object and table["rate"].dtype == np.float64


def test_the_sweeps_name_alone_names_the_parameters_too(swept: DataManager):
    # The workers recorded the task's parameter names in their sessions.
    assert list(task_table(swept, "rate").columns)[:2] == ["current", "tau"]


def test_rows_follow_task_results(swept: DataManager):
    table = task_table(swept, rate)
    items = [item for item, _ in task_results(swept, rate)]
    assert list(zip(table["current"], table["tau"])) == items


def test_dict_items_and_clashing_names(dm: DataManager):
    items = [{"x": 1, "key": "a"}, {"x": 2, "key": "b"}]
    run(dm, echo, items)
    table = task_table(dm, echo)
    # A field never hides another column: the item's "key" and the result's
    # "x" and "session" are prefixed.
    assert list(table.columns) == [
        "x",
        "item.key",
        "result.x",
        "result.session",
        "y",
        "session",
        "key",
    ]
    for row in table.to_dict("records"):
        assert row["result.x"] == 10 * row["x"] and row["result.session"] == "mine"
        assert row["key"] == item_key({"x": row["x"], "key": row["item.key"]})
        assert row["session"] in set(dm.sessions()["name"])


def test_scalar_items_and_results(dm: DataManager):
    run(dm, square, range(5))
    table = task_table(dm, square)
    assert list(table.columns) == ["x", "result", "session", "key"]
    assert sorted(zip(table["x"], table["result"])) == [(x, x * x) for x in range(5)]
    assert table["result"].dtype == np.int64


def test_array_results_stay_whole(dm: DataManager):
    run(dm, ramp, [2, 5])
    table = task_table(dm, ramp)
    assert table["result"].dtype == object
    for n, result in zip(table["n"], table["result"]):
        np.testing.assert_array_equal(result, np.arange(n, dtype=float))


def test_positions_without_names(dm: DataManager):
    run(dm, spread, [(1, 2, 3), (4, 5)])
    table = task_table(dm, spread)
    assert list(table.columns) == ["item_0", "item_1", "item_2", "result", "session", "key"]
    rows = sorted(table[["item_0", "item_1", "item_2", "result"]].to_numpy().tolist())
    assert rows[0] == [1, 2, 3, 6] and rows[1][:2] == [4, 5] and np.isnan(rows[1][2])


def test_a_class_task_is_named_by_its_call(dm: DataManager):
    run(dm, Gain, [(1.0, 0.5)], initargs=(10.0,))
    table = task_table(dm, Gain)
    assert table[["current", "tau", "result"]].to_numpy().tolist() == [[1.0, 0.5, 20.0]]


def test_records_without_parameter_names(dm: DataManager):
    # As a session written by hand (or by an older version) holds a sweep.
    with dm.session() as s:
        s["old/k1"] = 5
        s.update_records({"old.items/k1": (1, 2)})
        s["old/k2"] = 6
        s.update_records({"old.items/k2": "solo"})
    table = task_table(dm, "old")
    assert list(table.columns) == ["item_0", "item_1", "item", "result", "session", "key"]
    assert table["key"].tolist() == ["k1", "k2"] and table["item"].tolist()[1] == "solo"


def test_failures_only_when_asked(swept: DataManager):
    table = task_table(swept, fussy)
    assert sorted(table["x"]) == [1, 2] and "error" not in table
    with_failures = task_table(swept, fussy, failures=True)
    assert list(with_failures.columns) == ["x", "result", "session", "key", "error"]
    failed = with_failures[with_failures["error"].notna()]
    assert failed["x"].tolist() == [3] and failed["error"].tolist() == ["ValueError: no 3 today"]
    assert np.isnan(failed["result"].iloc[0])
    (failure,) = task_failures(swept, fussy)
    assert failed[["session", "key"]].to_numpy().tolist() == [[failure.session, failure.key]]
    assert with_failures["error"].isna().sum() == 2


def test_resumed_sweep_has_one_row_per_item(dm: DataManager, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FUSSY", "2")
    run(dm, fussy, [1, 2, 3])
    assert task_sweeps(dm)[["done", "failed"]].to_numpy().tolist() == [[2, 1]]
    monkeypatch.delenv("FUSSY")
    assert run(dm, fussy, [1, 2, 3, 4]).done == 2  # the failed item and the new one
    run(dm, fussy, [3], resume=False)  # stored again, in a newer session
    table = task_table(dm, fussy, failures=True)
    assert sorted(table["x"]) == [1, 2, 3, 4] and table["error"].isna().all()
    newest = dm.sessions()["name"].iloc[-1]
    assert table.loc[table["x"] == 3, "session"].tolist() == [newest]
    assert task_sweeps(dm)[["done", "failed"]].to_numpy().tolist() == [[4, 0]]


def test_unknown_sweep(swept: DataManager):
    with pytest.raises(KeyError, match="sweeps stored there: 'fussy', 'rate'"):
        task_table(swept, "rates")


# -- every sweep ------------------------------------------------------------------------


def test_sweeps_lists_counts_and_last_runs(swept: DataManager):
    sweeps = task_sweeps(swept)
    assert sweeps[["name", "done", "failed"]].to_numpy().tolist() == [
        ["fussy", 2, 1],
        ["rate", 3, 0],
    ]
    sessions = swept.sessions()
    for name, last in zip(sweeps["name"], sweeps["last_run"]):
        assert last == sessions.loc[sessions["task_name"] == name, "created"].max()


def test_no_sweeps(dm: DataManager):
    with dm.session() as s:
        s["rate"] = 1
    assert task_sweeps(dm).empty
    assert list(task_sweeps(dm).columns) == ["name", "done", "failed", "last_run"]


# -- the command line -------------------------------------------------------------------


def test_cli_sweeps(swept: DataManager, capsys: pytest.CaptureFixture[str]):
    assert main(["sweeps", swept.basepath]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["sweep", "done", "failed", "last", "run", "(UTC)"]
    assert [line.split()[:3] for line in lines[1:]] == [["fussy", "2", "1"], ["rate", "3", "0"]]


def test_cli_no_sweeps(dm: DataManager, capsys: pytest.CaptureFixture[str]):
    with dm.session() as s:
        s["rate"] = 1
    assert main(["sweeps", dm.basepath]) == 0
    assert capsys.readouterr().out == f"no sweeps in {dm.basepath}\n"


def test_cli_table_is_readable(swept: DataManager, capsys: pytest.CaptureFixture[str]):
    assert main(["table", swept.basepath, "rate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["current", "tau", "rate", "trace", "session", "key"]
    first = task_table(swept, "rate").iloc[0]
    assert lines[1].startswith(f"{first['current']:g}")
    assert "array([0. , 0.5, 1. ])" in "\n".join(lines) and len(lines) == 4
    assert main(["table", swept.basepath, "fussy", "--failures"]) == 0
    failed = [line for line in capsys.readouterr().out.splitlines() if "ValueError" in line]
    assert len(failed) == 1 and failed[0].startswith("3 ")


def test_cli_table_csv(swept: DataManager, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    expected = task_table(swept, "fussy", failures=True)
    assert main(["table", swept.basepath, "fussy", "--failures", "--csv", "-"]) == 0
    back = pandas.read_csv(io.StringIO(capsys.readouterr().out))
    pandas.testing.assert_frame_equal(back, expected, check_dtype=False)
    out = tmp_path / "rate.csv"
    assert main(["table", swept.basepath, "rate", "--csv", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}: 3 rows\n"
    back = pandas.read_csv(out)
    expected = task_table(swept, "rate")
    pandas.testing.assert_frame_equal(
        back.drop(columns="trace"), expected.drop(columns="trace"), check_dtype=False
    )


def test_cli_table_parquet(swept: DataManager, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "rate.parquet"
    assert main(["table", swept.basepath, "rate", "--parquet", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}: 3 rows\n"
    back, expected = pandas.read_parquet(out), task_table(swept, "rate")
    assert list(back.columns) == list(expected.columns)
    pandas.testing.assert_frame_equal(
        back.drop(columns="trace"), expected.drop(columns="trace"), check_dtype=False
    )
    for got, want in zip(back["trace"], expected["trace"]):
        np.testing.assert_array_equal(got, want)
    assert os.listdir(tmp_path) == ["rate.parquet"]  # no temporary file left


def test_cli_parquet_without_pyarrow(
    swept: DataManager,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an install without it does
    out = tmp_path / "rate.parquet"
    assert main(["table", swept.basepath, "rate", "--parquet", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "sim-datamanager[parquet]" in err
    assert not out.exists()


def test_cli_table_errors(swept: DataManager, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["table", swept.basepath, "rates"]) == 1
    assert "no sweep named 'rates'" in capsys.readouterr().err
    assert main(["table", swept.basepath, "rate", "--csv", "-", "--parquet", "x"]) == 2
    assert main(["sweeps", str(tmp_path / "missing.data")]) == 1


def test_cli_in_a_subprocess(swept: DataManager):
    proc = subprocess.run(
        [sys.executable, "-m", "datamanager", "table", swept.basepath, "rate", "--csv", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    back = pandas.read_csv(io.StringIO(proc.stdout))
    assert sorted(zip(back["current"], back["tau"])) == RATE_ITEMS


def test_a_deleted_result_is_no_longer_done(dm: DataManager):
    run(dm, square, [1, 2])
    row = task_table(dm, square).iloc[0]
    with dm.session(row["session"]) as s:
        del s[f"square/{row['key']}"]  # its item record stays behind
    assert task_table(dm, square)["key"].tolist() == [
        k for k in [item_key(1), item_key(2)] if k != row["key"]
    ]
    assert task_sweeps(dm)["done"].tolist() == [1]
