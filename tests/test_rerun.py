"""rerun_tasks: stored items changed by modification functions, run again as a linked sweep."""

from __future__ import annotations

import fractions
import functools
import hashlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from test_tasks import assert_gone, stored_keys

from datamanager import (
    DataManager,
    UnsafeValueError,
    rerun_tasks,
    run_tasks,
    task_sweeps,
    task_table,
)
from datamanager.tasks import item_key, task_failures, task_results

from conftest import IN_CI, interruptible, run_python

# -- tasks and modifications (module level, so that the workers find them) ---------------


def rate(current, tau):
    return {"rate": current / tau}


def picky(x):
    if x % 5 == 0:
        raise ValueError(f"no multiples of five: {x}")
    return x * x


def square(x):
    return x * x


def slower(item):
    """Double tau where the current is at least 2; leave the rest alone."""
    current, tau = item
    return (current, 2 * tau) if current >= 2 else None


def louder(item):
    current, tau = item
    return (current + 1, tau)


def plus_one(x):
    return x + 1


def run(dm: DataManager, task, items, **kwds):
    return run_tasks(dm, task, items, processes=2, progress=False, **kwds)


def rerun(dm: DataManager, task, modify=(), **kwds):
    return rerun_tasks(dm, task, modify, processes=2, progress=False, **kwds)


ITEMS = [(1.0, 0.5), (1.5, 0.5), (2.0, 0.5), (3.0, 1.0)]


@pytest.fixture
def swept(tmp_path: Path) -> DataManager:
    dm = DataManager("sweep", str(tmp_path))
    assert run(dm, rate, ITEMS).done == len(ITEMS)
    return dm


def link_records(dm: DataManager, name: str) -> list[tuple[str, str, dict]]:
    """``(session, record key, link)`` of every link record of sweep *name*."""
    found = []
    for reader in dm.iter_sessions():
        with reader:
            records = reader.task_records(lambda k: k.startswith(f"{name}.links/"))
            found += [(reader.name, k, link) for k, link in records]
    return found


def rows(table) -> dict[str, dict]:
    """The rows of a table by their original item key."""
    return {row["original_key"]: row for row in table.to_dict("records")}


# -- what runs and how it is linked ------------------------------------------------------


def test_modifications_apply_in_order_and_none_leaves_an_item_alone(swept: DataManager):
    summary = rerun(swept, rate, [louder, slower])
    assert (summary.done, summary.skipped, summary.failed) == (4, 0, 0)
    name = summary.name
    assert name.startswith("rate~rerun-") and len(name) == len("rate~rerun-") + 8
    # louder first: 1.5 became 2.5, which slower then changed; 1.0 became 2.0, too.
    expected = {
        item_key(item): ((item[0] + 1, item[1] * (2 if item[0] + 1 >= 2 else 1))) for item in ITEMS
    }
    assert sorted(task_results(swept, name)) == sorted(
        (new, rate(*new)) for new in expected.values()
    )
    table = task_table(swept, name)
    assert list(table.columns) == [
        "current",
        "tau",
        "rate",
        "original_key",
        "original.rate",
        "session",
        "key",
    ]
    for original, row in rows(table).items():
        old = next(item for item in ITEMS if item_key(item) == original)
        assert (row["current"], row["tau"]) == expected[original]
        assert row["original.rate"] == rate(*old)["rate"]
        assert row["rate"] == rate(*expected[original])["rate"]
        assert row["key"] == item_key(expected[original])
    # The other order is another rerun, under another name.
    other = rerun(swept, rate, [slower, louder])
    assert other.name != name and other.done == 4
    assert {item for item, _ in task_results(swept, other.name)} == {
        (current + 1, 2 * tau if current >= 2 else tau) for current, tau in ITEMS
    }
    # The original sweep is untouched, and collates as before.
    assert sorted(task_results(swept, rate)) == sorted((item, rate(*item)) for item in ITEMS)


def test_the_same_modifications_resume_the_same_rerun(swept: DataManager):
    first = rerun(swept, rate, slower)  # one function stands for a list of one
    assert first.done == 4
    again = rerun(swept, rate, [slower])
    assert (again.name, again.done, again.skipped) == (first.name, 0, 4)
    unchanged = rerun(swept, rate)
    assert unchanged.name != first.name and unchanged.done == 4
    table = task_table(swept, unchanged.name)
    assert (table["rate"] == table["original.rate"]).all()
    assert (table["key"] == table["original_key"]).all()
    named = rerun(swept, rate, [slower], name="slow tau")
    assert named.name == "slow tau" and named.done == 4
    with pytest.raises(ValueError, match="original sweep"):
        rerun(swept, rate, [slower], name="rate")
    sweeps = task_sweeps(swept).set_index("name")["done"].to_dict()
    assert sweeps == {"rate": 4, first.name: 4, unchanged.name: 4, "slow tau": 4}


def test_items_chosen_by_a_callable_or_by_their_keys(swept: DataManager):
    summary = rerun(swept, rate, [louder], select=lambda item: item[0] >= 2)
    assert summary.done == 2
    assert {item for item, _ in task_results(swept, summary.name)} == {(3.0, 0.5), (4.0, 1.0)}
    keys = [item_key(ITEMS[3]), item_key(ITEMS[0])]
    by_keys = rerun(swept, rate, [louder], select=keys, name="by keys")
    assert by_keys.done == 2
    assert set(task_table(swept, "by keys")["original_key"]) == set(keys)
    with pytest.raises(KeyError, match="no stored result"):
        rerun(swept, rate, [louder], select=["0" * 32])
    with pytest.raises(TypeError, match="not a str"):
        rerun(swept, rate, [louder], select=keys[0])
    with pytest.raises(KeyError, match="no sweep named 'rates'"):
        rerun(swept, rate, [louder], sweep="rates")
    # A refused call stores nothing, not even links.
    with pytest.raises(ValueError, match="chunksize"):
        rerun(swept, rate, [louder], name="refused", chunksize=0)
    assert link_records(swept, "refused") == []


def keyed(params):
    return {"original_key": params["x"], "y": 1}


def test_item_and_result_fields_never_hide_the_original_key(tmp_path: Path):
    dm = DataManager("sweep", str(tmp_path))
    run(dm, keyed, [{"x": 1, "original_key": "mine"}])
    summary = rerun(dm, keyed, name="again")
    table = task_table(dm, "again")
    assert list(table.columns) == [
        "x",
        "item.original_key",
        "result.original_key",
        "y",
        "original_key",
        "original.original_key",
        "original.y",
        "session",
        "key",
    ]
    (row,) = table.to_dict("records")
    assert (row["item.original_key"], row["result.original_key"]) == ("mine", 1)
    assert row["original_key"] == row["key"] == item_key({"x": 1, "original_key": "mine"})
    assert summary.done == 1


def test_items_that_become_one_run_once_linked_to_the_first(swept: DataManager):
    def same(item):
        return (1.0, 1.0)

    summary = rerun(swept, rate, [same], name="same")
    assert (summary.done, summary.skipped) == (1, 3)
    (row,) = task_table(swept, "same").to_dict("records")
    first, _result = task_results(swept, rate)[0]  # the order the rerun reads them in
    assert row["original_key"] == item_key(first)


def test_results_go_to_another_data_manager(swept: DataManager, tmp_path: Path):
    out = DataManager("rerun", str(tmp_path / "elsewhere"))
    summary = rerun(swept, rate, [slower], out=out)
    assert summary.done == 4
    assert not any(name.startswith("rate~") for name in task_sweeps(swept)["name"])
    table = task_table(out, summary.name)
    assert sorted(table["original.rate"]) == sorted(rate(*item)["rate"] for item in ITEMS)
    assert set(table["original_key"]) == {item_key(item) for item in ITEMS}
    # The original is named by its data directory, so its results can be read back.
    links = link_records(out, summary.name)
    assert {link["data"] for _session, _key, link in links} == {os.path.abspath(swept.basepath)}
    assert rerun(swept, rate, [slower], out=out).skipped == 4
    # With the original gone, the rerun still names each original item.
    shutil.rmtree(swept.basepath)
    table = task_table(out, summary.name)
    assert set(table["original_key"]) == {item_key(item) for item in ITEMS}
    assert not [c for c in table.columns if c.startswith("original.")]


def test_failures_in_a_rerun_are_recorded_linked_and_retried(tmp_path: Path):
    dm = DataManager("sweep", str(tmp_path))
    run(dm, square, range(10))
    summary = rerun(dm, picky, [plus_one], sweep="square", name="picky rerun")
    assert (summary.done, summary.failed) == (8, 2)
    assert sorted(f.item for f in summary.failures) == [5, 10]
    table = task_table(dm, "picky rerun", failures=True)
    failed = table[table["error"].notna()]
    assert sorted(failed["original_key"]) == sorted([item_key(4), item_key(9)])
    assert sorted(failed["original.result"]) == [16, 81]
    retry = rerun(dm, square, [plus_one], sweep="square", name="picky rerun")
    assert (retry.done, retry.skipped, retry.failed) == (2, 8, 0)
    assert task_failures(dm) == []


def as_fraction(x):
    return fractions.Fraction(x, 3)


def test_a_rerun_reads_the_original_items_not_their_results(tmp_path: Path):
    run(DataManager("sweep", str(tmp_path)), as_fraction, [1, 2, 3])
    # Safe mode refuses to unpickle a Fraction: reading a result would raise.
    safe = DataManager("sweep", str(tmp_path), safe=True)
    with pytest.raises(UnsafeValueError):
        task_results(safe, as_fraction)
    summary = rerun(safe, square, [plus_one], sweep="as_fraction", name="squares")
    assert summary.done == 3
    assert sorted(task_results(safe, "squares")) == [(2, 4), (3, 9), (4, 16)]


# -- provenance --------------------------------------------------------------------------


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_sessions_record_the_modification_functions_with_hashes(swept: DataManager):
    summary = rerun(swept, rate, [louder, slower], metadata={"note": "tau study"})
    sessions = swept.sessions()
    ours = sessions[sessions["task_name"] == summary.name]
    workers = ours[ours["pid"] != os.getpid()]
    assert len(workers) >= 1 and len(ours) <= len(workers) + 1
    # This process stored the links, in one session of its own, before anything ran.
    (linking,) = {session for session, _key, _link in link_records(swept, summary.name)}
    assert ours.set_index("name").loc[linking, "pid"] == os.getpid()
    described = [
        {
            "name": f"{__name__}.{f.__name__}",
            "sha256": sha256(inspect.getsource(f)),
            "hashed": "source",
            "bound": None,
        }
        for f in (louder, slower)
    ]
    for provenance in ours["rerun"]:
        assert provenance == {"sweep": "rate", "data": None, "modify": described}
    assert set(workers["note"]) == {"tau study"}
    # The name is the hash of those descriptions.
    assert summary.name == f"rate~rerun-{sha256(json.dumps(described, sort_keys=True))[:8]}"
    with pytest.raises(ValueError, match="task_name"):
        run(swept, rate, ITEMS, metadata={"task_name": "x"})
    with pytest.raises(TypeError, match="JSON"):
        run(swept, rate, ITEMS, metadata={"when": object()})


def scaled(factor):
    """A modification made by a factory: its source is the same for every factor."""

    def scale(item):
        current, tau = item
        return (current * factor, tau)

    return scale


def with_tau(item, tau):
    return (item[0], tau)


class Scale:
    def __call__(self, item):
        return (item[0] * 2, item[1])


def test_functions_without_source_and_bound_values_are_told_apart(swept: DataManager):
    # A function typed at a prompt (here: python -c) has no source file to read.
    code = textwrap.dedent(
        """
        import json
        from datamanager.tasks.rerun import describe_function
        print(json.dumps([describe_function(lambda item: item), describe_function(abs)]))
        """
    )
    typed, builtin = json.loads(run_python(code).stdout)
    # Python 3.13 keeps the source of python -c in linecache; older ones do not.
    expected = "source" if sys.version_info >= (3, 13) else "bytecode"
    assert typed["name"] == "__main__.<lambda>" and typed["hashed"] == expected
    assert len(typed["sha256"]) == 64
    assert builtin == {"name": "builtins.abs", "sha256": None, "hashed": "builtin", "bound": None}
    # Values bound by a closure or a partial are part of the name: different
    # ones make different reruns, the same ones resume.
    one = [item_key(ITEMS[0])]
    names = {rerun(swept, rate, [m], select=one).name for m in (scaled(2), scaled(3))}
    names |= {
        rerun(swept, rate, [functools.partial(with_tau, tau=t)], select=one).name for t in (1, 2)
    }
    assert len(names) == 4
    assert rerun(swept, rate, [scaled(3)], select=one).name in names
    (recorded,) = {
        p["modify"][0]["name"]
        for p in swept.sessions()["rerun"]
        if isinstance(p, dict) and p["modify"][0]["name"].startswith("functools")
    }
    assert recorded == f"functools.partial({__name__}.with_tau)"
    # A callable object cannot be told apart from another of its class.
    with pytest.raises(TypeError, match="pass name="):
        rerun(swept, rate, [Scale()])
    summary = rerun(swept, rate, [Scale()], name="doubled", select=one)
    assert summary.done == 1
    (provenance,) = {
        json.dumps(p)
        for p in swept.sessions()["rerun"]
        if isinstance(p, dict) and "Scale" in str(p)
    }
    assert json.loads(provenance)["modify"] == [
        {"name": f"{__name__}.Scale", "sha256": None, "hashed": "nothing", "bound": None}
    ]


# -- Dask, kills and signals -------------------------------------------------------------


def test_rerun_on_a_dask_local_cluster(tmp_path: Path):
    distributed = pytest.importorskip("distributed")
    dm = DataManager("sweep", str(tmp_path))
    run(dm, square, range(12), name="picky")
    with (
        distributed.LocalCluster(
            n_workers=1, processes=True, threads_per_worker=2, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        summary = rerun_tasks(dm, picky, [plus_one], client=client, progress=False)
        worker_pids = set(client.run(os.getpid).values())
    assert (summary.done, summary.failed) == (10, 2)
    table = task_table(dm, summary.name, failures=True)
    assert len(table) == 12 and (table["original.result"] == (table["x"] - 1) ** 2).all()
    sessions = dm.sessions()
    ours = sessions[(sessions["task_name"] == summary.name) & (sessions["pid"] != os.getpid())]
    assert len(ours) and set(ours["pid"]) <= worker_pids  # the links are this process's
    assert all(p["modify"][0]["name"] == f"{__name__}.plus_one" for p in ours["rerun"])


RERUN_DRIVER = """
import sys, time
from datamanager import DataManager, rerun_tasks

def slow(x):
    time.sleep(0.05)
    return x * 10

def plus_one(x):
    return x + 1

if __name__ == "__main__":
    print(rerun_tasks(DataManager("sweep", sys.argv[1]), slow, [plus_one], processes=2))
"""


# SIGTERM stops a rerun as it stops run_tasks (tested there); under CI only the kill runs.
@pytest.mark.parametrize("signum", [signal.SIGKILL] if IN_CI else [signal.SIGKILL, signal.SIGTERM])
def test_a_stopped_rerun_resumes_and_does_every_item_once(tmp_path: Path, signum):
    dm = DataManager("sweep", str(tmp_path))
    run(dm, square, range(40), name="slow")
    script = tmp_path / "rerun.py"
    script.write_text(RERUN_DRIVER)
    command = [sys.executable, str(script), str(tmp_path)]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 60
    try:
        name = None
        while name is None or len(stored_keys(dm, name)) < 10:
            assert proc.poll() is None, proc.communicate()
            names = [n for n in task_sweeps(dm)["name"] if n.startswith("slow~rerun-")]
            name = names[0] if names else None
            assert time.monotonic() < deadline, "the rerun made no progress"
            time.sleep(0.05)
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signum, err
    assert_gone(workers)
    kept = len(stored_keys(dm, name))
    assert 10 <= kept < 40
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert f"{name}: {40 - kept} done, {kept} skipped, 0 failed" in again.stdout
    assert stored_keys(dm, name) == {f"{name}/{item_key(x + 1)}": 1 for x in range(40)}
    # Links were stored before anything ran, and again only for what was left.
    assert len(link_records(dm, name)) == 40 + (40 - kept)
    table = task_table(dm, name)
    assert (table["result"] == 10 * table["x"]).all()
    assert (table["original.result"] == (table["x"] - 1) ** 2).all()
