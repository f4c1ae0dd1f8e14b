"""Parameter files in sweep items: stored once by content, read back, edited, touched, moved."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from datamanager import DataManager, StoredFile
from datamanager.tasks import item_key, rerun_tasks, run_tasks, task_results, task_table


def read_param(param, x):
    """A task that reads its parameter file through whatever it was given."""
    with open(param) as f:
        text = f.read()
    return {"text": text, "x": x, "given": type(param).__name__, "at": os.fspath(param)}


def store_listing(dm: DataManager) -> list[str]:
    """The stored files of *dm*'s store, as ``<2 digits>/<62 digits>`` names."""
    store = Path(dm.basepath) / ".files"
    return sorted(str(p.relative_to(store)) for p in store.glob("??/*"))


def read(path) -> str:
    with open(path) as f:
        return f.read()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def params(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "params"
    folder.mkdir()
    return write(folder / "neuron.param", "tau = 10 ms\n"), write(
        folder / "net.param", "p = 0.1\n"
    )


def test_a_file_shared_by_many_items_is_stored_once(dm, params):
    neuron, net = params
    items = [(neuron, x) for x in range(10)] + [(net, 10)]
    summary = run_tasks(dm, read_param, items, processes=2, progress=False)
    assert (summary.done, summary.failed) == (11, 0)
    assert len(store_listing(dm)) == 2
    store = os.path.join(dm.basepath, ".files")
    for item, result in task_results(dm, read_param):
        # The task read the stored copy, through a StoredFile bound in its worker.
        assert result["given"] == "StoredFile"
        assert result["at"].startswith(store + os.sep)
        assert result["text"] == (neuron if result["x"] < 10 else net).read_text()
        # The stored item refers to the stored copy, bound where it was read.
        param = item[0]
        assert isinstance(param, StoredFile)
        assert param.original == str(neuron if result["x"] < 10 else net)
        assert param.path == result["at"]


def test_items_read_back_after_the_originals_are_gone(dm, params, tmp_path):
    neuron, net = params
    run_tasks(dm, read_param, [(neuron, 1), (net, 2)], processes=1, progress=False)
    shutil.move(str(neuron), str(tmp_path / "moved.param"))
    net.unlink()
    texts = {}
    for (param, x), _result in task_results(dm, read_param):
        texts[x] = read(param)
    assert texts == {1: "tau = 10 ms\n", 2: "p = 0.1\n"}
    table = task_table(dm, read_param)
    assert [read(p) for p in table.sort_values("x")["param"]] == list(texts.values())
    # The stored items run again without the originals: same keys, so a resume
    # skips them, and a fresh run reads the stored copies.
    items = [item for item, _result in task_results(dm, read_param)]
    assert run_tasks(dm, read_param, items, processes=1, progress=False).skipped == 2
    again = run_tasks(dm, read_param, items, name="again", processes=1, progress=False)
    assert again.done == 2
    assert sorted(r["text"] for _i, r in task_results(dm, "again")) == sorted(texts.values())


def test_editing_a_file_reruns_exactly_its_items_and_touching_reruns_none(dm, params):
    neuron, net = params
    items = [(neuron, x) for x in range(4)] + [(net, x) for x in range(3)]
    assert run_tasks(dm, read_param, items, processes=2, progress=False).done == 7
    # Touched (new mtime, same content): nothing to do.
    later = neuron.stat().st_mtime + 3600
    os.utime(neuron, (later, later))
    os.utime(net, (later, later))
    touched = run_tasks(dm, read_param, items, processes=2, progress=False)
    assert (touched.done, touched.skipped) == (0, 7)
    # Edited: exactly the items using it run again, reading the new content.
    write(neuron, "tau = 20 ms\n")
    edited = run_tasks(dm, read_param, items, processes=2, progress=False)
    assert (edited.done, edited.skipped) == (4, 3)
    new = [r for _i, r in task_results(dm, read_param) if r["text"] == "tau = 20 ms\n"]
    assert sorted(r["x"] for r in new) == [0, 1, 2, 3]
    assert len(store_listing(dm)) == 3  # both contents of neuron.param, and net.param


def test_a_path_is_read_once_per_run(dm, params):
    neuron, _net = params

    def items():
        yield (neuron, 0)
        # Changed after the first item was keyed: the run keeps the content it read.
        write(neuron, "tau = 99 ms\n")
        yield (neuron, 1)

    assert run_tasks(dm, read_param, items(), processes=1, progress=False).done == 2
    assert [r["text"] for _i, r in task_results(dm, read_param)] == ["tau = 10 ms\n"] * 2
    assert len(store_listing(dm)) == 1


def test_files_nested_anywhere_in_an_item_are_stored(dm, params):
    neuron, net = params
    item = {"model": [neuron, (net,)], "x": 1, "files": {"n": neuron}}

    def nested(item):
        return [read(p) for p in (item["model"][0], item["model"][1][0], item["files"]["n"])]

    run_tasks(dm, nested, [item], name="nested", processes=1, progress=False)
    ((stored, result),) = task_results(dm, "nested")
    assert result == ["tau = 10 ms\n", "p = 0.1\n", "tau = 10 ms\n"]
    assert isinstance(stored["model"][1][0], StoredFile)
    assert isinstance(stored["files"]["n"], StoredFile)
    assert len(store_listing(dm)) == 2
    # Keyed by content and name, as the item with its Paths.
    assert item_key(stored) == item_key(item)


def test_a_custom_key_leaves_items_as_given(dm, params):
    neuron, _net = params
    run_tasks(dm, read_param, [(neuron, 1)], key=lambda item: str(item[1]), processes=1)
    ((item, result),) = task_results(dm, read_param)
    assert result["given"] == type(neuron).__name__
    assert item == (neuron, 1)
    assert store_listing(dm) == []


def test_a_missing_file_is_refused_before_anything_runs(dm, params, tmp_path):
    neuron, _net = params
    with pytest.raises(FileNotFoundError):
        run_tasks(dm, read_param, [(neuron, 1), (tmp_path / "absent", 2)], processes=1)
    assert not os.path.exists(os.path.join(dm.basepath, "sweep"))


def test_a_sweep_with_files_on_a_dask_local_cluster(dm, params):
    distributed = pytest.importorskip("distributed")
    neuron, net = params
    items = [(neuron, x) for x in range(5)] + [(net, 5)]
    with (
        distributed.LocalCluster(
            # ":0", a free port: None means Dask's 8787, which a cluster
            # running beside this one (another test run) may hold.
            n_workers=1,
            processes=True,
            threads_per_worker=2,
            dashboard_address=":0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        summary = run_tasks(dm, read_param, items, client=client, progress=False)
    assert (summary.done, summary.failed) == (6, 0)
    results = [r for _i, r in task_results(dm, read_param)]
    assert {r["given"] for r in results} == {"StoredFile"}
    assert sorted(r["text"] for r in results) == ["p = 0.1\n"] + ["tau = 10 ms\n"] * 5
    assert len(store_listing(dm)) == 2


def test_a_safe_manager_reads_items_with_stored_files(dm, params):
    neuron, _net = params
    run_tasks(dm, read_param, [(neuron, 1)], processes=1, progress=False)
    safe = DataManager(dm.name, dm.datapath, safe=True)
    ((item, result),) = task_results(safe, read_param)
    assert isinstance(item[0], StoredFile)
    assert read(item[0]) == result["text"] == "tau = 10 ms\n"
    assert list(safe.files()["item"]) == [item_key((neuron, 1))]


def test_a_rerun_after_the_originals_are_deleted_edits_a_stored_parameter_file(
    dm, params, tmp_path
):
    neuron, net = params
    run_tasks(dm, read_param, [(neuron, 1), (net, 2)], processes=1, progress=False)
    neuron.unlink()
    net.unlink()
    edits = tmp_path / "edits"
    edits.mkdir()

    def slower(item):
        param, x = item
        if param.name != "neuron.param":
            return None
        # The item refers to the stored copy: read it, write a changed copy.
        changed = edits / param.name
        changed.write_text(read(param).replace("10 ms", "20 ms"))
        return (changed, x)

    out = DataManager("elsewhere", str(tmp_path / "out"))
    # The function binds a folder, which has no canonical form: the rerun needs a name.
    with pytest.raises(TypeError, match="name="):
        rerun_tasks(dm, read_param, [slower], out=out, processes=1, progress=False)
    summary = rerun_tasks(
        dm, read_param, [slower], out=out, name="slower", processes=1, progress=False
    )
    assert (summary.done, summary.failed) == (2, 0)
    results = {r["x"]: r for _item, r in task_results(out, summary.name)}
    assert results[1]["text"] == "tau = 20 ms\n"
    assert results[2]["text"] == "p = 0.1\n"  # unchanged, copied from the original's store
    out_store = os.path.join(out.basepath, ".files") + os.sep
    assert all(r["at"].startswith(out_store) for r in results.values())
    assert len(store_listing(out)) == 2
