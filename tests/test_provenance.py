"""What a session records about the code that wrote it: git diff, IPython history.

Real git repositories in temporary folders and real writer processes whose
script lives in them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from datamanager import DataManager, DataManagerWarning
from datamanager._format import stored_path
from datamanager.cli import main
from datamanager.provenance import CODE_IDENTITY, DIFF_CAP, HISTORY_CAP

DATA = Path(__file__).resolve().parent / "data"

WRITER = """
import sys
from datamanager import DataManager
from datamanager.tasks import run_tasks

def double(x):
    return 2 * x

if __name__ == "__main__":
    dm = DataManager("sweep", sys.argv[1])
    for name in ("a", "b"):
        with dm.session(name) as s:
            s["x"] = 1
    run_tasks(dm, double, range(4), processes=2, progress=False, index=False)
"""


ONE_SESSION = """
import sys
from datamanager import DataManager
for name in sys.argv[2:]:
    with DataManager("sweep", sys.argv[1]).session(name) as s:
        s["x"] = 1
"""


def git(repo: Path, *args: str) -> str:
    who = ["-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    done = subprocess.run(
        ["git", "-C", str(repo), *who, *args], check=True, capture_output=True, text=True
    )
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with a committed writer script, a text file and a binary file."""
    repo = tmp_path / "repo"
    (repo / "model").mkdir(parents=True)
    (repo / "sweep.py").write_text(WRITER)
    (repo / "one.py").write_text(ONE_SESSION)
    (repo / "model" / "params.txt").write_text("tau = 10\nv_rest = -70\n")
    (repo / "model" / "weights.bin").write_bytes(bytes(range(256)) * 4)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "model")
    return repo


def run_writer(repo: Path, data: Path) -> DataManager:
    """Run the writer script of *repo*, from inside the repository."""
    script = str(repo / "sweep.py")
    subprocess.run([sys.executable, script, str(data)], check=True, cwd=repo, timeout=120)
    return DataManager("sweep", str(data))


def tracked_files(repo: Path) -> dict[str, bytes]:
    return {name: (repo / name).read_bytes() for name in git(repo, "ls-files").split()}


def test_clean_code_records_its_commit_and_no_diff(repo, tmp_path):
    dm = run_writer(repo, tmp_path / "data")
    frame = dm.sessions()
    assert len(frame) == 4  # two named sessions and the two workers' sessions
    assert set(frame["git_commit"]) == {git(repo, "rev-parse", "HEAD").strip()}
    assert not frame["git_dirty"].any()
    for column in ("git_diff_sha256", "git_diff_size", "git_diff_status"):
        assert frame[column].isna().all(), column
    assert not frame["git_diff_stored"].any()
    assert not (Path(dm.basepath) / ".files").exists()


def test_dirty_code_stores_its_diff_once_and_the_diff_rebuilds_the_tree(repo, tmp_path):
    commit = git(repo, "rev-parse", "HEAD").strip()
    (repo / "model" / "params.txt").write_text("tau = 12\nv_rest = -70\n")
    (repo / "model" / "weights.bin").write_bytes(bytes(range(255, -1, -1)) * 4)
    (repo / "model" / "new.txt").write_text("staged, not committed\n")
    git(repo, "add", "model/new.txt")
    (repo / "untracked.txt").write_text("no part of the code\n")
    dm = run_writer(repo, tmp_path / "data")
    frame = dm.sessions()  # the store is no session, nor a stray to warn about
    assert dm.verify() == []
    assert len(frame) == 4 and frame["git_dirty"].all() and frame["git_diff_stored"].all()
    assert set(frame["git_commit"]) == {commit} and set(frame["git_diff_status"]) == {"ok"}
    # Every session, the forked workers' too, names the one stored diff.
    (sha256,) = set(frame["git_diff_sha256"])
    stored = Path(stored_path(dm.basepath, sha256))
    diff = stored.read_bytes()
    assert hashlib.sha256(diff).hexdigest() == sha256
    assert set(frame["git_diff_size"]) == {len(diff)}
    assert not stat.S_IMODE(stored.stat().st_mode) & 0o222  # read-only
    in_store = [p for p in (Path(dm.basepath) / ".files").rglob("*") if p.is_file()]
    assert in_store == [stored]
    assert b"untracked" not in diff
    # The commit plus the stored diff is the dirty tree, binary file included.
    rebuilt = tmp_path / "rebuilt"
    subprocess.run(["git", "clone", "-q", str(repo), str(rebuilt)], check=True)
    git(rebuilt, "checkout", "-q", commit)
    git(rebuilt, "apply", "--index", str(stored))
    assert tracked_files(rebuilt) == tracked_files(repo)
    assert not (rebuilt / "untracked.txt").exists()


COUNTING = """
import sys
from datamanager import DataManager
from datamanager.provenance import git_diff, git_state
for name in sys.argv[2:]:
    with DataManager("sweep", sys.argv[1]).session(name) as s:
        s["y"] = 2
print(git_state.cache_info().misses, git_diff.cache_info().misses)
"""


def test_git_is_asked_once_per_process_and_a_reopened_session_keeps_its_record(repo, tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, "one.py", str(data), "old"], check=True, cwd=repo)
    (repo / "model" / "params.txt").write_text("tau = 12\n")
    (repo / "counting.py").write_text(COUNTING)
    store = Path(DataManager("sweep", str(data)).basepath) / ".files"
    for names in (["old"], ["old", "new1", "new2"]):
        run = [sys.executable, "counting.py", str(data), *names]
        done = subprocess.run(run, check=True, cwd=repo, capture_output=True, text=True)
        # Reopening a session records (and stores) nothing about this process.
        assert store.exists() == (names != ["old"])
    assert done.stdout.split() == ["1", "1"]  # one git status, one git diff
    frame = DataManager("sweep", str(data)).sessions().set_index("name")
    # The session made from clean code says so, though dirty code wrote to it later.
    assert not frame.loc["old", "git_dirty"] and frame.loc["new1", "git_dirty"]
    assert frame["git_diff_sha256"].isna()["old"]
    (sha256,) = set(frame.loc[["new1", "new2"], "git_diff_sha256"])
    assert [p.name for p in store.rglob("*") if p.is_file()] == [sha256[2:]]


def test_sessions_show_the_same_code_identity_with_and_without_the_index(repo, tmp_path):
    (repo / "model" / "params.txt").write_text("tau = 12\n")
    dm = run_writer(repo, tmp_path / "data")
    columns = ["name", "git_commit", "git_dirty", "git_diff_sha256", "git_diff_size"]
    columns += ["datamanager_version", "python", "ipython_history_sha256"]
    assert list(dm.sessions().columns[:6]) == ["name", *CODE_IDENTITY]
    before = dm.sessions()[columns]
    assert before["git_diff_sha256"].notna().all()
    dm.build_index()
    after = DataManager("sweep", str(tmp_path / "data")).sessions()[columns]
    assert before.to_dict("records") == after.to_dict("records")


# -- IPython -----------------------------------------------------------------------------

IPYTHON_WRITER = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
cells = json.loads(sys.stdin.read())
# A kernel runs each cell as its history's next entry.
for cell in cells:
    shell.run_cell(cell, store_history=True).raise_error()
shell.run_cell(
    "from datamanager import DataManager\\n"
    f"with DataManager('sweep', {sys.argv[1]!r}).session('nb') as s:\\n"
    "    s['rate'] = rate\\n",
    store_history=True,
).raise_error()
"""


def run_ipython(data: Path, cells: list[str], cwd: Path) -> None:
    """Run *cells* in an IPython shell, then a cell that stores ``rate`` in a session."""
    run = [sys.executable, "-c", IPYTHON_WRITER, str(data)]
    env = {**os.environ, "IPYTHONDIR": str(cwd / "ipython")}  # its history database
    done = subprocess.run(
        run, input=json.dumps(cells), capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )
    assert done.returncode == 0, done.stderr


def test_an_ipython_kernel_records_its_newest_input_cells_within_the_cap(tmp_path):
    pytest.importorskip("IPython")
    data = tmp_path / "data"
    cell_size = 50_000
    cells = [f"x{i} = {i}  # " + "p" * cell_size for i in range(12)]
    cells += ["rate = 2 * 3", "# a comment 'quoted', \u00e9t\u00e9\nrate += 1", "print(rate)"]
    cells.append(
        "from datamanager import DataManager\n"
        "from datamanager.tasks import run_tasks\n"
        "def triple(x):\n"
        "    return 3 * x\n"
        f"run_tasks(DataManager('sweep', {str(data)!r}), triple, range(4), processes=2,"
        " progress=False, index=False)"
    )
    run_ipython(data, cells, cwd=tmp_path)
    dm = DataManager("sweep", str(data))
    frame = dm.sessions().set_index("name")
    assert dm.get("rate") == {"nb": 7}

    def history(name: str) -> list[str]:
        sha256 = frame.loc[name, "ipython_history_sha256"]
        return json.loads(Path(stored_path(dm.basepath, sha256)).read_text())

    nb = history("nb")
    assert frame.loc["nb", "ipython_history_cells"] == len(nb)
    # Each cell exactly, the one that wrote the session last ...
    assert nb[:-1] == cells[-len(nb) + 1 :] and "s['rate'] = rate" in nb[-1]
    # ... and the newest cells, as many as fit: the next older one would not.
    kept = sum(len(c.encode()) for c in nb)
    assert kept <= HISTORY_CAP < kept + len(cells[-len(nb)])
    assert 3 < len(nb) < len(cells)
    # The sweep's forked workers name the one history of the cell that ran it.
    workers = frame.index.drop("nb")
    assert len(workers) == 2 and len(set(frame.loc[workers, "ipython_history_sha256"])) == 1
    assert history(workers[0])[-1] == cells[-1]
    assert len([p for p in (Path(dm.basepath) / ".files").rglob("*") if p.is_file()]) == 2


def test_a_plain_process_records_no_history_and_imports_no_ipython(tmp_path):
    code = (
        "import sys\n"
        "from datamanager import DataManager\n"
        "with DataManager('sweep', sys.argv[1]).session('plain') as s:\n"
        "    s['x'] = 1\n"
        "assert 'IPython' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], check=True, timeout=60)
    row = DataManager("sweep", str(tmp_path / "data")).sessions().iloc[0]
    assert row["ipython_history_sha256"] is None and row["ipython_history_cells"] is None


# -- the command line --------------------------------------------------------------------


def test_info_groups_the_sessions_by_the_code_that_wrote_them(repo, tmp_path, capsys):
    data = tmp_path / "data"

    def write(folder: Path, *names: str) -> None:
        run = [sys.executable, str(folder / "one.py"), str(data), *names]
        subprocess.run(run, check=True, cwd=folder, timeout=60)

    write(repo, "clean1", "clean2")
    (repo / "model" / "params.txt").write_text("tau = 12\n")
    write(repo, "edited1", "edited2")
    (repo / "model" / "params.txt").write_text("x\n" * (DIFF_CAP // 2))
    write(repo, "huge")
    whole = subprocess.run(
        ["git", "-C", str(repo), "diff", "--binary", "HEAD"], capture_output=True, check=True
    ).stdout
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "one.py").write_text(ONE_SESSION)
    write(outside, "plain")
    datadir = str(data / "sweep.data")
    frame = DataManager.from_path(datadir).sessions()
    assert list(frame.columns[:6]) == ["name", *CODE_IDENTITY]
    # A diff over the cap is recorded by its size and sha256 only.
    huge = frame.set_index("name").loc["huge"]
    assert len(whole) > DIFF_CAP and huge["git_diff_size"] == len(whole)
    assert huge["git_diff_sha256"] == hashlib.sha256(whole).hexdigest()
    assert not huge["git_diff_stored"]
    assert not os.path.exists(stored_path(datadir, huge["git_diff_sha256"]))

    assert main(["info", datadir]) == 0
    out = capsys.readouterr().out
    assert "sessions: 6\n" in out and "keys: 1\n" in out and "code version 1" not in out
    assert "code versions: 4, 2 with uncommitted changes (3 sessions)" in out

    assert main(["info", datadir, "--provenance"]) == 0
    blocks = capsys.readouterr().out.split("\ncode version ")[1:]
    sessions = [block.split("sessions:\n")[1].split() for block in blocks]
    assert sessions == [["clean1", "clean2"], ["edited1", "edited2"], ["huge"], ["plain"]]
    commit = git(repo, "rev-parse", "HEAD").strip()
    assert all(f"git commit   {commit}\n" in block for block in blocks[:3])
    assert "uncommitted  none\n" in blocks[0] and "diff file" not in blocks[0]
    edited = frame.set_index("name").loc["edited1"]
    diff_file = stored_path(datadir, edited["git_diff_sha256"])
    assert f"diff file    {diff_file}\n" in blocks[1] and os.path.isfile(diff_file)
    assert "diff file    none: the diff was too large to store" in blocks[2]
    assert "uncommitted  unknown (not a git repository)" in blocks[3]
    assert all(f"python       {sys.version.split()[0]}\n" in block for block in blocks)

    assert main(["info", diff_file, "--provenance"]) == 2
    assert "--provenance describes a data directory" in capsys.readouterr().err


def test_info_on_sessions_that_recorded_no_code(tmp_path, capsys):
    legacy = shutil.copytree(DATA / "legacy_shelves" / "gdbm_py3.data", tmp_path / "old.data")
    assert main(["info", str(legacy), "--provenance"]) == 0
    out = capsys.readouterr().out
    assert "code versions: 1, 0 with uncommitted changes (0 sessions)" in out
    assert "uncommitted  unknown (not recorded)\n" in out and "python       unknown\n" in out
    (tmp_path / "empty.data").mkdir()
    assert main(["info", str(tmp_path / "empty.data"), "--provenance"]) == 0
    assert "sessions: 0\n" in capsys.readouterr().out


def test_a_store_that_cannot_be_written_leaves_the_session_made_and_says_why(repo, tmp_path):
    (repo / "model" / "params.txt").write_text("tau = 12\n")
    basepath = tmp_path / "data" / "sweep.data"
    basepath.mkdir(parents=True)
    (basepath / ".files").write_text("a file where the store's folder goes\n")
    subprocess.run([sys.executable, "one.py", str(tmp_path / "data"), "s"], check=True, cwd=repo)
    with pytest.warns(DataManagerWarning, match=r"\.files: not a datamanager session"):
        row = DataManager("sweep", str(tmp_path / "data")).sessions().iloc[0]
    assert row["git_dirty"] and not row["git_diff_stored"] and row["git_diff_sha256"]
    assert row["git_diff_status"].startswith("not stored: ")
