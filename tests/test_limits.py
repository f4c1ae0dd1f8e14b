"""Sessions the host makes awkward: file names in another encoding, few file descriptors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_collate import _write_legacy

from datamanager import DataManager, InvalidNameError
from datamanager._format import validate_session_name

from conftest import run_python, start_python

LATIN1_NAME = b"caf\xe9"  # "café" as a Latin-1 machine writes it: not UTF-8


def _rename_to_latin1(path: str, suffix: str = "") -> str:
    """Give *path* the Latin-1 name; return the name as Python lists it."""
    folder = os.fsencode(os.path.dirname(path))
    target = os.path.join(folder, LATIN1_NAME + os.fsencode(suffix))
    try:
        os.rename(os.fsencode(path), target)
    except OSError as exc:  # e.g. a filesystem that only takes UTF-8 names
        pytest.skip(f"this filesystem refuses a Latin-1 file name ({exc})")
    return os.fsdecode(LATIN1_NAME)


def test_session_named_in_latin1_is_read_like_any_other(dm: DataManager):
    with dm.session("cafe") as s:
        s["rate"] = [1.0]
    with dm.session("plain") as s:
        s["rate"] = [2.0]
    name = _rename_to_latin1(os.path.join(dm.basepath, "cafe.sqlite"), ".sqlite")
    assert name == "caf\udce9"  # os.listdir's surrogateescape form of the byte
    assert dm.keys() == ["rate"]
    assert dm.get("rate") == {name: [1.0], "plain": [2.0]}
    assert sorted(dm.get_merged("rate")) == [1.0, 2.0]
    assert dm.itemcount() == len(dm.items()) == 2
    assert sorted(dm.sessions()["name"]) == sorted([name, "plain"])
    assert dm.verify() == []


def test_sqlite_shelf_named_in_latin1_is_read(dm: DataManager):
    os.makedirs(dm.basepath)
    _write_legacy(os.path.join(dm.basepath, "cafe"), {"rate": [3.0]}, "sqlite")
    name = _rename_to_latin1(os.path.join(dm.basepath, "cafe"))
    assert dm.get("rate") == {name: [3.0]}
    assert dm.verify() == []


def test_command_line_lists_a_latin1_name_as_its_bytes(dm: DataManager):
    with dm.session("cafe") as s:
        s["rate"] = [1.0]
    _rename_to_latin1(os.path.join(dm.basepath, "cafe.sqlite"), ".sqlite")
    # A UTF-8 terminal: strict UTF-8 output, as Python sets up for one.
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "datamanager", "show", dm.basepath, "rate"],
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"\n" + LATIN1_NAME + b" " in proc.stdout  # the file's own bytes, as ls prints


@pytest.mark.parametrize("name", ["\udce9", "caf\udce9", "\ud800", "a\udfffb"])
def test_names_that_are_not_utf8_are_invalid(name: str, dm: DataManager):
    with pytest.raises(InvalidNameError, match="UTF-8"):
        validate_session_name(name)
    with pytest.raises(InvalidNameError):
        dm.session(name)
    assert not os.path.exists(dm.basepath)


@pytest.mark.skipif(sys.platform == "win32", reason="a bytes environment is POSIX only")
def test_user_name_in_latin1_still_names_the_computer_session(tmp_path: Path):
    code = (
        "import sys\nfrom datamanager import DataManager\n"
        "dm = DataManager('sweep', sys.argv[1])\n"
        "dm.computer_session()['x'] = 1\n"
        "print(ascii(dm.computer_name), dm.get('x') == {dm.computer_name: 1})"
    )
    env = {**os.environb, b"USER": LATIN1_NAME, b"LOGNAME": LATIN1_NAME}
    out = run_python(code, str(tmp_path), env=env).stdout.split()
    assert out[0].startswith("'caf\\ufffd.") and out[1] == "True"


# -- file descriptors ----------------------------------------------------------

needs_rlimit = pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE on Windows")

COUNT_UNDER_LIMIT = """
import resource, sys, warnings
from datamanager import DataManager

dm = DataManager.from_path(sys.argv[1])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
limit = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))  # macOS's default
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    counts = [len(dm.items()), len(dm.values()), dm.itemcount(), len(dm.get("x")),
              sum(1 for _ in dm.iteritems()), len(dm.keys())]
print(*counts)
for w in caught:
    print("warning:", w.message)
"""


@needs_rlimit
def test_collation_adapts_to_a_low_descriptor_limit(tmp_path: Path):
    dm = DataManager("many", str(tmp_path), journal_mode="delete")
    with dm.session("s0000") as s:
        s["x"] = 1
    # As many sessions as readers iter_sessions would keep open at once
    # (copies of one small file: quick to make); more than the limit allows.
    count = 256
    for i in range(1, count):
        shutil.copyfile(s.path, os.path.join(dm.basepath, f"s{i:04d}.sqlite"))
    lines = run_python(COUNT_UNDER_LIMIT, dm.basepath).stdout.splitlines()
    assert lines == [f"{count} {count} {count} {count} {count} 1"]  # nothing dropped, no warning


WRITER = """
import sys
from datamanager import DataManager

writer = DataManager.from_path(sys.argv[1], journal_mode="wal").session("live")
writer["x"] = 1  # it stays open, in WAL mode: a reader needs the -wal and -shm files too
print("ready", flush=True)
sys.stdin.read()  # until the test is done
writer.close()
"""

NO_DESCRIPTOR_LEFT = """
import errno, os, resource, sys, warnings
import datamanager  # every module imported now: an import needs a descriptor too
from datamanager import DataManager

dm = DataManager.from_path(sys.argv[1])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
os.close(held.pop())  # one left: enough to list the folder, not to read a session
outcomes = []
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for read in (lambda: dm.get("x"), dm.items, dm.keys, dm.verify):
        try:
            outcomes.append(f"returned {read()!r}")
        except OSError as exc:
            outcomes.append(f"{type(exc).__name__} {errno.errorcode.get(exc.errno)} {exc}")
for fd in held:
    os.close(fd)
print(*outcomes, sep="\\n")
for w in caught:
    print("warning:", w.message)
"""


@needs_rlimit
def test_no_descriptor_left_is_emfile_not_corruption(tmp_path: Path):
    datadir = str(tmp_path / "live.data")
    writer = start_python(WRITER, datadir, stdin=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == "ready\n", writer.stderr.read()
        lines = run_python(NO_DESCRIPTOR_LEFT, datadir).stdout.splitlines()
    finally:
        writer.communicate("", timeout=60)
    assert writer.returncode == 0
    assert len(lines) == 4, lines  # four answers, no warning
    for line in lines:
        assert line.startswith("OSError EMFILE ") and "live.sqlite" in line, line
        assert "ulimit -n" in line and "corrupt" not in line
