"""What a session records about the code that wrote it: git diff, IPython history.

Real git repositories in temporary folders and real writer processes whose
script lives in them.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from datamanager import DataManager
from datamanager._format import store_path
from datamanager.provenance import DIFF_CAP, HISTORY_CAP

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


def git(repo: Path, *args: str) -> str:
    who = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
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
    frame = dm.sessions()
    assert len(frame) == 4 and frame["git_dirty"].all() and frame["git_diff_stored"].all()
    assert set(frame["git_commit"]) == {commit} and set(frame["git_diff_status"]) == {"ok"}
    # Every session, the forked workers' too, names the one stored diff.
    (sha256,) = set(frame["git_diff_sha256"])
    stored = Path(store_path(dm.basepath, sha256))
    diff = stored.read_bytes()
    assert hashlib.sha256(diff).hexdigest() == sha256 and set(frame["git_diff_size"]) == {
        len(diff)
    }
    assert not stat.S_IMODE(stored.stat().st_mode) & 0o222  # read-only
    assert [p.name for p in (Path(dm.basepath) / ".files").rglob("*") if p.is_file()] == [
        sha256[2:]
    ]
    assert b"untracked" not in diff
    # The commit plus the stored diff is the dirty tree, binary file included.
    rebuilt = tmp_path / "rebuilt"
    subprocess.run(["git", "clone", "-q", str(repo), str(rebuilt)], check=True)
    git(rebuilt, "checkout", "-q", commit)
    git(rebuilt, "apply", "--index", str(stored))
    assert tracked_files(rebuilt) == tracked_files(repo)
    assert not (rebuilt / "untracked.txt").exists()


def test_a_diff_over_the_cap_is_recorded_by_size_and_hash_only(repo, tmp_path):
    lines = "".join(f"row {i} of a large tracked table\n" for i in range(40_000))
    (repo / "model" / "params.txt").write_text(lines)
    dm = run_writer(repo, tmp_path / "data")
    row = dm.sessions().iloc[0]
    whole = subprocess.run(
        ["git", "-C", str(repo), "diff", "--binary", "HEAD"], capture_output=True, check=True
    ).stdout
    assert len(whole) > DIFF_CAP
    assert row["git_diff_size"] == len(whole) and not row["git_diff_stored"]
    assert row["git_diff_sha256"] == hashlib.sha256(whole).hexdigest()
    assert not (Path(dm.basepath) / ".files").exists()


def test_sessions_show_the_same_code_identity_with_and_without_the_index(repo, tmp_path):
    (repo / "model" / "params.txt").write_text("tau = 12\n")
    dm = run_writer(repo, tmp_path / "data")
    columns = ["name", "git_commit", "git_dirty", "git_diff_sha256", "git_diff_size"]
    columns += ["datamanager_version", "python", "ipython_history_sha256"]
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


def test_an_ipython_kernel_records_its_input_history(tmp_path):
    pytest.importorskip("IPython")
    cells = ["rate = 2 * 3", "# a comment 'quoted', été\nrate += 1", "print(rate)"]
    data = tmp_path / "data"
    run_ipython(data, cells, cwd=tmp_path)
    dm = DataManager("sweep", str(data))
    row = dm.sessions().iloc[0]
    assert dm.get("rate") == {"nb": 7}
    history = json.loads(Path(store_path(dm.basepath, row["ipython_history_sha256"])).read_text())
    assert history[:3] == cells and "s['rate'] = rate" in history[3]
    assert row["ipython_history_cells"] == len(history) == 4


def test_the_history_keeps_the_newest_cells_within_the_cap(tmp_path):
    pytest.importorskip("IPython")
    cell_size = 50_000
    cells = [f"x{i} = {i}  # " + "p" * cell_size for i in range(12)] + ["rate = 1"]
    data = tmp_path / "data"
    run_ipython(data, cells, cwd=tmp_path)
    dm = DataManager("sweep", str(data))
    history = json.loads(
        Path(store_path(dm.basepath, dm.sessions().iloc[0]["ipython_history_sha256"])).read_text()
    )
    kept = sum(len(c.encode()) for c in history)
    # The newest cells, as many as fit: the next older one would not.
    assert history[:-1] == cells[-len(history) + 1 :] and "s['rate'] = rate" in history[-1]
    assert kept <= HISTORY_CAP < kept + len(cells[-len(history)])
    assert 3 < len(history) < len(cells)


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


def test_the_store_is_no_session_and_no_stray(repo, tmp_path):
    (repo / "model" / "params.txt").write_text("tau = 12\n")
    dm = run_writer(repo, tmp_path / "data")
    assert (Path(dm.basepath) / ".files").is_dir()
    assert sorted(dm.sessions()["name"])[:2] == ["a", "b"]
    assert dm.verify() == []  # and no warning about it: filterwarnings = error
