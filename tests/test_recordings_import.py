"""Import of legacy recordings into a DataManager session."""

from __future__ import annotations

import inspect
import pydoc
import shutil
from pathlib import Path

import numpy as np
import pytest

from datamanager import DataManager
from datamanager.importer import default_session_name, import_recordings
from datamanager.recordings import Recording, load_recording, write_neuron_dat

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "lab"
    (src / "cells").mkdir(parents=True)
    for p in DATA.iterdir():
        if p.suffix == ".atf":
            shutil.copy(p, src / "cells" / p.name)
        elif p.suffix == ".dat":
            shutil.copy(p, src / p.name)
    (src / "notes.txt").write_text("not a recording\n")
    (src / "broken.dat").write_text("label:v\n10\n0\t1\n")
    (src / "multi.dat").write_text("1\n2\n\n3\n\n")
    return src


def test_import_folder_twice(dm: DataManager, folder: Path) -> None:
    first = dm.import_recordings(str(folder))
    assert first.session == default_session_name(folder)
    assert sorted(first.imported) == sorted(
        [f"cells/{p.name}" for p in DATA.glob("*.atf")]
        + [p.name for p in DATA.glob("*.dat")]
        + ["multi.dat"]
    )
    assert first.skipped == ["notes.txt"]
    assert list(first.failed) == ["broken.dat"]
    assert "broken.dat, line 4" in first.failed["broken.dat"]
    assert "truncated" in first.failed["broken.dat"]
    # The values are the Recordings themselves and collate like any result.
    cells = dm.get_matching("cells/")
    assert sorted(cells) == sorted(f"cells/{p.name}" for p in DATA.glob("*.atf"))
    for key, by_session in cells.items():
        [rec] = by_session.values()
        assert isinstance(rec, Recording)
        assert rec.attrs["source"] == key and len(rec.attrs["sha256"]) == 64
        assert np.array_equal(rec.data, load_recording(folder / key)[0].data)
    assert set(dm.get_matching("multi.dat")) == {"multi.dat#0", "multi.dat#1"}
    meta = dm.session(first.session).metadata
    assert meta["source_folder"] == str(folder)
    count = dm.itemcount()
    # Same folder again: nothing new.
    second = dm.import_recordings(folder)
    assert second.session == first.session
    assert second.imported == [] and sorted(second.unchanged) == sorted(first.imported)
    assert dm.itemcount() == count
    # A changed file is imported again, the others stay.
    write_neuron_dat(folder / "nrn_docs_gsyn.dat", [0.0, 1.0], [2.0, 3.0], label="g")
    third = import_recordings(dm, folder)
    assert third.imported == ["nrn_docs_gsyn.dat"]
    [rec] = dm.get("nrn_docs_gsyn.dat").values()
    assert rec.data.tolist() == [[0, 2], [1, 3]]


def test_import_paths_and_named_session(dm: DataManager, folder: Path) -> None:
    files = [folder / "nrn_docs_iclamp.dat", folder / "cells"]
    summary = dm.import_recordings(files, session_name="legacy")
    assert summary.session == "legacy"
    assert "nrn_docs_iclamp.dat" in summary.imported
    assert any(k.startswith("cells/") for k in summary.imported)
    with pytest.raises(FileNotFoundError):
        dm.import_recordings(folder / "missing")


def test_safe_mode_reads_imported_recordings(tmp_path: Path, folder: Path) -> None:
    DataManager("lab", str(tmp_path / "dm")).import_recordings(folder)
    safe = DataManager("lab", str(tmp_path / "dm"), safe=True)
    values = safe.get_flat_matching("")
    assert values and all(isinstance(v, Recording) for v in values)


def test_method_shows_the_function_signature() -> None:
    function = list(inspect.signature(import_recordings).parameters.values())
    method = list(inspect.signature(DataManager.import_recordings).parameters.values())
    assert [(p.name, p.kind, p.default) for p in function[1:]] == [
        (p.name, p.kind, p.default) for p in method[1:]
    ]  # the method is the function, with the DataManager as ``self``
    assert "ImportSummary" in pydoc.render_doc(DataManager.import_recordings)
