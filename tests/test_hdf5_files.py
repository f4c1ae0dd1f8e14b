"""Stored files in HDF5 exports: each distinct file once, read back with plain h5py too."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import pytest

from datamanager import DataManager, StoredFile
from datamanager.errors import ExportError, ExportFormatError
from datamanager.hdf5 import SCHEMA_VERSION, export_hdf5, load_file, load_hdf5
from datamanager.tasks import run_tasks, task_results


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    model, net = tmp_path / "model.param", tmp_path / "net.param"
    model.write_bytes(b"tau = 10 ms\n\x00\xff")
    net.write_bytes(b"p = 0.1\n" * 1000)
    return model, net


def fill(dm: DataManager, model: Path, net: Path, sessions: int = 3) -> None:
    for i in range(sessions):
        with dm.session() as s:
            s["model"] = dm.store_file(model)
            s["inputs"] = {"net": dm.store_file(net), "copies": [dm.store_file(model), i]}


def test_each_distinct_file_is_exported_once_and_plain_h5py_reads_it(dm, files, tmp_path):
    model, net = files
    fill(dm, model, net)
    out = tmp_path / "out.h5"
    export_hdf5(dm, out)
    with h5py.File(out, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION >= 3
        stored = f["files"]
        assert len(stored) == 2
        for path in (model, net):
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            assert stored[sha][()].tobytes() == path.read_bytes()
            assert stored[sha].attrs["size"] == path.stat().st_size
        for group in f["sessions"].values():
            value = group["model"]
            assert value.attrs["python_type"] == "StoredFile"
            assert value.attrs["name"] == "model.param"
            assert value.asstr()[()] == hashlib.sha256(model.read_bytes()).hexdigest()


def test_load_hdf5_gives_stored_files_whose_bytes_load_file_reads(dm, files, tmp_path):
    model, net = files
    fill(dm, model, net)
    out = tmp_path / "out.h5"
    export_hdf5(dm, out)
    model.unlink()  # the export holds the bytes: the originals no longer matter
    net.unlink()
    sessions = load_hdf5(out)["sessions"]
    assert len(sessions) == 3
    for values in sessions.values():
        value = values["model"]
        assert isinstance(value, StoredFile) and value.path is None
        assert value.original == str(model)
        assert load_file(out, value) == b"tau = 10 ms\n\x00\xff"
        assert load_file(out, values["inputs"]["net"].sha256) == b"p = 0.1\n" * 1000
        assert values["inputs"]["copies"][0] == value
    with pytest.raises(KeyError):
        load_file(out, "0" * 64)


def test_merged_exports_refer_to_the_files_once(dm, files, tmp_path):
    model, net = files
    for name in (model, net, model):
        with dm.session() as s:
            s["params"] = [dm.store_file(name)]
    out = tmp_path / "merged.h5"
    report = export_hdf5(dm, out, merged=True)
    assert report.merged == ["params"]
    back = load_hdf5(out)
    assert [f.name for f in back["merged"]["params"]] == [
        "model.param",
        "net.param",
        "model.param",
    ]
    with h5py.File(out, "r") as f:
        assert len(f["files"]) == 2


def test_a_safe_manager_exports_stored_files(files, tmp_path):
    model, net = files
    fill(DataManager("sweep", str(tmp_path)), model, net, sessions=1)
    out = tmp_path / "safe.h5"
    export_hdf5(DataManager("sweep", str(tmp_path), safe=True), out)
    (values,) = load_hdf5(out)["sessions"].values()
    assert load_file(out, values["model"]) == model.read_bytes()


def test_a_sweep_with_parameter_files_exports_its_results(dm, files, tmp_path):
    model, _net = files

    def echo(param, x):
        return {"param": param, "x": x}

    run_tasks(dm, echo, [(model, 1), (model, 2)], processes=1, progress=False)
    out = tmp_path / "sweep.h5"
    export_hdf5(dm, out)
    results = [v for values in load_hdf5(out)["sessions"].values() for v in values.values()]
    assert sorted(r["x"] for r in results) == [1, 2]
    assert {load_file(out, r["param"]) for r in results} == {model.read_bytes()}


def test_a_damaged_stored_copy_stops_the_export(dm, files, tmp_path):
    model, net = files
    fill(dm, model, net, sessions=1)
    copy = os.fspath(dm.store_file(model))
    os.chmod(copy, 0o644)
    with open(copy, "r+b") as f:
        f.write(b"X")
    out = tmp_path / "damaged.h5"
    with pytest.raises(ExportError, match="does not match its hash"):
        export_hdf5(dm, out)
    assert not out.exists()


def test_a_value_naming_no_exported_file_is_refused(dm, files, tmp_path):
    model, net = files
    fill(dm, model, net, sessions=1)
    out = tmp_path / "out.h5"
    export_hdf5(dm, out)
    with h5py.File(out, "r+") as f:
        del f["files"][hashlib.sha256(model.read_bytes()).hexdigest()]
    with pytest.raises(ExportFormatError, match="files"):
        load_hdf5(out)


def test_load_hdf5_puts_the_files_in_a_data_directory_on_request(dm, files, tmp_path):
    model, net = files
    fill(dm, model, net, sessions=2)
    out = tmp_path / "out.h5"
    export_hdf5(dm, out)
    elsewhere = DataManager("restored", str(tmp_path / "elsewhere"))
    sessions = load_hdf5(out, files=elsewhere.basepath)["sessions"]
    store = os.path.join(elsewhere.basepath, ".files")
    assert sorted(os.listdir(store)) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest()[:2] for p in (model, net)
    )
    for values in sessions.values():
        value = values["model"]
        assert value.path.startswith(store + os.sep)
        with open(value, "rb") as f:
            assert f.read() == model.read_bytes()
    # Bound there, the values are items a sweep in that directory runs from.
    values = next(iter(sessions.values()))

    def size(param):
        return os.path.getsize(param)

    run_tasks(elsewhere, size, [values["model"], values["inputs"]["net"]], processes=1)
    assert sorted(r for _item, r in task_results(elsewhere, size)) == sorted(
        p.stat().st_size for p in (model, net)
    )
    # Loading again stores nothing twice.
    load_hdf5(out, files=elsewhere.basepath)
    assert len([p for p in Path(store).glob("??/*")]) == 2


def test_a_crafted_file_name_is_refused(dm, files, tmp_path):
    model, net = files
    fill(dm, model, net, sessions=1)
    out = tmp_path / "out.h5"
    export_hdf5(dm, out)
    with h5py.File(out, "r+") as f:
        f["files"]["..%2F..%2Fescape"] = [1, 2, 3]
    with pytest.raises(ExportFormatError, match="a sha256 as name"):
        load_hdf5(out, files=tmp_path / "restored")
    assert not list((tmp_path / "restored").glob("**/escape"))


def test_a_value_left_out_leaves_none_of_its_files(dm, files, tmp_path):
    model, net = files
    with dm.session() as s:
        s["kept"] = dm.store_file(net)
        s["mixed"] = [dm.store_file(model), object]  # a class: the schema cannot hold it
    out = tmp_path / "skip.h5"
    report = export_hdf5(dm, out, on_unsupported="skip")
    assert [key for _session, key, _type in report.skipped] == ["mixed"]
    with h5py.File(out, "r") as f:
        assert list(f["files"]) == [hashlib.sha256(net.read_bytes()).hexdigest()]
