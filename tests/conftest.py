"""Shared fixtures: data directories, sample data, worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datamanager import DataManager

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"
#: What every session records about the run that wrote it.
METADATA_FIELDS = (
    "created",
    "user",
    "host",
    "pid",
    "python",
    "argv",
    "cwd",
    "numpy_version",
    "datamanager_version",
    "git_commit",
    "git_dirty",
    "git_status",
    "git_diff_status",
    "git_diff_sha256",
    "git_diff_size",
    "git_diff_stored",
    "ipython_history_sha256",
    "ipython_history_cells",
)


def stress_size(full: int, ci: int) -> int:
    """Size of a stress test: DATAMANAGER_STRESS overrides, CI=true shrinks."""
    if os.environ.get("DATAMANAGER_STRESS"):
        return int(os.environ["DATAMANAGER_STRESS"])
    return ci if IN_CI else full


@pytest.fixture
def dm(tmp_path: Path) -> DataManager:
    return DataManager("sweep", str(tmp_path))


@pytest.fixture
def shared_data() -> Path:
    """The sample recordings beside the repository (skip if absent, fail in CI)."""
    if not SHARED_DATA.is_dir():
        if IN_CI:
            pytest.fail(f"sample data missing at {SHARED_DATA} (CI=true)")
        pytest.skip(f"sample data not found at {SHARED_DATA}")
    return SHARED_DATA


def run_python(
    code: str, *args: str, timeout: float = 120, **kwargs
) -> subprocess.CompletedProcess:
    """Run *code* in a fresh interpreter; fail the test with its stderr if it fails."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def start_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start *code* in a fresh interpreter with stdout piped (the caller reaps it)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def can_mount_read_only(tmp_path: Path) -> bool:
    """Whether this process may make a read-only bind mount in a private namespace."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("unshare") is None:
        return False
    cmd = f"mount --bind -o ro {probe} {probe} && ! touch {probe}/x 2>/dev/null"
    return subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True).returncode == 0


def interruptible() -> None:
    """``preexec_fn`` for a child that a test stops with Ctrl-C (SIGINT).

    A shell starts background jobs with SIGINT ignored, and the child would
    inherit that, so the test would depend on how pytest was started.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
