"""The ``datamanager`` command line: main(argv) and one real subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datamanager import DataManager, Recording
from datamanager.cli import main
from datamanager.hdf5 import load_hdf5

from conftest import run_python

DATA = Path(__file__).resolve().parent / "data"
COMMANDS = ["ls", "keys", "show", "export", "verify", "import", "info"]


class Secret:
    """A class safe mode must refuse to unpickle."""

    def __init__(self, x: int) -> None:
        self.x = x


class Grid:
    """Not a Recording, though it has a shape and a ``columns`` attribute."""

    shape = (2, 3)
    columns = 3

    def __repr__(self) -> str:
        return "Grid(2x3)"


@pytest.fixture
def datadir(dm: DataManager) -> str:
    for i in range(3):
        with dm.session() as s:
            s["rate"] = [float(i), 2.0 * i]
            s["v"] = np.arange(200_000.0) + i
            s["params"] = {"i": i}
    return dm.basepath


def test_ls(datadir: str, capsys: pytest.CaptureFixture[str]):
    assert main(["ls", datadir]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "created", "(UTC)", "host", "keys", "size"]
    assert len(lines) == 4 and all(" 3 " in line for line in lines[1:])


def test_show_tells_which_mixes_of_arrays_get_merged_refuses(tmp_path, capsys):
    dm = DataManager("sweep", str(tmp_path))
    for name, value in [("a", np.arange(2)), ("b", np.array([0.5])), ("c", np.array(["x"]))]:
        with dm.session(name) as s:
            s["numbers"] = value
            if name != "c":
                s["promoted"] = value
    assert main(["show", dm.basepath, "promoted"]) == 0
    assert "merged: ndarray[float64] of 3 rows if shapes agree" in capsys.readouterr().out
    assert main(["show", dm.basepath, "numbers"]) == 0
    out = capsys.readouterr().out
    assert "merged: refused: cannot merge key 'numbers'" in out
    assert "'c'" in out and "<U1" in out


def test_keys_with_and_without_prefix(datadir: str, capsys: pytest.CaptureFixture[str]):
    assert main(["keys", datadir]) == 0
    assert capsys.readouterr().out.split() == ["params", "rate", "v"]
    assert main(["keys", datadir, "ra"]) == 0
    assert capsys.readouterr().out.split() == ["rate"]


def test_show_summarises_without_dumping(datadir: str, capsys: pytest.CaptureFixture[str]):
    assert main(["show", datadir, "v"]) == 0
    out = capsys.readouterr().out
    assert "held by 3 session(s)" in out and "(200000,)" in out
    assert "merged: ndarray[float64] of shape (600000,)" in out
    assert len(out) < 2000
    assert main(["show", datadir, "rate"]) == 0
    assert "merged: list of 6 items" in capsys.readouterr().out
    assert main(["show", datadir, "params"]) == 0
    assert "not mergeable" in capsys.readouterr().out


def test_show_summarises_tables_and_array_collections_in_safe_mode(
    dm: DataManager, capsys: pytest.CaptureFixture[str]
):
    import pandas as pd

    n = 100_000
    frame = pd.DataFrame(
        {"t": np.arange(n) * 0.5, "cell": pd.Categorical(["a"] * n), "name": ["ab"] * n}
    )
    for _ in range(2):
        with dm.session() as s:
            s["table"], s["rate"] = frame, pd.Series(np.arange(3), name="rate")
            s["arrays"] = {"t": np.arange(n, dtype=np.float32), "v": np.zeros((2, 3))}
            s["records"] = np.zeros(3, dtype=[("id", "<i4"), ("at", "M8[ms]")])

    def show(key: str) -> list[str]:
        assert main(["show", dm.basepath, key]) == 0  # safe: the command line's default
        out = capsys.readouterr().out
        assert len(out) < 1000 and "0.5" not in out  # a summary, never the rows
        return out.splitlines()

    lines = show("table")
    assert len(lines) == 5 and lines[2].split()[1:3] == ["DataFrame", "(100000,"]
    assert lines[2].endswith("t float64, cell category, name " + str(frame["name"].dtype))
    assert lines[4] == "merged: DataFrame of 200000 rows, outer index level 'session'"
    lines = show("rate")
    assert lines[2].split()[1:] == ["Series", "(3,)", "int64,", "name", "'rate'"]
    assert lines[4] == "merged: Series of 6 rows, outer index level 'session'"
    assert show("arrays")[2].endswith("dict  len 2  t: float32[100000], v: float64[2, 3]")
    lines = show("records")
    assert lines[2].endswith("ndarray[structured]  (3,)   id int32, at datetime64[ms]")
    assert lines[4] == "merged: ndarray[structured] of shape (6,)"


def test_show_tells_a_recording_from_lookalikes(
    dm: DataManager, capsys: pytest.CaptureFixture[str]
):
    with dm.session() as s:
        s["rec"] = Recording(np.zeros((4, 2)), ["t", "v"])
        s["grid"] = Grid()
    assert main(["show", dm.basepath, "rec"]) == 0
    out = capsys.readouterr().out
    assert "Recording" in out and "(4, 2)" in out and "t, v" in out
    assert main(["--unsafe", "show", dm.basepath, "grid"]) == 0
    assert "Grid(2x3)" in capsys.readouterr().out


def test_show_missing_key_is_an_error(datadir: str, capsys: pytest.CaptureFixture[str]):
    assert main(["show", datadir, "nope"]) == 1
    assert capsys.readouterr().err == "Error: no session holds the key 'nope'\n"


def test_export_and_force(datadir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "x.h5"
    assert main(["export", datadir, str(out), "--merged", "--match", "ra"]) == 0
    assert "3 sessions, 3 values" in capsys.readouterr().out
    loaded = load_hdf5(out)
    assert loaded["merged"]["rate"] == [0.0, 0.0, 1.0, 2.0, 2.0, 4.0]
    assert main(["export", datadir, str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["export", datadir, str(out), "--force", "--compression", "lzf"]) == 0
    assert set(next(iter(load_hdf5(out)["sessions"].values()))) == {"rate", "v", "params"}


def test_safe_by_default_unsafe_on_request(
    dm: DataManager, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    with dm.session() as s:
        s["obj"] = Secret(1)
    out = str(tmp_path / "o.h5")
    assert main(["show", dm.basepath, "obj"]) == 1
    assert "safe mode refuses" in capsys.readouterr().err
    assert main(["--unsafe", "show", dm.basepath, "obj"]) == 0
    assert main(["show", dm.basepath, "obj", "--unsafe"]) == 0
    capsys.readouterr()
    assert main(["export", dm.basepath, out, "--unsafe"]) == 1
    assert "Secret" in capsys.readouterr().err
    assert main(["export", dm.basepath, out, "--unsafe", "--on-unsupported", "skip"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_verify_reports_problems_with_their_file(datadir: str, capsys: pytest.CaptureFixture[str]):
    assert main(["verify", datadir]) == 0
    assert "no problems" in capsys.readouterr().out
    reader = next(DataManager.from_path(datadir).iter_sessions())
    with reader:
        side_files = [Path(path) for _key, path, _size in reader.side_files()]
    assert side_files, "the 1.6 MB arrays should live in side files"
    side_files[0].write_bytes(b"truncated")
    assert main(["verify", datadir]) == 1
    captured = capsys.readouterr()
    assert side_files[0].name in captured.out
    assert captured.err.startswith("Error: 1 problem")


def test_missing_datadir_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["ls", str(tmp_path / "none.data")]) == 1
    assert capsys.readouterr().err.startswith("Error: no such data directory")
    assert main(["ls", str(tmp_path)]) == 1  # not a <name>.data directory
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["export", "x.data", "o.h5", "--compression", "zip"]) == 2
    capsys.readouterr()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"datamanager {command}" in out


def sample(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"sample recording {name} not found")
    return path


def test_info(capsys: pytest.CaptureFixture[str]):
    assert main(["info", str(sample("nrn_docs_gsyn.dat"))]) == 0
    out = capsys.readouterr().out
    assert "layout: clipboard" in out and "rows: 801, columns: 2" in out
    assert main(["info", str(sample("pyabf_model_vc_ramp.atf"))]) == 0
    out = capsys.readouterr().out
    assert "layout: atf" in out and "header:" in out
    assert main(["info", str(DATA / "SOURCES.md")]) == 1
    assert "expected an ATF signature" in capsys.readouterr().err


def test_import_then_export_recordings(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    folder = tmp_path / "cells"
    folder.mkdir()
    for name in ["nrn_docs_gsyn.dat", "pyabf_model_vc_ramp.atf"]:
        shutil.copy(sample(name), folder / name)
    datadir = str(tmp_path / "cells.data")
    assert main(["import", str(folder), datadir]) == 0
    assert "2 imported" in capsys.readouterr().out
    assert main(["export", datadir, str(tmp_path / "cells.h5")]) == 0
    (session,) = load_hdf5(tmp_path / "cells.h5")["sessions"].values()
    dm = DataManager.from_path(datadir)
    for key, value in session.items():
        (stored,) = dm.get(key).values()
        assert isinstance(value, Recording) and value == stored


def test_console_entry_in_a_subprocess(datadir: str, tmp_path: Path):
    out = tmp_path / "sub.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "datamanager", "export", datadir, str(out), "--merged"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote ") and out.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "datamanager", "keys"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "usage:" in proc.stderr


# Stores, merges and shows plain values: telling a table apart must not need pandas.
PLAIN_VALUES = """
import sys
from datamanager import DataManager
from datamanager.cli import main
dm = DataManager("sweep", sys.argv[1])
for name in ("a", "b"):
    with dm.session(name) as s:
        s["x"], s["d"] = [1, 2], {"t": [0.5]}
assert dm.get_merged("x") == [1, 2, 1, 2]
assert dm.get_merged_matching("x") == [1, 2, 1, 2]
assert main(["show", dm.basepath, "x"]) == 0 and main(["show", dm.basepath, "d"]) == 0
assert "pandas" not in sys.modules, "imported pandas"
"""


def test_plain_values_are_stored_merged_and_shown_without_importing_pandas(tmp_path):
    proc = run_python(PLAIN_VALUES, str(tmp_path))
    assert "list" in proc.stdout and "dict" in proc.stdout
