"""Collation through the index answers exactly as collation without it.

Every collation method is asked every question twice, once with the data
directory's index in place and once with it moved aside, and the answers
(values, order, raised errors and warnings) must be the same: after a fresh
build, and after sessions were added, rewritten, deleted, replaced by a copy
of another, and written during the build or during the collation itself.
"""

from __future__ import annotations

import contextlib
import fractions
import math
import os
import shutil
import sqlite3
import subprocess
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from datamanager import (
    DataManager,
    DataManagerWarning,
    run_tasks,
    task_failures,
    task_results,
    task_sweeps,
    task_table,
)
from datamanager._format import INDEX_NAME, SIDE_FILE_THRESHOLD, blob_dir, session_files
from datamanager.index import CACHE_LIMIT

from conftest import IN_CI, ROOT, start_python, stress_size

# -- comparing answers --


def canon(value: Any) -> Any:
    """*value* as plain data that compares equal exactly when the values are the same.

    Types are kept (an int is not a numpy int, a tuple not a list), arrays
    compare by dtype, shape and bytes, NaN equals NaN, and a DataFrame by
    its columns, dtypes and cells.
    """
    if isinstance(value, pd.DataFrame):
        return (
            "DataFrame",
            list(value.columns),
            [str(t) for t in value.dtypes],
            canon(value.to_dict("list")),
        )
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.generic):
        return ("numpy", value.dtype.str, value.tobytes())
    if isinstance(value, dict):
        return (type(value).__name__, [(canon(k), canon(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [canon(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    if value is pd.NaT or value is pd.NA:
        return (repr(value),)
    return (type(value).__qualname__, value)


def _call(method: Callable[[], Any]) -> tuple[Any, list[tuple[str, str]]]:
    """``(answer, warnings)`` of *method*: its result, or the error it raised, made plain."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            answer = ("returned", canon(method()))
        except Exception as exc:
            answer = ("raised", type(exc).__name__, str(exc))
    return answer, [(w.category.__name__, str(w.message)) for w in caught]


def _attempt(method: Callable[[], Any]) -> Any:
    """What *method* returns, or the error it raises."""
    try:
        return method()
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))


def _readers(dm: DataManager, strict: bool) -> list[Any]:
    """All that iter_sessions shows of each session: name, file, order, metadata, values."""
    found = []
    for reader in dm.iter_sessions(strict):
        with reader:
            errors: list[Exception] = []
            values = list(reader.items(on_error=errors.append))
            keys = reader.keys()
            found.append(
                (
                    reader.name,
                    reader.path,
                    reader.created,
                    _attempt(lambda r=reader: r.metadata),  # damaged in one session
                    keys,
                    len(reader),
                    values,
                    [str(exc) for exc in errors],
                    reader.nbytes,
                    [key in reader for key in [*keys, "missing"]],
                    reader.matching("p"),
                )
            )
    return found


def _listed(method: Callable[[bool], Iterator[Any]], strict: bool) -> list[Any]:
    return list(method(strict))


#: Questions asked about keys by prefix or test.
MATCHES: list[Any] = ["", "p", "p/", "%", "é", "zz", lambda key: key.endswith("1")]


def questions(dm: DataManager, keys: list[str], strict: bool) -> Iterator[tuple[str, Any]]:
    """``(name, question)``: every collation method, asked every way."""
    for key in keys:
        yield f"get({key!r})", partial(dm.get, key, strict)
        yield f"get_merged({key!r})", partial(dm.get_merged, key, strict)
    for i, match in enumerate(MATCHES):
        for method in (
            dm.get_matching,
            dm.get_merged_matching,
            dm.get_flat_matching,
            dm.get_matching_keys,
        ):
            yield f"{method.__name__}(match {i})", partial(method, match, strict)
    for method in (dm.keys, dm.items, dm.values, dm.itemcount, dm.sessions, dm.session_filenames):
        yield method.__name__, partial(method, strict)
    yield "iteritems", partial(_listed, dm.iteritems, strict)
    yield "itervalues", partial(_listed, dm.itervalues, strict)
    yield "iter_sessions", partial(_readers, dm, strict)
    yield "files", partial(dm.files, strict)
    if not strict:  # the sweep queries have no strict mode
        yield "task_results", partial(task_results, dm, "sometimes")
        yield "task_failures", partial(_failures, dm)
        yield "task_table", partial(task_table, dm, "sometimes", failures=True)
        yield "task_sweeps", partial(task_sweeps, dm)


def _failures(dm: DataManager) -> list[tuple[Any, ...]]:
    return [(f.key, f.item, f.error, f.session) for f in task_failures(dm)]


def collate_all(
    dm: DataManager, keys: list[str] | None = None, stricts: tuple[bool, ...] = (False, True)
) -> dict[str, Any]:
    """Every collation method's answer about *dm*, with the warnings it gave.

    Asked in non-strict and strict mode (or as *stricts* says), for every
    key *keys* names (by default every key any session holds, and one none
    holds).
    """
    if keys is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # asked again below, where warnings count
            keys = [*DataManager.from_path(dm.basepath).keys(), "missing"]
    return {
        f"{name} strict={strict}": _call(question)
        for strict in stricts
        for name, question in questions(dm, keys, strict)
    }


@contextlib.contextmanager
def index_aside(dm: DataManager) -> Iterator[None]:
    """Move the directory's index out of it for a while (never deleting it)."""
    index = os.path.join(dm.basepath, INDEX_NAME)
    aside = os.path.join(dm.datapath, "index-aside.sqlite")
    os.rename(index, aside)
    try:
        yield
        assert not os.path.exists(index), "collation built an index"
    finally:
        os.replace(aside, index)


def snapshot(folder: str) -> dict[str, Any]:
    """Every file under *folder*: its identity, times and bytes.

    Not SQLite's ``-shm`` files, the shared memory of a session's readers,
    and not the change time of a ``-wal`` or ``-journal`` file: SQLite
    running as root chowns these to their database's owner whenever it
    opens them, read-only or not, which sets it.
    """
    found = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith("-shm"):
                continue
            path = os.path.join(root, name)
            if os.path.islink(path):
                found[path] = ("link", os.readlink(path))
                continue
            info = os.stat(path)
            companion = name.endswith(("-wal", "-journal"))
            with open(path, "rb") as f:
                found[path] = (
                    info.st_ino,
                    info.st_size,
                    info.st_mtime_ns,
                    None if companion else info.st_ctime_ns,
                    f.read(),
                )
    return found


def assert_same_answers(
    dm: DataManager, keys: list[str] | None = None, stricts: tuple[bool, ...] = (False, True)
) -> dict[str, Any]:
    """Assert that *dm* collates alike with and without its index; return the answers.

    Collation through the index must also leave every file as it was.
    """
    assert os.path.isfile(os.path.join(dm.basepath, INDEX_NAME)), "no index to compare"
    before = snapshot(dm.basepath)
    indexed = collate_all(dm, keys, stricts)
    after = snapshot(dm.basepath)
    changed = sorted(
        path for path in before.keys() | after.keys() if before.get(path) != after.get(path)
    )
    assert not changed, f"collation through the index wrote: {changed}"
    with index_aside(dm):
        plain = collate_all(dm, keys, stricts)
    differ = [name for name in plain if indexed[name] != plain[name]]
    assert not differ, (
        f"answers differ with the index: {differ[:5]}\n{_first(differ, indexed, plain)}"
    )
    return indexed


def _first(differ: list[str], indexed: dict[str, Any], plain: dict[str, Any]) -> str:
    name = differ[0]
    return f"{name}:\n  indexed: {indexed[name]!r:.2000}\n  plain:   {plain[name]!r:.2000}"


def settled(dm: DataManager) -> pd.Series:
    """Whether the index serves each session it lists, by name, as of now."""
    frame = dm.index_tables()["sessions"]
    return frame.set_index("name")["settled"]


# -- the data --

LEGACY = ROOT / "tests" / "data" / "legacy_shelves" / "py2_dumbdbm.data"
#: A value safe mode refuses: an instance of a class that is not a builtin.
UNSAFE = fractions.Fraction(1, 3)
SMALL = {
    "int": 7,
    "float": 2.5,
    "str": "text é",
    "list": [1.0, 2.0],
    "tuple": (3, "x"),
    "dict": {"a": 1, "b": [2]},
    "none": None,
    "np_float": np.float32(1.5),
    "np_int": np.int64(-3),
    "array": np.arange(6, dtype=np.int16).reshape(2, 3),
    # Stored as a value file in its row, not pickled.
    "table": pd.DataFrame({"t": [0.5, 1.5], "n": [1, 2]}, index=pd.Index(["a", "b"], name="c")),
}


def write_session(dm: DataManager, name: str, i: int, **extra: Any) -> str:
    """Session *name* holding small values, plus *extra*; return its file."""
    with dm.session(name) as s:
        s.update({f"p/{i}": i, "rate": [float(i)], "shared": i * 10})
        s.update(SMALL)
        s.update(extra)
    return dm.session_filename(name)


def damage(path: str, sql: str, *params: Any) -> None:
    """Change one row of session *path* with *sql*, as a bad disk or a bad copy would."""
    conn = sqlite3.connect(path)
    with conn:
        assert conn.execute(sql, params).rowcount == 1
    conn.close()


def build_directory(dm: DataManager, legacy: bool = True) -> None:
    """A data directory holding every kind of value and session collation meets.

    With *legacy*, also legacy shelves, one of them the twin of a native session.
    """
    for i in range(3):
        write_session(dm, f"s{i}", i)
    write_session(dm, "s3", 3, **{"%_": 1, "é/κ": 2})  # keys SQL or UTF-8 could trip on
    # Named in another encoding: no place in the index's text, so read directly.
    with contextlib.suppress(OSError):  # a filesystem that takes only UTF-8 names
        shutil.copyfile(dm.session_filename("s0"), os.fsencode(dm.basepath) + b"/caf\xe9.sqlite")
    write_session(
        dm,
        "big",
        9,
        inline="x" * (CACHE_LIMIT + 1),  # too large to be cached in the index
        array=np.arange(CACHE_LIMIT // 8 + 1.0),  # pickled inline, too large to cache
        side=np.arange(SIDE_FILE_THRESHOLD // 8 + 1.0),  # in a side file
    )
    write_session(dm, "unsafe", 10, obj=UNSAFE)
    write_session(dm, "damaged", 11, bad=[1, 2], bad_table=SMALL["table"])
    garbage = b"\x80\x04\x95garbage"  # no pickle reads this
    damage(dm.session_filename("damaged"), "UPDATE items SET value = ? WHERE key = 'bad'", garbage)
    cut = b"\x93DMVAL\x01\x00garbage"  # a value file's magic, then no value file
    damage(
        dm.session_filename("damaged"), "UPDATE items SET value = ? WHERE key = 'bad_table'", cut
    )
    write_session(dm, "badmeta", 13)
    damage(dm.session_filename("badmeta"), "UPDATE meta SET value = '{' WHERE name = 'user'")
    open(dm.session_filename("killed"), "wb").close()  # killed before its first commit
    # The native twin of a shelf not migrated: both are read, the shelf labelled apart.
    write_session(dm, "erin.lab", 12)
    for path in LEGACY.iterdir() if legacy else ():
        shutil.copy2(path, dm.basepath)


@pytest.fixture(params=[False, True], ids=["trusting", "safe"])
def full(request, tmp_path: Path) -> DataManager:
    dm = DataManager("sweep", str(tmp_path), safe=request.param)
    build_directory(dm)
    return dm


def test_every_method_alike_with_and_without_the_index(full):
    dm = full
    summary = dm.build_index()
    assert (summary.sessions, summary.read, summary.unsettled) == (8, 8, 0)
    # Read directly: a session with damaged metadata, and one named in another encoding.
    assert [name for name, _ in summary.skipped] in (["badmeta"], ["badmeta", "caf\udce9"])
    flags = settled(dm)
    assert flags.all() and len(flags) == 8  # every native session with a commit
    assert_same_answers(dm)
    # The scenario holds what it claims to: the shelf read beside its twin.
    with pytest.warns(DataManagerWarning, match="shares its name with legacy shelf"):
        assert "erin.lab (legacy shelf)" in dm.get("spikes")


# -- a directory that changes after the build --


def remove_session(dm: DataManager, name: str) -> None:
    path = dm.session_filename(name)
    for file in session_files(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file)
    shutil.rmtree(blob_dir(path), ignore_errors=True)


def add_sessions(dm: DataManager) -> None:
    write_session(dm, "new0", 20)
    write_session(dm, "new1", 21, side=np.ones(SIDE_FILE_THRESHOLD // 8))


def rewrite_keys(dm: DataManager) -> None:
    path = dm.session_filename("s0")
    size = os.path.getsize(path)
    with dm.session("s0") as s:
        s["shared"] = 99  # an int for an int: the file keeps its size
        s["array"] = SMALL["array"] + 1
    assert os.path.getsize(path) == size
    with dm.session("big") as s:
        s["side"] = np.zeros(SIDE_FILE_THRESHOLD // 8 + 1)  # a new side file, same size
        s["inline"] = "y" * (CACHE_LIMIT + 1)
    with dm.session("s2") as s:
        s.update_metadata({"note": "added later"})


def delete_sessions(dm: DataManager) -> None:
    remove_session(dm, "s1")
    remove_session(dm, "big")


def delete_keys(dm: DataManager) -> None:
    with dm.session("s2") as s:
        del s["shared"]
    with dm.session("big") as s:
        del s["side"]
        del s["inline"]


def replace_by_copies(dm: DataManager) -> None:
    """s2 and s1 become copies of s3, of the same size and modification time."""
    source = dm.session_filename("s3")
    for name, in_place in [("s2", True), ("s1", False)]:
        target = dm.session_filename(name)
        before = os.stat(target)
        assert before.st_size == os.path.getsize(source)
        if in_place:  # the same inode, rewritten
            shutil.copyfile(source, target)
        else:  # a new inode, renamed over it
            shutil.copyfile(source, target + ".new")
            os.replace(target + ".new", target)
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))


#: What changes, and then how many sessions a second build reads, keeps and drops.
CHANGES = {
    "added": (add_sessions, 2, 8, 0),
    "rewritten": (rewrite_keys, 3, 5, 0),
    "sessions deleted": (delete_sessions, 0, 6, 2),
    "keys deleted": (delete_keys, 2, 6, 0),
    "replaced by copies": (replace_by_copies, 2, 6, 0),
}
#: The keys asked about after a change: the ones changed, and some that were not.
CHANGED_KEYS = ["shared", "array", "side", "inline", "p/0", "missing"]
#: The first test asks everything in both modes, of a directory with legacy
#: shelves; the others do too outside CI, and in CI only what is quick to ask.
STRICTS = (False,) if IN_CI else (False, True)


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_sessions_are_read_directly_and_rebuilt_incrementally(tmp_path, change):
    dm = DataManager("sweep", str(tmp_path))
    build_directory(dm, legacy=not IN_CI)
    dm.build_index()
    assert settled(dm).all()
    modify, read, kept, dropped = CHANGES[change]
    modify(dm)
    # The index is stale: the changed sessions are read directly.
    assert_same_answers(dm, CHANGED_KEYS, STRICTS)
    summary = dm.build_index()
    assert (summary.read, summary.kept, summary.dropped) == (read, kept, dropped)
    assert summary.sessions == read + kept
    assert_same_answers(dm, CHANGED_KEYS, STRICTS)


# -- sweeps and stored files --


def sometimes(x: int) -> int:
    """A task that fails for some items."""
    if x % 4 == 3:
        raise ValueError(f"no {x}")
    return x + 1


def test_sweeps_and_stored_files_read_alike_through_the_index(tmp_path):
    """Task records and file references are held by the index too."""
    dm = DataManager("sweep", str(tmp_path))
    run_tasks(dm, sometimes, range(8), processes=1, progress=False)  # builds the index
    source = tmp_path / "net.param"
    source.write_text("g = 1\n")
    with dm.session("files") as s:
        s["net"] = dm.store_file(source)
    dm.build_index()
    assert settled(dm).all()
    keys = ["sometimes/0", "net", "missing"]
    answers = assert_same_answers(dm, keys, STRICTS)
    assert len(answers["task_failures strict=False"][0][1][1]) == 2  # items 3 and 7
    assert list(dm.files()["key"]) == ["net"]
    # A resumed sweep, not indexed: its new sessions are read directly.
    run_tasks(dm, sometimes, range(12), processes=1, progress=False, index=False)
    assert_same_answers(dm, keys, STRICTS)
    dm.build_index()
    assert_same_answers(dm, keys, STRICTS)


# -- writers at work --

#: Writes counter values into session "live" in batches, one batch per line
#: read from stdin, printing the last value of each batch once committed;
#: each batch also starts a new session holding the counter.
LIVE_WRITER = """
import sys
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1], journal_mode=sys.argv[3])
s = dm.session("live")
i = 0
while sys.stdin.readline():
    for _ in range(int(sys.argv[2])):
        i += 1
        s["counter"] = [i]
        s["step/%d" % (i % 5)] = i
    with dm.session() as t:
        t["counter"] = [i]
    print(i, flush=True)
s.close()
"""


#: Holds a transaction open on session "held" until a line comes on stdin.
HELD_WRITER = """
import sys
from datamanager import DataManager
dm = DataManager("sweep", sys.argv[1], journal_mode=sys.argv[2])
with dm.session("held") as s:
    s["value"] = 1
    with s.transaction():
        s["value"] = 2
        print("inside", flush=True)
        sys.stdin.readline()
print("committed", flush=True)
"""


def _counters(dm: DataManager, how: int) -> tuple[list[int], int | None]:
    """Every counter value one collation method sees, and the one of session "live"."""
    if how == 0:
        found = dm.get("counter")
    elif how == 1:
        found = dm.get_matching("counter").get("counter", {})
    elif how == 2:
        found = {}
        for reader in dm.iter_sessions():
            with reader:
                if "counter" in reader:
                    found[reader.name] = reader["counter"]
    else:
        values = dm.get_merged("counter")
        return values, None  # the order of sessions does not say which is "live"
    values = [v for value in found.values() for v in value]
    return values, found["live"][0]


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_collation_while_a_writer_writes_sees_only_committed_values(tmp_path, journal_mode):
    """Through an index built before or during the writes, every value seen was committed.

    The writer acknowledges each batch once committed, so a value seen
    during a batch lies between the acknowledgement before it (what a stale
    index would still say, at best) and the one after it.
    """
    dm = DataManager("sweep", str(tmp_path))
    write_session(dm, "quiet", 1)
    # (A commit with a rollback journal costs more syncs: smaller batches.)
    args = (str(tmp_path), "50" if journal_mode == "wal" else "3", journal_mode)
    with start_python(LIVE_WRITER, *args, stdin=subprocess.PIPE) as writer:
        try:
            writer.stdin.write("go\n")
            writer.stdin.flush()
            done = int(writer.stdout.readline())
            dm.build_index()
            assert settled(dm).all()  # served until the writer writes again
            for batch in range(stress_size(40, 5)):
                writer.stdin.write("go\n")
                writer.stdin.flush()
                if batch % 4 == 3:
                    dm.build_index()  # a build while the writer writes
                seen, live = _counters(dm, batch % 4)
                before, done = done, int(writer.stdout.readline())
                assert seen and max(seen) <= done
                assert live is None or before <= live <= done
            writer.stdin.close()
            assert writer.wait(timeout=60) == 0, writer.stderr.read()
        finally:
            writer.kill()
    assert_same_answers(dm, ["counter", "step/0", "step/4", "missing"], STRICTS)
    summary = dm.build_index()
    assert summary.unsettled == 0 and settled(dm).all()
    assert_same_answers(dm, ["counter", "step/0", "step/4", "missing"], STRICTS)


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_a_writer_killed_inside_a_transaction_reads_alike(tmp_path, journal_mode):
    """What it committed is read, through the index or not; what it had not, never."""
    dm = DataManager("sweep", str(tmp_path), journal_mode=journal_mode)
    for i in range(2):
        write_session(dm, f"s{i}", i)
    with start_python(HELD_WRITER, str(tmp_path), journal_mode, stdin=subprocess.PIPE) as held:
        assert held.stdout.readline() == "inside\n", held.stderr.read()
        dm.build_index()
        held.kill()  # SIGKILL: its -journal or -wal file stays behind
    assert held.wait() == -9
    keys = ["value", "int", "missing"]
    assert_same_answers(dm, keys, STRICTS)
    dm.build_index()
    assert_same_answers(dm, keys, STRICTS)
    assert dm.get("value") == {"held": 1}


def _iterate_while_deleting(dm: DataManager) -> list[Any]:
    """Every item of every session, the sessions after the first deleted once it is read."""
    seen = []
    for reader in dm.iter_sessions():
        with reader:
            errors: list[Exception] = []
            values = list(reader.items(on_error=errors.append))
            seen.append((reader.name, values, [str(exc) for exc in errors]))
        if len(seen) == 1:
            for name in ("big", "s2"):
                remove_session(dm, name)
    return seen


def test_sessions_deleted_while_iterating_read_alike(tmp_path):
    """Deleted once iteration began, a session still reads whole, as its open file does."""
    answers = []
    dm = DataManager("sweep", str(tmp_path))
    for indexed in (False, True):
        shutil.rmtree(dm.basepath, ignore_errors=True)  # the same paths both times
        for i in range(3):
            write_session(dm, f"s{i}", i)
        write_session(dm, "big", 9, inline=b"x" * (CACHE_LIMIT + 1))  # not cached
        if indexed:
            dm.build_index()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seen = _iterate_while_deleting(dm)
        answers.append((canon(seen), [str(w.message) for w in caught]))
    assert answers[0] == answers[1]
    assert [name for name, *_ in seen] == ["s0", "s1", "s2", "big"] and answers[1][1] == []


# -- any sequence of changes --

NAMES = st.sampled_from(["a", "b", "c"])
KEYS = ["k/0", "k/1", "v"]
VALUES = st.one_of(
    st.integers(0, 300),  # mostly the same size as the value they replace
    st.lists(st.floats(allow_nan=False), max_size=3),
    st.text(max_size=4),
    st.integers(0, 9).map(lambda n: np.arange(n, dtype=np.int32)),
    st.just(np.zeros(CACHE_LIMIT // 8 + 1)),  # not cached
)


class ChangingDirectory(RuleBasedStateMachine):
    """Sessions written, deleted and indexed in any order: the index never shows."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp()
        self.dm = DataManager("sweep", self.tmp)
        os.makedirs(self.dm.basepath)
        self.dm.build_index()

    def teardown(self) -> None:
        shutil.rmtree(self.tmp)

    def _exists(self, name: str) -> bool:
        return os.path.exists(self.dm.session_filename(name))

    @rule(name=NAMES, key=st.sampled_from(KEYS), value=VALUES)
    def set_key(self, name: str, key: str, value: Any) -> None:
        with self.dm.session(name) as s:
            s[key] = value

    @precondition(lambda self: any(map(self._exists, "abc")))
    @rule(name=NAMES, key=st.sampled_from(KEYS))
    def delete_key(self, name: str, key: str) -> None:
        if self._exists(name):
            with self.dm.session(name) as s:
                s.pop(key, None)

    @rule(name=NAMES)
    def delete_session(self, name: str) -> None:
        remove_session(self.dm, name)

    @rule(name=NAMES, note=st.integers(0, 9))
    def add_metadata(self, name: str, note: int) -> None:
        with self.dm.session(name) as s:
            s.update_metadata({"note": note})

    @rule(name=NAMES, source=NAMES)
    def copy_over(self, name: str, source: str) -> None:
        """Session *name* becomes a copy of *source*, keeping its modification time."""
        target, source = self.dm.session_filename(name), self.dm.session_filename(source)
        if target != source and self._exists(name) and os.path.exists(source):
            before = os.stat(target)
            shutil.copyfile(source, target)
            os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))

    @rule()
    def build(self) -> None:
        summary = self.dm.build_index()
        assert summary.unsettled == 0 and summary.sessions == sum(map(self._exists, "abc"))

    @invariant()
    def same_answers(self) -> None:
        assert_same_answers(self.dm, [*KEYS, "missing"], (False,))


ChangingDirectory.TestCase.settings = settings(
    max_examples=stress_size(15, 3),
    stateful_step_count=6 if IN_CI else 20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_any_sequence_of_changes = pytest.mark.stress(ChangingDirectory.TestCase)
