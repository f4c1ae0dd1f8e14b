"""Wrong input gets a clear answer: typo'd paths and names, bad arguments, warnings, CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from datamanager import (
    DataManager,
    DataManagerWarning,
    InvalidNameError,
    RecordingFormatError,
    Session,
    UnsafeValueError,
    load_recording,
    run_tasks,
    task_failures,
    task_results,
)
from datamanager.cli import main

READS = {
    "keys": lambda dm: dm.keys(),
    "get": lambda dm: dm.get("rate"),
    "get_merged": lambda dm: dm.get_merged("rate"),
    "get_matching": lambda dm: dm.get_matching("ra"),
    "items": lambda dm: dm.items(),
    "iteritems": lambda dm: list(dm.iteritems()),
    "itemcount": lambda dm: dm.itemcount(),
    "sessions": lambda dm: dm.sessions(),
    "iter_sessions": lambda dm: list(dm.iter_sessions()),
    "verify": lambda dm: dm.verify(),
}


class Secret:
    """A class safe mode must refuse to unpickle."""

    def __init__(self, x: int) -> None:
        self.x = x


# -- a typo'd path is not an empty data set ----------------------------------


@pytest.mark.parametrize("read", READS)
def test_missing_datapath_raises_naming_it(read: str, tmp_path: Path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        READS[read](DataManager("sweep", missing))
    with pytest.raises(FileNotFoundError, match=r"nope\.data"):
        READS[read](DataManager.from_path(os.path.join(missing, "nope.data")))
    assert not os.path.exists(missing)  # reading created nothing


def test_from_path_of_a_missing_data_directory_raises(tmp_path: Path):
    # The path of a data directory, typo'd, in a folder that exists.
    dm = DataManager.from_path(str(tmp_path / "sweeep.data"))
    with pytest.raises(FileNotFoundError, match=r"sweeep\.data"):
        dm.keys()
    with pytest.raises(FileNotFoundError, match=r"sweeep\.data"):
        dm.verify()
    with dm.session() as s:  # writing creates it, as before
        s["rate"] = [1.0]
    assert dm.get_merged("rate") == [1.0]


@pytest.mark.parametrize(
    "name, why",
    [
        ("", "must not be empty"),
        ("x.data", "must not end with '.data'"),
        (os.path.abspath("elsewhere"), "relative to the datapath"),
        ("~/x", "relative to the datapath"),
        ("a/../b", "contains '..'"),
        ("a//b", "must not be empty"),
        ("a/.hidden", "must not start with '.'"),
    ],
)
def test_data_set_names_are_checked_at_once(tmp_path: Path, name: str, why: str):
    with pytest.raises(InvalidNameError, match=f"invalid DataManager name .*{re.escape(why)}"):
        DataManager(name, str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_nested_data_set_names_stay_allowed(tmp_path: Path):
    dm = DataManager("test/testing", str(tmp_path))
    with dm.session("run") as s:
        s["a"] = 1
    assert os.path.isdir(tmp_path / "test" / "testing.data") and dm.get("a") == {"run": 1}


def test_a_misspelt_journal_mode_is_refused_before_any_write(tmp_path: Path):
    for make in (
        lambda: DataManager("sweep", str(tmp_path), journal_mode="wall"),
        lambda: Session(str(tmp_path / "s.sqlite"), journal_mode="wall"),
    ):
        with pytest.raises(ValueError, match=r"journal_mode must be 'wal' or 'delete'.*'wall'"):
            make()
    assert DataManager("sweep", str(tmp_path), journal_mode="DELETE").journal_mode == "DELETE"


def test_not_yet_written_data_directory_reads_empty(dm: DataManager):
    # Brian's behaviour: the datapath exists, <name>.data is not written yet.
    assert dm.keys() == [] and dm.get_merged("rate") == [] and dm.verify() == []
    assert not os.path.exists(dm.basepath)


def square(x: int) -> int:
    return x * x


def picky(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x * x


def test_run_tasks_still_creates_a_missing_data_directory(tmp_path: Path):
    dm = DataManager.from_path(str(tmp_path / "new" / "sweep.data"))
    assert run_tasks(dm, square, range(3), processes=1, progress=False).done == 3
    assert sorted(task_results(dm, square)) == [(0, 0), (1, 1), (2, 4)]


# -- bad arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        "get",
        "get_merged",
        "get_matching",
        "get_matching_keys",
        "get_merged_matching",
        "get_flat_matching",
    ],
)
def test_non_str_key_or_match_is_a_type_error(call: str, dm: DataManager):
    os.makedirs(dm.basepath)  # an existing data directory without sessions yet
    with pytest.raises(TypeError, match="str"):
        getattr(dm, call)(3)
    with dm.session() as s:
        s["rate"] = [1.0]
    with pytest.raises(TypeError, match="str"):
        getattr(dm, call)(3)


def test_unknown_sweep_names_the_sweeps_stored(dm: DataManager):
    run_tasks(dm, picky, range(3), processes=1, progress=False)
    run_tasks(dm, picky, [2], processes=1, progress=False, name="broken")  # failures only
    for lookup in (task_results, task_failures):
        with pytest.raises(KeyError, match=r"'pickyy'.*'broken', 'picky'"):
            lookup(dm, "pickyy")
    assert task_results(dm, "broken") == []  # stored nothing but a failure: no error
    assert sorted(task_results(dm, picky)) == [(0, 0), (1, 1)]
    assert [f.item for f in task_failures(dm, "broken")] == [2]
    other = DataManager("other", os.path.dirname(dm.basepath))
    os.makedirs(other.basepath)
    with pytest.raises(KeyError, match="sweeps stored there: none"):
        task_results(other, picky)


# -- warnings point at the caller, and say things once ----------------------------


@pytest.fixture
def damaged(dm: DataManager) -> DataManager:
    with dm.session("good") as s:
        s["rate"] = [1.0]
    Path(dm.basepath, "bad.sqlite").write_bytes(b"not a database, whatever the name " * 64)
    return dm


def test_stray_file_warnings_name_the_callers_line(dm: DataManager):
    os.makedirs(os.path.join(dm.basepath, "junk"))  # a folder is never a session
    for read in ("keys", "items", "iter_sessions"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            READS[read](dm)
        assert [w.category for w in caught] == [DataManagerWarning], read
        assert caught[0].filename == __file__, f"{read} warns from {caught[0].filename}"


@pytest.mark.parametrize("read", [r for r in READS if r != "verify"])
def test_warnings_name_the_callers_line_once(read: str, damaged: DataManager):
    bad = os.path.join(damaged.basepath, "bad.sqlite")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        READS[read](damaged)
    assert [w.category for w in caught] == [DataManagerWarning]
    message = str(caught[0].message)
    assert caught[0].filename == __file__, f"{read} warns from {caught[0].filename}"
    assert message.startswith(f"skipping corrupt session {bad}: ")
    assert message.count("bad.sqlite") == 1, message


def test_verify_reports_without_warning(damaged: DataManager):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (problem,) = damaged.verify()
    assert problem.path.endswith("bad.sqlite")


# -- the command line ------------------------------------------------------------


def test_command_line_prints_warnings_as_one_line_each(damaged: DataManager):
    proc = subprocess.run(
        [sys.executable, "-m", "datamanager", "keys", damaged.basepath],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout == "rate\n"
    bad = os.path.join(damaged.basepath, "bad.sqlite")
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"warning: skipping corrupt session {bad}: "), proc.stderr


def test_command_line_warnings_in_process(damaged: DataManager, capsys: pytest.CaptureFixture):
    assert main(["ls", damaged.basepath]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: skipping corrupt session ")


def test_hints_name_the_flag_in_the_cli_and_the_argument_in_python(
    dm: DataManager, tmp_path: Path, capsys: pytest.CaptureFixture
):
    with dm.session() as s:
        s["obj"] = Secret(1)
    with pytest.raises(UnsafeValueError, match="safe=False"):
        DataManager.from_path(dm.basepath, safe=True).get("obj")
    assert main(["show", dm.basepath, "obj"]) == 1
    err = capsys.readouterr().err
    assert "--unsafe" in err and "safe=False" not in err
    assert main(["--unsafe", "export", dm.basepath, str(tmp_path / "o.h5")]) == 1
    err = capsys.readouterr().err
    assert "--on-unsupported" in err and "on_unsupported=" not in err


def test_bare_command_prints_help(capsys: pytest.CaptureFixture):
    assert main([]) == 2  # a usage error, as a missing command is
    err = capsys.readouterr().err
    assert err.startswith("usage: datamanager")
    assert "list the sessions as a table" in err and "example:" in err


# -- recordings ------------------------------------------------------------------


def test_load_recording_of_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(RecordingFormatError, match="expected a recording file, found a dir"):
        load_recording(tmp_path)
    assert main(["info", str(tmp_path)]) == 1
    assert "found a directory" in capsys.readouterr().err


def test_importing_a_folder_without_recordings_creates_nothing(
    dm: DataManager, tmp_path: Path, capsys: pytest.CaptureFixture
):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no recording here\n")
    summary = dm.import_recordings(folder)
    assert summary.imported == [] and summary.skipped == ["readme.txt"]
    assert not os.path.exists(dm.basepath)
    datadir = str(tmp_path / "cells.data")
    assert main(["import", str(folder), datadir]) == 1
    assert "no recordings under" in capsys.readouterr().err
    assert not os.path.exists(datadir)
