"""Brian's task farm: its positional arguments, class tasks, tuple items, report()."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from datamanager import DataManager
from datamanager.tasks import run_tasks, task_results

from conftest import run_python


class Farm:
    """A task that is a class, as in Brian's task-farm example."""

    built = 0  # instances made in this process

    def __init__(self, offset, scale=1, process_number=None):
        Farm.built += 1
        self.offset, self.scale, self.number = offset, scale, process_number

    def __call__(self, x, y):
        return self.scale * x * y + self.offset, self.number, os.getpid(), Farm.built


def reporting(x, report):
    report(0.01, 0.5)
    return x + 1


def reporting_by_kwargs(x, **kwargs):
    kwargs["report"](0.01, 1.0)
    return x - 1


def test_brians_task_farm_pattern(dm):
    items = [(x, y) for x in range(4) for y in range(3)]
    summary = run_tasks(dm, Farm, items, False, 2, (100,), {"scale": 2})
    assert summary.done == len(items)
    results = dict(task_results(dm, Farm))
    assert sorted(results) == sorted(items)  # the tuples themselves, not their parts
    assert all(r[0] == 2 * x * y + 100 for (x, y), r in results.items())
    numbers = {pid: number for _value, number, pid, _built in results.values()}
    assert set(numbers.values()) <= {0, 1}
    assert len(set(numbers.values())) == len(numbers)  # one number per process
    assert {built for *_rest, built in results.values()} == {1}  # built once per process
    X, Y = zip(*(item for item, _result in task_results(dm, Farm)))
    assert sorted(zip(X, Y)) == sorted(items)


def test_poolsize_counts_like_brians(dm):
    summary = run_tasks(dm, Farm, [(1, 2), (3, 4), (5, 6)], False, 1, (0,))
    assert summary.done == 3
    assert {pid for _v, _n, pid, _b in dict(task_results(dm, Farm)).values()} == {
        *dm.sessions()["pid"]
    }
    assert len(dm.sessions()) == 1  # one process
    if (os.cpu_count() or 1) > 1:
        with pytest.raises(ValueError, match="poolsize"):
            run_tasks(dm, square_of, [1], poolsize=-1, processes=os.cpu_count())
    with pytest.raises(ValueError, match="poolsize=2 and processes=3"):
        run_tasks(dm, square_of, [1], poolsize=2, processes=3)
    with pytest.raises(TypeError, match="poolsize"):
        run_tasks(dm, square_of, [1], False, 1.5)
    with pytest.raises(TypeError, match="initargs"):
        run_tasks(dm, square_of, [1], False, 1, (1,))
    with pytest.raises(ValueError, match="numitems"):
        run_tasks(dm, square_of, [1], False, 1, numitems=-1)


def square_of(x):
    return x * x


def test_tasks_asking_for_report_get_it(dm):
    run_tasks(dm, reporting, [1, 2], progress=False, processes=1)
    run_tasks(dm, reporting_by_kwargs, [1, 2], progress=False, processes=1)
    assert sorted(task_results(dm, reporting)) == [(1, 2), (2, 3)]
    assert sorted(task_results(dm, reporting_by_kwargs)) == [(1, 0), (2, 1)]


def test_verbose_prints_progress_lines_and_false_silences(dm, capsys):
    run_tasks(dm, square_of, range(10), verbose=True, processes=2, numitems=10)
    err = capsys.readouterr().err
    assert "square_of: 100% (10/10)" in err
    run_tasks(dm, square_of, range(20), verbose=False, processes=2)
    assert capsys.readouterr().err == ""


UNIMPORTABLE = """
import os, sys
from datamanager import DataManager
from datamanager.tasks import run_tasks

def double(x):
    return 2 * x

dm = DataManager("sweep", sys.argv[1])
try:
    run_tasks(dm, double, [1, 2], processes=1, mp_context="spawn", progress=False)
except TypeError as exc:
    assert "__main__.double" in str(exc) and "cannot import" in str(exc), exc
else:
    raise AssertionError("an unimportable task was accepted")
assert not os.path.exists(dm.basepath)  # refused before anything ran
"""


def test_a_task_workers_cannot_import_is_refused_first(tmp_path):
    run_python(UNIMPORTABLE, str(tmp_path / "data"))


BRIAN_EXAMPLE = """
import sys
from numpy import mean
from numpy.random import rand

from datamanager import DataManager, run_tasks


def find_rate(k, report):
    # Brian's example runs a network here and passes report to run().
    report(0.0, 0.5)
    return (k, mean([k, k]) / 30)


if __name__ == "__main__":
    N = 20
    dataman = DataManager("taskfarmexample", sys.argv[1])
    if dataman.itemcount() < N:
        M = N - dataman.itemcount()
        run_tasks(dataman, find_rate, rand(M) * 19 + 1, False)
    X, Y = zip(*dataman.values())
    print(len(X), len(Y))
"""


def test_brians_task_farm_example_runs_unchanged(tmp_path):
    # The shape of Brian 1's taskfarm example: itemcount() decides how many
    # items are left, and zip(*dataman.values()) gives the points.
    script = tmp_path / "taskfarm_example.py"
    script.write_text(BRIAN_EXAMPLE)
    for _ in range(2):  # the second run finds every point and computes none
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["20", "20"]
    assert DataManager("taskfarmexample", str(tmp_path)).itemcount() == 20
