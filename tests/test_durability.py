"""Kills in every window of a writer's life hide no acknowledged value from readers.

A writer killed while it changes a session's header (the switch into WAL when
it opens, back out of it when it closes) or, with a rollback journal, in the
middle of any write, leaves a hot ``-journal``. Readers must still see the last
committed state, read-only, without writing anything into the data directory.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from datamanager import DataManager

from conftest import can_mount_read_only, run_python, start_python, stress_size

# Imports once, then forks one writer per request ("<journal mode> <session
# name or -> <first key>"), prints "child <pid>" and, once the writer died,
# "died <status>".  A writer prints the step it is about to take, and "ack"
# only after its write returned.
WRITERS = """
import os, sys, traceback
from datamanager import DataManager

def say(*words):
    os.write(1, (" ".join(map(str, words)) + "\\n").encode())  # one write, one line

for request in sys.stdin:
    mode, name, start = request.split()
    pid = os.fork()
    if pid == 0:
        try:
            dm = DataManager("sweep", sys.argv[1], journal_mode=mode)
            i = int(start)
            while True:
                s = dm.session(None if name == "-" else name)
                say("open")
                len(s)  # opens a session that exists: its switch into WAL
                say("write")
                s["k%06d" % i] = [i]
                say("ack", i)
                s.close()
                i += 1
        finally:
            traceback.print_exc()
            os._exit(1)
    say("child", pid)
    say("died", os.waitpid(pid, 0)[1])
"""

# The windows that leave a hot journal, for each journal mode and kind of session.
WINDOWS = {
    ("wal", True): {"open", "close"},
    ("wal", False): {"write", "close"},  # a new session is created by its first write
    ("delete", True): {"write"},
    ("delete", False): {"write"},
}
# The step the writer was in, named by the last line it printed.
STEP = {"open": "open", "write": "write", "ack": "close"}


def _listing(directory: str) -> dict[str, tuple[int, int] | None]:
    """Every file below *directory*, with size and mtime (None for -shm: see below)."""
    found: dict[str, tuple[int, int] | None] = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.stat(path)
            # Readers of a session left in WAL by a killed writer take their
            # read locks inside its -shm file: only that may change.
            found[path] = None if name.endswith("-shm") else (st.st_size, st.st_mtime_ns)
    return found


def _kill_once(writers: subprocess.Popen, request: str, rng: random.Random) -> tuple[list, str]:
    """Fork a writer, SIGKILL it at a random moment; return its acks and last step."""
    writers.stdin.write(request + "\n")
    writers.stdin.flush()
    target, lines, pid = rng.randint(1, 12), [], None
    while pid is None or len(lines) < target:
        line = writers.stdout.readline()
        assert line, "the forking process died (its stderr is above)"
        if line.startswith("child"):
            pid = int(line.split()[1])
        else:
            lines.append(line)
    # A random moment inside the step just begun (each takes milliseconds on
    # a local disk); what is asserted does not depend on where it lands.
    time.sleep(rng.uniform(0, 0.03))
    os.kill(pid, signal.SIGKILL)
    for line in iter(writers.stdout.readline, ""):
        if line.startswith("died"):
            assert int(line.split()[1]) == signal.SIGKILL, "the writer failed (see above)"
            break
        lines.append(line)
    acked = [int(line.split()[1]) for line in lines if line.startswith("ack")]
    return acked, STEP[lines[-1].split()[0]]


def _hot_journals(directory: str) -> set[tuple[str, int, int]]:
    """The -journal files in *directory* that hold anything (an empty one is not
    hot), each with what tells a new one from an old one of the same name."""
    found = set()
    for entry in os.scandir(directory) if os.path.isdir(directory) else ():
        st = entry.stat()
        if entry.name.endswith("-journal") and st.st_size:
            found.add((entry.name, st.st_ino, st.st_mtime_ns))
    return found


def _assert_all_readable(dm: DataManager, acked: list[int]) -> None:
    """Every acknowledged key reads back, with no warning, writing nothing."""
    before = _listing(dm.basepath)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stored = dict(dm.items(strict=True))
        # The write the kill interrupted may have committed without its ack.
        stored.pop(f"k{acked[-1] + 1:06d}", None)
        assert stored == {f"k{i:06d}": [i] for i in acked}
        # A key written again after a kill may be in two sessions.
        found = dm.get(f"k{acked[-1]:06d}", strict=True).values()
        assert found and all(value == [acked[-1]] for value in found)
        assert dm.verify() == []
    assert _listing(dm.basepath) == before


@pytest.mark.stress
@pytest.mark.parametrize("named", [True, False], ids=["named", "new"])
@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_kill_in_every_window_hides_no_acknowledged_value(tmp_path, mode, named):
    wanted = stress_size(full=3, ci=1)  # kills with a hot journal left, per window
    attempts = 80 * wanted
    rng = random.Random(f"{mode}{named}")
    dm = DataManager("sweep", str(tmp_path), journal_mode=mode)
    hits = dict.fromkeys(WINDOWS[mode, named], 0)
    acked: list[int] = []
    # stderr is not piped: pytest shows it with a failure.
    writers = subprocess.Popen(
        [sys.executable, "-c", WRITERS, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(attempts):
            if min(hits.values()) >= wanted:
                break
            before = _hot_journals(dm.basepath)
            start = acked[-1] + 1 if acked else 0
            new, step = _kill_once(writers, f"{mode} {'run' if named else '-'} {start}", rng)
            acked += new
            if step in hits and _hot_journals(dm.basepath) - before:
                hits[step] += 1  # the kill left a hot journal of its own
            if acked:
                _assert_all_readable(dm, acked)
    finally:
        writers.communicate(timeout=60)  # closes its stdin: it ends
    assert min(hits.values()) >= wanted, f"kills that left a hot journal, per step: {hits}"


HOT_JOURNAL = """
import os, signal, sys
from datamanager import DataManager
s = DataManager("sweep", sys.argv[1], journal_mode="delete").session("hot")
s["before"] = [1, 2, 3]
print("committed", flush=True)
sys.stdin.readline()  # until told to go on
with s.transaction():
    # Far more than SQLite's page cache holds, so that pages of this
    # transaction reach the database file before it commits.
    for i in range(40):
        s["big%d" % i] = os.urandom(200_000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def hot(tmp_path):
    """A session whose writer was killed mid-transaction: its -journal is hot."""
    proc = subprocess.run(
        [sys.executable, "-c", HOT_JOURNAL, str(tmp_path)],
        input="go\n",
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    dm = DataManager("sweep", str(tmp_path))
    assert os.path.exists(os.path.join(dm.basepath, "hot.sqlite-journal"))
    return dm


def test_hot_journal_read_from_a_private_copy(hot):
    before = _listing(hot.basepath)
    assert hot.get("before", strict=True) == {"hot": [1, 2, 3]}
    assert hot.keys() == ["before"]  # the uncommitted keys stay invisible
    assert hot.verify() == []
    assert _listing(hot.basepath) == before
    # The next writer rolls the journal back in place.
    with hot.session("hot") as s:
        assert dict(s) == {"before": [1, 2, 3]}
    assert not os.path.exists(os.path.join(hot.basepath, "hot.sqlite-journal"))


def test_reader_opened_before_the_kill_reads_the_last_commit(tmp_path):
    writer = start_python(HOT_JOURNAL, str(tmp_path), stdin=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == "committed\n", writer.stderr.read()
        reader = next(DataManager("sweep", str(tmp_path)).iter_sessions(strict=True))
    finally:
        _, err = writer.communicate("go\n", timeout=60)
    with reader:
        assert writer.returncode == -signal.SIGKILL, err
        assert os.path.exists(reader.path + "-journal")
        assert dict(reader.items()) == {"before": [1, 2, 3]}
        assert reader.keys() == ["before"] and reader["before"] == [1, 2, 3]


READ_KEY = """
import sys
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1])
print(dm.get(sys.argv[2], strict=True), dm.verify())
"""


def _read_on_read_only_mount(datapath: str, key: str) -> str:
    """Read *key* in a process that sees *datapath* as a read-only bind mount.

    Permission bits do not stop root; in a private mount namespace any attempt
    to create, write or lock a file there fails for real.
    """
    if not can_mount_read_only(Path(datapath)):
        pytest.skip("needs unshare and mount --bind (root in a sandbox allowing mounts)")
    script = (
        f"mount --bind -o ro {datapath} {datapath} && exec {shlex.quote(sys.executable)} "
        f"-W error -c {shlex.quote(READ_KEY)} {datapath} {key}"
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_hot_journal_on_a_read_only_mount(hot):
    assert _read_on_read_only_mount(hot.datapath, "before") == "{'hot': [1, 2, 3]} []"


HOLDING_READER = """
import sys
from datamanager import DataManager
readers = DataManager("sweep", sys.argv[1]).iter_sessions()
reader = next(readers)
print(reader.keys(), flush=True)
sys.stdin.readline()  # hold the session open until told
reader.close()
"""


def test_session_closed_under_a_reader_is_whole_in_its_main_file(tmp_path):
    dm = DataManager("sweep", str(tmp_path / "live"), journal_mode="wal")
    s = dm.session("run")
    s["first"] = 1
    # Opened while the session is in WAL mode, the reader keeps it so.
    reader = start_python(HOLDING_READER, dm.datapath, stdin=subprocess.PIPE)
    try:
        assert reader.stdout.readline() == "['first']\n", reader.stderr.read()
        s["second"] = np.arange(3)
        s.update({f"k{i}": i for i in range(100)})
        s.close()
        copied = DataManager("sweep", str(tmp_path / "copied"))
        os.makedirs(copied.basepath)
        shutil.copy(os.path.join(dm.basepath, "run.sqlite"), copied.basepath)
    finally:
        reader.communicate("go\n", timeout=60)
    assert reader.returncode == 0
    before = _listing(copied.basepath)
    values = dict(copied.items(strict=True))
    assert len(values) == 102 and values["first"] == 1 and values["k99"] == 99
    assert copied.verify() == []
    assert _listing(copied.basepath) == before  # no -wal or -shm created beside it
    assert _read_on_read_only_mount(copied.datapath, "k99") == "{'run': 99} []"


TRY_TO_WRITE = """
import sqlite3, sys
try:
    sqlite3.connect(sys.argv[1], timeout=0).execute("BEGIN IMMEDIATE")
    print("got the write lock")
except sqlite3.OperationalError as exc:
    print(exc)
"""


def test_reading_keeps_the_locks_of_a_writer_in_the_same_process(tmp_path, monkeypatch):
    # SQLite's locks are POSIX locks: closing any descriptor of the file in
    # this process would drop them and let another process write inside this
    # one's transaction. Reading a session held here opens no descriptor of
    # it; the datapath is relative, as most scripts give it.
    monkeypatch.chdir(tmp_path)
    dm = DataManager("sweep", "", journal_mode="delete")
    s = dm.session("run")
    with s.transaction():
        s["mine"] = 1
        assert dm.keys() == []  # not committed yet
        other = run_python(TRY_TO_WRITE, s.path)
        assert other.stdout.strip() == "database is locked"
    s.close()
