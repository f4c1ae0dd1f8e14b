"""Many real processes at once: SIGKILL at random moments, lost updates,
twin creation of one named session, and reading while writing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from datamanager import DataManager

from conftest import IN_CI, run_python, start_python, stress_size

# Each acknowledged write is printed only after `s[key] = value` returned.
KILLED_WRITER = """
import sys, numpy as np
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1])
s = dm.session(sys.argv[2])
start = int(sys.argv[3])
print("ready", flush=True)
for i in range(start, start + 100000):
    if i % 7 == 3:
        value = np.full(140_000, i, dtype=np.float64)  # a side file (> 1 MiB)
    else:
        value = [i] * 50
    s["k%06d" % i] = value
    s["latest"] = i
    print(i, flush=True)
"""


@pytest.mark.stress
def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path):
    rounds = stress_size(full=12, ci=4)
    writers = 3
    rng = random.Random(1234)
    acked: dict[str, list[int]] = {f"w{n}": [] for n in range(writers)}
    for _round in range(rounds):
        procs = {}
        for name in acked:
            start = (acked[name][-1] + 1) if acked[name] else 0
            procs[name] = start_python(KILLED_WRITER, str(tmp_path), name, str(start))
        for proc in procs.values():  # start the clock once every writer runs
            assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        # A random moment to kill at; shorter under CI, where all that was
        # written is read back and verified at the end.
        time.sleep(rng.uniform(0.05, 0.25 if IN_CI else 0.6))
        for proc in procs.values():
            time.sleep(rng.uniform(0, 0.05))
            proc.send_signal(signal.SIGKILL)
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGKILL, err
            acked[name].extend(int(line) for line in out.split())
    dm = DataManager("sweep", str(tmp_path))
    assert sum(map(len, acked.values())) > rounds * writers  # the writers did work
    for name, numbers in acked.items():
        assert numbers, f"writer {name} acknowledged nothing"
        got = dm.get("latest", strict=True)[name]
        assert got >= numbers[-1]  # the last acknowledged value, or a later one
    for key, values in dm.get_matching("k", strict=True).items():
        i = int(key[1:])
        for value in values.values():
            if i % 7 == 3:
                assert value.shape == (140_000,) and (value == i).all(), key
            else:
                assert value == [i] * 50, key
    for name, numbers in acked.items():
        stored = set(dm.session(name).keys())
        missing = [i for i in numbers if f"k{i:06d}" not in stored]
        assert not missing, f"{name} lost acknowledged writes {missing[:5]}"
    assert dm.verify() == []


COUNTER = """
import contextlib, os, sys
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1])
s = dm.locking_session("counter")
marker = os.path.join(sys.argv[1], "inside")


@contextlib.contextmanager
def acquired():
    # Brian's way, nested in a transaction and in itself: the lock is re-entrant.
    s.acquire()
    try:
        with s.transaction():
            s.acquire()
            yield
            s.release()
    finally:
        s.release()


hold = s.transaction if sys.argv[3] == "transaction" else acquired
for _ in range(int(sys.argv[2])):
    with hold():
        # Overlap check independent of the counter: only one process at a
        # time may hold this marker file.
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        s["n"] = s.get("n", 0) + 1
        s["log"] = s.get("log", []) + [os.getpid()]
        os.close(fd)
        os.unlink(marker)
"""


@pytest.mark.stress
@pytest.mark.parametrize("hold", ["transaction", "acquire"])
def test_transactions_lose_no_update(tmp_path, hold):
    procs_n, increments = 4, stress_size(full=60, ci=25)
    args = (str(tmp_path), str(increments), hold)
    procs = [start_python(COUNTER, *args) for _ in range(procs_n)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err  # FileExistsError here would mean overlap
    s = DataManager("sweep", str(tmp_path)).locking_session("counter")
    assert s["n"] == procs_n * increments
    log = s["log"]
    assert len(log) == procs_n * increments
    assert sorted({log.count(pid) for pid in set(log)}) == [increments]


PROBE = """
import sys, filelock
from datamanager import DataManager
s = DataManager("sweep", sys.argv[1]).locking_session("c")
try:
    s.lock.acquire(timeout=0)
except filelock.Timeout:
    print("busy", flush=True)
else:
    print("free", flush=True)
    s.lock.release()
s.acquire()  # waits for the process holding it
print(s["n"], flush=True)
s.release()
"""


def test_acquire_holds_other_processes_until_release(tmp_path):
    s = DataManager("sweep", str(tmp_path)).locking_session("c")
    s.acquire()
    s["n"] = 1
    waiting = start_python(PROBE, str(tmp_path))
    try:
        assert waiting.stdout.readline() == "busy\n"
        s["n"] = 2  # the other process cannot have read n while we hold the lock
        s.release()
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:  # reaped whatever failed above
            waiting.kill()
            waiting.communicate()
    assert (out, waiting.returncode) == ("2\n", 0), err
    # Re-entrant with transaction(), and free again once every acquire() is released.
    s.acquire()
    with s.transaction():
        s.acquire()
        s["n"] = 3
        s.release()
    s.release()
    assert run_python(PROBE, str(tmp_path)).stdout == "free\n3\n"


TWIN = """
import sys
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # the parent answers once every twin is ready
s = dm.computer_session()
s[sys.argv[2]] = sys.argv[2]
"""


@pytest.mark.stress
def test_twins_create_the_same_named_session_at_once(tmp_path):
    for attempt in range(stress_size(full=6, ci=3)):
        procs = [
            start_python(TWIN, str(tmp_path), f"p{attempt}.{n}", stdin=subprocess.PIPE)
            for n in range(4)
        ]
        try:
            # Released together, once all are past their start-up, so that
            # they race for the session file instead of arriving in turn.
            for proc in procs:
                assert proc.stdout.readline() == "ready\n", proc.communicate()
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc in procs:
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err
        finally:
            for proc in procs:
                if proc.returncode is None:  # reaped, whatever failed above
                    proc.kill()
                    proc.communicate()
    dm = DataManager("sweep", str(tmp_path))
    (values,) = [dict(s.items()) for s in dm.iter_sessions(strict=True)]
    assert sorted(values) == sorted(f"p{a}.{n}" for a in range(attempt + 1) for n in range(4))


OVERWRITER = """
import sys, numpy as np
from datamanager import DataManager
s = DataManager("sweep", sys.argv[1]).session("busy")
for i in range(int(sys.argv[2])):
    with s.transaction():
        s["big"] = np.full(200_000, i, dtype=np.float64)
        s["small"] = [i] * 100
        s["i"] = i
s.close()
print("done", flush=True)
"""


def test_reading_while_writing_sees_whole_values(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    writer = start_python(OVERWRITER, str(tmp_path), "300")
    reads = 0
    deadline = time.time() + 120
    try:
        while writer.poll() is None and time.time() < deadline:
            found = dm.get_matching(lambda k: True, strict=True)
            if "big" in found:
                big = found["big"]["busy"]
                small = found["small"]["busy"]
                assert big.shape == (200_000,) and (big == big[0]).all()
                assert small == [small[0]] * 100
                reads += 1
    finally:
        if writer.poll() is None and time.time() >= deadline:
            writer.kill()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and out.strip() == "done", err
    assert reads > 0
    assert dm.get("i") == {"busy": 299}
    np.testing.assert_array_equal(dm.get("big")["busy"], np.full(200_000, 299.0))
    # Every replaced side file was removed; only the current one is left.
    assert len(os.listdir(os.path.join(dm.basepath, "busy.blobs"))) == 1


CREATOR = """
import sys
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1])
for i in range(int(sys.argv[2])):
    with dm.session() as s:
        s["i"] = [i]
"""


@pytest.mark.stress
def test_collating_while_sessions_are_being_created(tmp_path):
    # A reader may open a session file between its creation and the commit
    # of its tables: that is an empty session, never a corrupt one.
    n = stress_size(full=400, ci=150)
    dm = DataManager("sweep", str(tmp_path))
    writer = start_python(CREATOR, str(tmp_path), str(n))
    try:
        while writer.poll() is None:
            merged = dm.get_merged("i", strict=True)
            assert merged == sorted(merged)
    finally:
        _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert dm.get_merged("i", strict=True) == list(range(n))
