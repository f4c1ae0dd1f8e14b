"""run_tasks on real process pools and a real Dask cluster, with real kills."""

from __future__ import annotations

import fcntl
import os
import pickle
import pty
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamanager import DataManager
from datamanager.errors import UnstorableValueError
from datamanager.provenance import git_state
from datamanager.tasks import item_key, run_tasks, task_failures, task_results

from conftest import interruptible, run_python

ITEMS = list(range(24))


# -- tasks (module level, so every start method and Dask can find them) ----------------


def square(x):
    return x * x


def picky(x):
    if x % 5 == 0:
        raise ValueError(f"no multiples of five: {x}")
    return x * x


def lock_returner(x):
    return threading.Lock() if x == 3 else x


def crasher(x):
    if x == 7:
        os._exit(3)  # a worker dying outright (a segfault, the OOM killer)
    return x


def terminated(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler or a user killing one worker
    return x


def slow(x):
    time.sleep(0.05)
    return x * 10


def stored_keys(dm: DataManager, name: str) -> dict[str, int]:
    """How many sessions hold each result key of sweep *name*."""
    counts: dict[str, int] = {}
    for reader in dm.iter_sessions():
        with reader:
            for k in reader.keys():  # noqa: SIM118 (a list)
                if k.startswith(name + "/"):
                    counts[k] = counts.get(k, 0) + 1
    return counts


# -- item keys ---------------------------------------------------------------------------


def test_equal_items_get_equal_keys():
    assert item_key({"a": 1, "b": [2.5, "x"]}) == item_key({"b": [2.5, "x"], "a": 1})
    assert item_key({3, 1, 2}) == item_key(frozenset([2, 3, 1]))
    assert item_key(np.float64(0.25)) == item_key(0.25)
    assert item_key(np.int32(7)) == item_key(7)
    assert item_key(np.bool_(True)) == item_key(True)
    assert item_key(-0.0) == item_key(0.0)
    assert item_key(float("nan")) == item_key(-float("nan"))
    a = np.arange(12.0).reshape(3, 4)
    assert item_key(a.T) == item_key(np.ascontiguousarray(a.T))
    assert item_key(a.astype(">f8")) == item_key(a)
    assert item_key(bytearray(b"ab")) == item_key(b"ab")


def test_different_items_get_different_keys():
    distinct = [
        1,
        1.0,
        True,
        "1",
        b"1",
        [1],
        (1,),
        {1},
        {"1": 1},
        np.array([1]),
        np.array([1.0]),
        np.array([[1]]),
        None,
        0,
        False,
        [],
        (),
        "",
        1 + 0j,
        np.float32(0.1),
        0.1,
        [1, 2],
        [2, 1],
        {"a": [1, 2]},
        {"a": (1, 2)},
    ]
    keys = [item_key(v) for v in distinct]
    assert len(set(keys)) == len(keys)


def test_keys_are_stable_across_processes_and_hash_seeds():
    item = {"tau": 0.01, "names": {"a", "b", "c"}, "grid": np.linspace(0, 1, 5), "n": 3}
    code = textwrap.dedent(
        """
        import numpy as np
        from datamanager.tasks import item_key
        item = {"n": 3, "grid": np.linspace(0, 1, 5), "names": {"c", "a", "b"}, "tau": 0.01}
        print(item_key(item))
        """
    )
    seen = {
        run_python(code, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2")
    }
    assert seen == {item_key(item)}
    # A pinned value: changing the canonical form must be deliberate (it
    # would make every stored sweep look new to resume).
    assert item_key([1, "a", 2.5, None]) == "2c801135e1aa17fcf8bceffdbbf9c0c5"


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_like)
def test_a_pickled_copy_has_the_same_key(value):
    assert item_key(pickle.loads(pickle.dumps(value))) == item_key(value)


def test_values_without_a_canonical_form_are_refused_by_path():
    with pytest.raises(TypeError, match=r"item\['f'\]\[1\]: .*type object"):
        item_key({"f": [1, object()]})
    with pytest.raises(TypeError, match="dtype object"):
        item_key(np.array([1, None], dtype=object))
    loop: list = []
    loop.append(loop)
    with pytest.raises(TypeError, match="contains itself"):
        item_key(loop)


# -- local pool --------------------------------------------------------------------------


def test_local_sweep_stores_results_items_and_provenance(dm):
    summary = run_tasks(dm, square, ITEMS, processes=2, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (len(ITEMS), 0, 0)
    assert sorted(task_results(dm, square)) == [(x, x * x) for x in ITEMS]
    assert dm.get(f"square/{item_key(5)}") != {}
    (value,) = dm.get(f"square/{item_key(5)}").values()
    assert value == 25
    sessions = dm.sessions()
    assert 1 <= len(sessions) <= 2  # one session per worker process
    assert set(sessions["task"]) == {f"{__name__}.square"}
    assert os.getpid() not in set(sessions["pid"])
    again = run_tasks(dm, square, [*ITEMS, 100, 100], processes=2, progress=False)
    assert (again.done, again.skipped, again.failed) == (1, len(ITEMS) + 1, 0)
    assert all(n == 1 for n in stored_keys(dm, "square").values())


def test_failures_are_recorded_and_retried(dm):
    summary = run_tasks(dm, picky, ITEMS, processes=2, progress=False)
    bad = [x for x in ITEMS if x % 5 == 0]
    assert (summary.done, summary.failed) == (len(ITEMS) - len(bad), len(bad))
    assert sorted(f.item for f in summary.failures) == bad
    recorded = task_failures(dm, picky)
    assert sorted(f.item for f in recorded) == bad
    first = recorded[0]
    assert first.error.startswith("ValueError: no multiples of five")
    assert "raise ValueError" in first.traceback and first.worker.endswith(
        tuple(f":{pid}" for pid in dm.sessions()["pid"])
    )
    # A fixed task under the same name retries exactly the failed items.
    retry = run_tasks(dm, square, ITEMS, processes=2, progress=False, name="picky")
    assert (retry.done, retry.skipped, retry.failed) == (len(bad), len(ITEMS) - len(bad), 0)
    assert task_failures(dm) == []
    assert sorted(task_results(dm, "picky")) == [(x, x * x) for x in ITEMS]


def test_unpicklable_results_and_items_are_failures_not_crashes(dm):
    summary = run_tasks(dm, lock_returner, range(6), processes=2, progress=False)
    assert (summary.done, summary.failed) == (5, 1)
    assert summary.failures[0].item == 3
    assert summary.failures[0].error.startswith(UnstorableValueError.__name__)
    items = [1, 2, threading.Lock()]
    summary = run_tasks(
        dm, square, items, processes=2, progress=False, key=lambda x: repr(type(x)) + str(id(x))
    )
    assert (summary.done, summary.failed) == (2, 1)
    assert "lock" in summary.failures[0].item and "pickle" in summary.failures[0].error
    with pytest.raises(TypeError, match=r"items\[1\]"):
        run_tasks(dm, square, [1, object()], processes=2, progress=False)


def test_a_dying_worker_breaks_no_sweep(dm):
    summary = run_tasks(dm, crasher, range(30), processes=2, progress=False)
    assert summary.done + summary.failed == 30
    assert 7 in {f.item for f in summary.failures}
    assert all("BrokenProcessPool" in f.error for f in summary.failures)
    retry = run_tasks(dm, square, range(30), processes=2, progress=False, name="crasher")
    assert retry.done == summary.failed and task_failures(dm) == []


def test_a_worker_sent_sigterm_dies_like_any_dying_worker(dm):
    # Workers forked while the driver handles SIGTERM must not inherit its
    # handler: the pool could not terminate them, and a SIGTERM sent to one
    # worker would interrupt the whole sweep.
    summary = run_tasks(dm, terminated, range(10), processes=2, progress=False)
    assert 3 in {f.item for f in summary.failures}
    assert all("BrokenProcessPool" in f.error for f in summary.failures)
    assert summary.done + summary.failed == 10


def test_tasks_need_a_name_when_their_own_is_ambiguous(dm):
    with pytest.raises(TypeError, match="pass name="):
        run_tasks(dm, lambda x: x, [1], processes=1)
    summary = run_tasks(dm, lambda x: -x, [1, 2], processes=1, name="neg", progress=False)
    assert sorted(task_results(dm, "neg")) == [(1, -1), (2, -2)] and summary.done == 2


# -- Dask --------------------------------------------------------------------------------


def test_dask_sweep_on_a_local_cluster(dm):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        summary = run_tasks(dm, picky, ITEMS, client=client, progress=False)
        worker_pids = set(client.run(os.getpid).values())
    bad = [x for x in ITEMS if x % 5 == 0]
    assert (summary.done, summary.failed) == (len(ITEMS) - len(bad), len(bad))
    assert sorted(task_results(dm, picky)) == [(x, x * x) for x in ITEMS if x % 5]
    assert sorted(f.item for f in task_failures(dm)) == bad
    assert set(dm.sessions()["pid"]) <= worker_pids  # each worker wrote its own session
    assert all(n == 1 for n in stored_keys(dm, "picky").values())


# -- killed and interrupted drivers ----------------------------------------------------

DRIVER = """
import sys, time
from datamanager import DataManager
from datamanager.tasks import run_tasks

def slow(x):
    time.sleep(0.05)
    return x * 10

if __name__ == "__main__":
    dm = DataManager("sweep", sys.argv[1])
    progress = sys.argv[3:] == ["progress"]
    print(run_tasks(dm, slow, range(int(sys.argv[2])), processes=2, progress=progress))
"""


def start_driver(tmp_path: Path, n: int) -> tuple[subprocess.Popen, DataManager]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    return proc, DataManager("sweep", str(tmp_path))


def wait_for_results(proc: subprocess.Popen, dm: DataManager, at_least: int) -> list:
    """Wait until *at_least* results are stored; return the driver's workers."""
    deadline = time.monotonic() + 60
    while len(stored_keys(dm, "slow")) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.05)
    return psutil.Process(proc.pid).children(recursive=True)


def assert_gone(workers: list) -> None:
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers outlived their driver: {alive}"


def test_driver_killed_then_resumed_does_every_item_once(tmp_path):
    proc, dm = start_driver(tmp_path, 80)
    try:
        workers = wait_for_results(proc, dm, 10)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert_gone(workers)  # they die with the driver, storing nothing later
    before = len(stored_keys(dm, "slow"))
    assert 10 <= before < 80
    summary = run_tasks(dm, slow, range(80), processes=2, progress=False)
    assert (summary.skipped, summary.done, summary.failed) == (before, 80 - before, 0)
    counts = stored_keys(dm, "slow")
    assert counts == {f"slow/{item_key(i)}": 1 for i in range(80)}
    assert sorted(task_results(dm, slow)) == [(i, i * 10) for i in range(80)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_cleanly_and_keep_what_finished(tmp_path, signum):
    proc, dm = start_driver(tmp_path, 80)
    try:
        workers = wait_for_results(proc, dm, 10)
        at_signal = len(stored_keys(dm, "slow"))
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signum, err  # the interrupt propagated
    assert "interrupted" in err and "run again to resume" in err
    assert_gone(workers)
    kept = len(stored_keys(dm, "slow"))
    assert at_signal <= kept < 80
    summary = run_tasks(dm, slow, range(80), processes=2, progress=False)
    assert (summary.skipped, summary.done) == (kept, 80 - kept)
    assert stored_keys(dm, "slow") == {f"slow/{item_key(i)}": 1 for i in range(80)}


def test_progress_bar_only_on_a_terminal(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    command = [sys.executable, str(script), str(tmp_path / "a"), "8", "progress"]
    master, terminal = pty.openpty()
    # A fresh pseudo-terminal is 0 columns wide; give it a real width.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal
    )
    os.close(terminal)
    shown = b""
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not data:
                break
            shown += data
    finally:
        os.close(master)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert b"8/8" in shown and b"task/s" in shown
    quiet = subprocess.run(
        [*command[:2], str(tmp_path / "b"), "8", "progress"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert quiet.stderr == "" and "8 done" in quiet.stdout


@pytest.mark.parametrize("method", ["spawn", "forkserver"])  # forkserver: 3.14's default
def test_spawned_workers_reach_the_same_results(dm, method):
    summary = run_tasks(dm, square, range(6), processes=2, progress=False, mp_context=method)
    assert summary.done == 6 and sorted(task_results(dm, square)) == [(x, x * x) for x in range(6)]
    with pytest.raises(TypeError, match="cannot be pickled"):
        run_tasks(dm, lambda x: x, [1], name="f", processes=1, mp_context=method)


# -- provenance --------------------------------------------------------------------------

WRITER = """
from datamanager import DataManager
from datamanager.tasks import run_tasks

def double(x):
    return 2 * x

if __name__ == "__main__":
    import sys
    run_tasks(DataManager("sweep", sys.argv[1]), double, [1, 2], processes=1, progress=False)
"""


def sessions_after_running(script: Path, data: Path, env: dict | None = None):
    subprocess.run([sys.executable, str(script), str(data)], check=True, env=env, timeout=60)
    return DataManager("sweep", str(data)).sessions()


def test_provenance_inside_a_git_repository(tmp_path):
    repo, data = tmp_path / "repo", tmp_path / "data"
    repo.mkdir()
    script = repo / "sweep.py"
    script.write_text(WRITER)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "sweep.py"], ["commit", "-q", "-m", "sweep"]):
        subprocess.run(git + args, check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    row = sessions_after_running(script, data).iloc[-1]
    assert (row["git_commit"], row["git_dirty"], row["git_status"]) == (head.strip(), False, "ok")
    assert row["task"] == "__main__.double" and row["hostname"]
    assert row["packages"]["numpy"] == np.__version__
    script.write_text(WRITER + "\n# an edit\n")
    row = sessions_after_running(script, tmp_path / "data2").iloc[-1]
    assert (row["git_commit"], row["git_dirty"]) == (head.strip(), True)


def test_provenance_outside_a_repository_and_without_git(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(WRITER)
    row = sessions_after_running(script, tmp_path / "data").iloc[-1]
    assert row["git_commit"] is None and row["git_status"] == "not a git repository"
    assert git_state.__wrapped__(str(tmp_path))["git_status"] == "not a git repository"
    no_git = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    row = sessions_after_running(script, tmp_path / "data2", env=no_git).iloc[-1]
    assert row["git_status"] == "git not found" and row["git_dirty"] is None


def test_importing_the_package_imports_no_dask_nor_tqdm():
    code = (
        "import sys, datamanager, datamanager.tasks\n"
        "bad = {'dask', 'distributed', 'tqdm', 'pandas', 'h5py'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    run_python(code)


def test_options_after_brians_are_keyword_only(dm):
    # Brian's positional order ends with numitems; anything further needs a name.
    with pytest.raises(TypeError):
        run_tasks(dm, square, [1, 2], False, 1, None, None, None, None, 2)
    assert not os.path.exists(dm.basepath)


@pytest.mark.parametrize(
    ("options", "error", "argument"),
    [
        ({"chunksize": -1}, ValueError, "chunksize"),
        ({"chunksize": 0}, ValueError, "chunksize"),
        ({"chunksize": 2.5}, TypeError, "chunksize"),
        ({"processes": 0}, ValueError, "processes"),
        ({"processes": -1}, ValueError, "processes"),
        ({"processes": True}, TypeError, "processes"),
    ],
)
def test_counts_are_checked_before_anything_runs(dm, options, error, argument):
    with pytest.raises(error, match=argument):
        run_tasks(dm, square, [1, 2], progress=False, **options)
    assert not os.path.exists(dm.basepath)
