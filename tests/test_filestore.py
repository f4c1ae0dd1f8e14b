"""The file store: files kept once by content, StoredFile values, hash_files, verify."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from datamanager import DataManager, StoredFile, hash_files
from datamanager.cli import main
from datamanager.errors import CorruptSessionError
from datamanager.filestore import CHUNK, bound_to
from datamanager.tasks import item_key

from conftest import ROOT, start_python, stress_size

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def stored(dm: DataManager) -> list[Path]:
    """Every file under a stored name, sorted."""
    return sorted(Path(dm.basepath, ".files").glob("??/*"))


def temporaries(dm: DataManager) -> list[Path]:
    return sorted(Path(dm.basepath, ".files").glob("tmp-*"))


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    pattern = bytes((i * 7 + seed) % 251 for i in range(251))
    path.write_bytes((pattern * (size // 251 + 1))[:size])
    return path


def age(path: Path, seconds: float = 3600) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


@pytest.fixture
def param(tmp_path: Path) -> Path:
    return make_file(tmp_path / "neuron.param", 10_000)


def test_many_processes_store_one_file_once(dm, param):
    writers = stress_size(10, 6)
    code = (
        "import sys; from datamanager import DataManager\n"
        "dm = DataManager('sweep', sys.argv[1])\n"
        "sys.stdin.readline()  # released together, to store at the same time\n"
        "with dm.session() as s:\n"
        "    s['model'] = dm.store_file(sys.argv[2])\n"
    )
    # Run outside any repository: a session made from uncommitted code would
    # also store that code's diff.
    cwd = dm.datapath
    procs = [
        start_python(code, dm.datapath, str(param), stdin=-1, env=ENV, cwd=cwd)
        for _ in range(writers)
    ]
    try:
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            p.kill()
            p.wait()
    (only,) = stored(dm)
    assert only.read_bytes() == param.read_bytes()
    assert only.stat().st_mode & 0o777 == 0o444
    assert temporaries(dm) == []
    values = list(dm.get("model").values())
    assert len(values) == writers
    assert {os.fspath(v) for v in values} == {str(only)}
    table = dm.files()
    assert len(table) == writers and set(table["sha256"]) == {only.parent.name + only.name}


def test_storing_stored_content_writes_nothing(dm, param, tmp_path):
    first = dm.store_file(param)
    stamp = os.stat(first.path)
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    again = dm.store_file(shutil.copy(param, copy))
    assert again == StoredFile(param.name, 10_000, first.sha256, str(copy / param.name))
    assert os.stat(again.path).st_ino == stamp.st_ino  # the same file, untouched
    assert len(stored(dm)) == 1 and temporaries(dm) == []


def test_killed_store_leaves_no_partial_file_and_the_next_store_completes_it(dm, tmp_path):
    # The source is a pipe, so the writer is known to be mid-copy when killed.
    fifo = tmp_path / "slow.param"
    os.mkfifo(fifo)
    code = (
        "import sys; from datamanager import DataManager\n"
        "DataManager('sweep', sys.argv[1]).store_file(sys.argv[2])\n"
    )
    proc = start_python(code, dm.datapath, str(fifo), env=ENV)
    part = os.urandom(3 * CHUNK)
    try:
        with open(fifo, "wb") as pipe:
            pipe.write(part)  # returns once the writer has read all but a pipe buffer
            pipe.flush()
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert stored(dm) == []
    (partial,) = temporaries(dm)
    assert 0 < partial.stat().st_size <= len(part)

    whole = tmp_path / "slow.bin"
    whole.write_bytes(part + b"rest")
    f = dm.store_file(whole)
    assert [Path(f.path)] == stored(dm)
    assert Path(f).read_bytes() == part + b"rest"
    assert f.sha256 == hashlib.sha256(part + b"rest").hexdigest() and f.size == len(part) + 4

    assert dm.verify() == []  # a partial copy this young may still be written
    age(partial)
    (problem,) = dm.verify()
    assert problem.path == str(partial) and "interrupted store" in problem.message


def test_values_read_back_in_normal_and_safe_mode_and_in_the_cli(dm, param, tmp_path, capsys):
    other = make_file(tmp_path / "network.param", 300, seed=1)
    f, g = dm.store_file(param), dm.store_file(other)
    with dm.session("writer") as s:
        s["model"] = f
        s["params"] = {"files": [f, (g,)], "tau": 0.01}
    for safe in (False, True):
        reader = DataManager(dm.name, dm.datapath, safe=safe)
        (model,) = reader.get("model").values()
        assert isinstance(model, StoredFile) and model == f
        assert (model.name, model.size, model.original) == ("neuron.param", 10_000, str(param))
        assert Path(model).read_bytes() == param.read_bytes()
        (params,) = reader.get("params").values()
        assert params == {"files": [f, (g,)], "tau": 0.01}
        assert Path(params["files"][1][0]).read_bytes() == other.read_bytes()
    assert main(["show", dm.basepath, "model"]) == 0
    assert "StoredFile" in capsys.readouterr().out


def test_a_moved_data_directory_still_finds_its_files(dm, param, tmp_path):
    with dm.session() as s:
        s["model"] = [dm.store_file(param)]
    content = param.read_bytes()
    param.unlink()
    moved = tmp_path / "moved" / "sweep.data"
    shutil.copytree(dm.basepath, moved)
    shutil.rmtree(dm.basepath)
    for safe in (False, True):
        (model,) = DataManager.from_path(str(moved), safe=safe).get_merged("model")
        assert model.path.startswith(str(moved) + os.sep)
        assert Path(model).read_bytes() == content
        assert model.original == str(param)  # where it came from, though gone


def test_a_stored_file_pickles_without_its_store(dm, param):
    f = dm.store_file(param)
    data = pickle.dumps(f)
    assert dm.basepath.encode() not in data
    loose = pickle.loads(data)
    assert loose == f and loose.path is None
    with pytest.raises(FileNotFoundError, match="not read from a data directory"):
        os.fspath(loose)
    assert loose.at(dm.basepath).path == f.path
    with bound_to(dm.basepath):
        assert pickle.loads(data).path == f.path


def test_safe_mode_refuses_a_stored_file_that_names_a_path(dm, param):
    f = dm.store_file(param)
    with dm.session("writer") as s:
        s["model"] = f
    hostile = pickle.dumps(f).replace(f.sha256.encode(), b"../" * 21 + b"x")
    with (
        contextlib.closing(sqlite3.connect(os.path.join(dm.basepath, "writer.sqlite"))) as conn,
        conn,
    ):
        conn.execute("UPDATE items SET value = ? WHERE key = 'model'", (hostile,))
    conn.close()
    for safe in (False, True):
        with pytest.raises(CorruptSessionError, match="is not 64 lowercase hex digits"):
            DataManager(dm.name, dm.datapath, safe=safe).get("model", strict=True)


def test_files_finds_stored_files_nested_in_values_and_task_records(dm, param, tmp_path):
    other = make_file(tmp_path / "network.param", 300, seed=1)
    f, g = dm.store_file(param), dm.store_file(other)
    with dm.session("a") as s:
        s["plain"] = [1.0, 2.0]
        s["model"] = f
        s["deep"] = {"runs": [({"net": g},)], g.name: (1, 2)}
        s.update_records({"lif.items/0123abcd": {"model": f, "I": 2.0}, "lif.items/ffff": 3})
    with dm.session("b") as s:
        s["set"] = {f}
    table = dm.files()
    assert list(table.columns) == [
        "session", "key", "item", "name", "original", "sha256", "size", "path"
    ]  # fmt: skip
    rows = sorted(
        zip(table["session"], table["key"], table["item"].fillna(""), table["name"], table["size"])
    )
    assert rows == [
        ("a", "deep", "", "network.param", 300),
        ("a", "lif.items/0123abcd", "0123abcd", "neuron.param", 10_000),
        ("a", "model", "", "neuron.param", 10_000),
        ("b", "set", "", "neuron.param", 10_000),
    ]
    assert set(table["path"]) == {f.path, g.path}
    assert set(table["original"]) == {str(param), str(other)}


def test_files_of_a_directory_without_stored_files_is_empty(dm):
    with dm.session() as s:
        s["x"] = 1
    assert dm.files().empty


@pytest.mark.parametrize("where", ["pool", "dask"])
def test_hash_files_agrees_with_hashlib(tmp_path, where):
    sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]
    paths = [make_file(tmp_path / f"f{i}", n, seed=i) for i, n in enumerate(sizes)]
    paths.append(paths[2])  # repeated: one row each, in the order given
    if where == "pool":
        table = hash_files(paths, processes=2)
    else:
        distributed = pytest.importorskip("distributed")
        with (
            distributed.LocalCluster(
                n_workers=1, processes=False, threads_per_worker=2, dashboard_address=":0"
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            table = hash_files(paths, client=client)
    assert list(table["path"]) == [str(p) for p in paths]
    assert list(table["sha256"]) == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert list(table["size"]) == [p.stat().st_size for p in paths]


def test_hash_files_reports_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        hash_files([tmp_path / "absent"], processes=1)


def test_verify_finds_damaged_and_missing_stored_files(dm, param, tmp_path):
    other = make_file(tmp_path / "network.param", 300, seed=1)
    f, g = dm.store_file(param), dm.store_file(other)
    with dm.session("writer") as s:
        s["model"] = f
        s["net"] = {"file": g}
    assert dm.verify() == []
    os.chmod(f.path, 0o644)
    with open(f.path, "r+b") as damaged:
        damaged.seek(5000)
        damaged.write(b"X")
    os.remove(g.path)
    problems = {p.path: p.message for p in dm.verify()}
    assert "stored file is damaged" in problems.pop(f.path)
    message = problems.pop(os.path.join(dm.basepath, "writer.sqlite"))
    assert "key 'net'" in message and f"sha256 {g.sha256}), missing" in message
    assert problems == {}


def test_prune_never_removes_the_store(dm, param):
    f = dm.store_file(param)
    with dm.session() as s:
        s["model"] = f
    leftover = Path(dm.basepath, ".files", "tmp-" + "0" * 32)
    leftover.write_bytes(b"partial")
    for path in [*Path(dm.basepath).rglob("*"), Path(dm.basepath)]:
        age(path)
    before = sorted(Path(dm.basepath, ".files").rglob("*"))
    assert dm.prune(dry=False, empty_sessions=True) == []
    assert sorted(Path(dm.basepath, ".files").rglob("*")) == before


def test_item_key_of_a_file_is_its_content_and_name(tmp_path, param):
    dm = DataManager("keys", str(tmp_path))
    key = item_key({"model": param, "I": 2.0})
    f = dm.store_file(param)
    assert item_key({"model": f, "I": 2.0}) == key
    age(param)  # touched: same content, same key
    assert item_key({"model": param, "I": 2.0}) == key
    moved = tmp_path / "moved"
    moved.mkdir()
    assert item_key({"model": Path(shutil.copy(param, moved)), "I": 2.0}) == key
    renamed = Path(shutil.copy(param, tmp_path / "other.param"))
    assert item_key({"model": renamed, "I": 2.0}) != key
    assert item_key({"model": str(param), "I": 2.0}) != key  # a str is text, not a file
    with open(param, "r+b") as edit:
        edit.write(b"!")
    assert item_key({"model": param, "I": 2.0}) != key
    with pytest.raises(FileNotFoundError):
        item_key([tmp_path / "absent"])


def test_a_stored_file_stores_into_another_data_directory(dm, param, tmp_path):
    f = dm.store_file(param)
    other = DataManager("copy", str(tmp_path))
    g = other.store_file(f)
    assert g == f and g.path != f.path
    assert g.path.startswith(other.basepath) and Path(g).read_bytes() == param.read_bytes()
