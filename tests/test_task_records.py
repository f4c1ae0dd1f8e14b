"""What a sweep keeps beside its results stays out of collation, in both layouts."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from datamanager import DataManager
from datamanager.tasks import item_key, run_tasks, task_failures, task_results

SAMPLES = Path(__file__).parent / "data" / "legacy_shelves"


def pair(x):
    if x == 3:
        raise ValueError("no three")
    return x, x * x


def tenfold(x):
    return 10 * x


def test_collation_sees_the_results_and_only_them(dm: DataManager):
    summary = run_tasks(dm, pair, range(6), processes=2, progress=False)
    assert (summary.done, summary.failed) == (5, 1)
    assert sorted(dm.keys()) == sorted(f"pair/{item_key(x)}" for x in range(6) if x != 3)
    assert dm.itemcount() == 5
    assert sorted(v for _, v in dm.items()) == sorted(dm.values())
    assert len(dm.get_matching("pair")) == 5
    # Brian's collation of a sweep of pairs.
    X, Y = zip(*sorted(dm.values()))
    assert (X, Y) == ((0, 1, 2, 4, 5), (0, 1, 4, 16, 25))
    assert sorted(task_results(dm, pair)) == [(x, (x, x * x)) for x in range(6) if x != 3]
    assert [(f.item, f.error) for f in task_failures(dm)] == [(3, "ValueError: no three")]
    again = run_tasks(dm, pair, range(6), processes=2, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 5, 1)
    assert dm.itemcount() == 5
    assert dm.verify() == []


def test_verify_reads_the_task_records(dm: DataManager):
    run_tasks(dm, tenfold, range(3), processes=2, progress=False)
    paths = [r.path for r in dm.iter_sessions()]
    for path in paths:
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE task_records SET value = ?", (b"\x80\x04garbage",))
        conn.close()
    problems = dm.verify()
    assert problems and {p.path for p in problems} <= set(paths)
    assert all("task record" in p.message and "malformed" in p.message for p in problems)


def test_a_session_in_the_old_layout_still_answers(dm: DataManager):
    # Before the task records existed, items and failure records were keys,
    # and the file had no table for them.
    one, two = item_key(1), item_key(2)
    with dm.session() as s:
        failure = dict(item=2, error="ValueError: two", traceback="tb", worker="h:1", time=0.0)
        s.update({f"old/{one}": 10, f"old.items/{one}": 1, f"old.failures/{two}": failure})
        path = s.path
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DROP TABLE task_records")
    conn.close()
    assert task_results(dm, "old") == [(1, 10)]
    [failed] = task_failures(dm, "old")
    assert (failed.item, failed.error, failed.worker) == (2, "ValueError: two", "h:1")
    assert task_failures(dm) == [failed]
    assert dm.verify() == []
    # Resuming the sweep runs only what the old session lacks.
    summary = run_tasks(dm, tenfold, [1, 2], processes=2, progress=False, name="old")
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, 0)
    assert sorted(task_results(dm, "old")) == [(1, 10), (2, 20)]
    assert task_failures(dm) == []


def test_legacy_shelves_hold_no_task_records(tmp_path: Path):
    shutil.copytree(SAMPLES / "gdbm_py3.data", tmp_path / "gdbm_py3.data")
    dm = DataManager("gdbm_py3", str(tmp_path))
    for reader in dm.iter_sessions():
        with reader:
            assert reader.task_records() == []
    assert task_failures(dm) == []
    with pytest.raises(KeyError, match="sweeps stored there: none"):
        task_results(dm, "anything")
