"""What a session records about the process that first wrote it.

The record answers "which code, on which machine, with which libraries made
these results?".  It runs at every session creation, so it stays
cheap: package versions come from modules already imported, and the one
``git`` subprocess is run once per process and directory, with a short timeout.
"""

from __future__ import annotations

import functools
import getpass
import os
import platform
import socket
import subprocess
import sys
import time
from typing import Any

__all__ = ["computer_name", "git_state", "imported_versions", "session_metadata"]

#: Seconds a ``git`` subprocess may take before its answer is given up.
GIT_TIMEOUT = 2.0

_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))  # Python >= 3.10


def computer_name() -> str:
    """Return ``<user>.<host>``, the name of this user on this computer."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. in a container
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    name = f"{user}.{platform.node() or 'localhost'}"
    # $USER in another encoding reaches Python as surrogates, which no session
    # name may hold: such bytes become U+FFFD instead.
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def script_directory() -> str:
    """Return the directory of the running script, or the working directory.

    Interactive sessions, ``python -c`` and notebooks have no script file; for
    them the working directory stands in.
    """
    script = sys.argv[0] if sys.argv else ""
    if script and os.path.isfile(script):
        return os.path.dirname(os.path.abspath(script))
    return os.getcwd()


@functools.lru_cache(maxsize=16)
def git_state(directory: str | None = None) -> dict[str, Any]:
    """Return the git commit of the repository holding *directory* and whether it is dirty.

    Never raises: a missing ``git``, a directory outside any repository, a
    repository without commits or a ``git`` that does not answer within
    :data:`GIT_TIMEOUT` seconds are recorded in ``git_status``.  The answer is
    cached per process and directory: it describes the code as it was when the
    process first asked.

    Parameters
    ----------
    directory : str, optional
        Where to look; :func:`script_directory` by default.

    Returns
    -------
    dict
        ``git_commit`` (hex str or None), ``git_dirty`` (bool or None: tracked
        files differ from the commit) and ``git_status`` (``'ok'`` or why the
        other two are None).

    Examples
    --------
    >>> import tempfile
    >>> git_state(tempfile.mkdtemp())["git_status"] in ("not a git repository", "git not found")
    True
    """
    state: dict[str, Any] = {"git_commit": None, "git_dirty": None}
    directory = directory or script_directory()
    # One porcelain call gives both the commit and the dirty flag; the
    # optional-locks switch keeps git from rewriting the index, since
    # recording provenance must not disturb the repository it describes.
    options = ["--porcelain=v2", "--branch", "--untracked-files=no"]
    command = ["git", "-C", directory, "status", *options]
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=GIT_TIMEOUT, env=env, check=False
        )
    except FileNotFoundError:
        return {**state, "git_status": "git not found"}
    except subprocess.TimeoutExpired:
        return {**state, "git_status": f"git did not answer within {GIT_TIMEOUT} s"}
    except OSError as exc:
        return {**state, "git_status": f"git failed: {exc}"}
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()
        text = reason[-1] if reason else f"git exited with status {done.returncode}"
        if "not a git repository" in text:
            text = "not a git repository"
        return {**state, "git_status": text}
    lines = done.stdout.splitlines()
    commit = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")), None)
    if commit is None or commit == "(initial)":
        return {**state, "git_status": "no commits yet"}
    dirty = any(ln and not ln.startswith("#") for ln in lines)
    return {"git_commit": commit, "git_dirty": dirty, "git_status": "ok"}


def imported_versions() -> dict[str, str]:
    """Return ``{package: version}`` for the top-level packages imported so far.

    Only modules already in :data:`sys.modules` that set a string
    ``__version__`` in their namespace are listed (the standard library is left out), so nothing
    is imported and no package metadata is read.
    """
    versions = {}
    for name, module in list(sys.modules.items()):
        if "." in name or name.startswith("_") or name in _STDLIB:
            continue
        # The module's own namespace, not getattr: a module-level __getattr__
        # may compute the attribute, import things or warn (MarkupSafe does).
        version = getattr(module, "__dict__", {}).get("__version__")
        if isinstance(version, str):
            versions[name] = version
    return dict(sorted(versions.items()))


def session_metadata() -> dict[str, Any]:
    """Return the JSON-able metadata recorded when a session is first written."""
    from . import __version__

    numpy = sys.modules.get("numpy")
    return {
        "created": time.time(),
        "user": computer_name().split(".", 1)[0],
        "host": platform.node(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "numpy_version": getattr(numpy, "__version__", None),
        "datamanager_version": __version__,
        **git_state(script_directory()),
        "packages": imported_versions(),
    }
