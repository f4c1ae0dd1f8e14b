"""What a session records about the process that first wrote it.

The record answers "which code, on which machine, with which libraries made
these results?".  It runs at every session creation, so it stays
cheap: package versions come from modules already imported, and the one
``git`` subprocess is run once per process and directory, with a short timeout.
Only when the code is dirty does a second one, ``git diff``, run, again once
per process and directory.

The texts too long for a session's metadata (the diff of dirty code, the input
history of an IPython kernel) are written to the data directory's file store,
once per distinct content, and each session names them by sha256: every worker
of a sweep run from dirty code refers to the same one file.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, NamedTuple

from .filestore import store_bytes

__all__ = [
    "CODE_IDENTITY",
    "Diff",
    "code_record",
    "code_versions",
    "computer_name",
    "git_diff",
    "git_state",
    "imported_versions",
    "ipython_history",
    "session_metadata",
    "store_text",
    "warm_cache",
]

#: The metadata fields that together name the code a session was written by.
CODE_IDENTITY = ("git_commit", "git_dirty", "git_diff_sha256", "datamanager_version", "python")
#: Seconds a ``git`` subprocess may take before its answer is given up.
GIT_TIMEOUT = 2.0
#: Seconds ``git diff`` may take: unlike ``git status`` it reads every changed file.
DIFF_TIMEOUT = 10.0
#: Bytes of a ``git diff`` that are stored; a longer one is recorded by its size and sha256.
DIFF_CAP = 1 << 20
#: The newest IPython input cells recorded, at most this many ...
HISTORY_CELLS = 1000
#: ... and at most this many bytes of them (UTF-8), the newest kept.
HISTORY_CAP = 256 << 10

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
    # One porcelain call gives both the commit and the dirty flag.
    options = ["--porcelain=v2", "--branch", "--untracked-files=no"]
    command = ["git", "-C", directory, "status", *options]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env=_git_env(),
            check=False,
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


def _git_env() -> dict[str, str]:
    # The optional-locks switch keeps git from rewriting the index, since
    # recording provenance must not disturb the repository it describes.
    return dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")


class Diff(NamedTuple):
    """The ``git diff`` of a dirty working tree against its commit."""

    #: Bytes of the whole diff, or None when git gave none.
    size: int | None
    #: sha256 of the whole diff in hex, or None when git gave none.
    sha256: str | None
    #: The diff itself when it is at most :data:`DIFF_CAP` bytes, else None.
    text: bytes | None
    #: ``'ok'``, or why there is no diff.
    status: str


@functools.lru_cache(maxsize=16)
def git_diff(directory: str | None = None) -> Diff | None:
    """Return the diff of the tracked files of a dirty repository against its commit.

    None when :func:`git_state` finds the repository clean (or finds none):
    a clean repository costs no further subprocess.  The diff is what
    ``git apply`` needs to rebuild the dirty tree from the commit: staged and
    unstaged changes of tracked files, binary ones included, paths from the
    top of the repository; untracked files are not in it.  Cached per process
    and directory, as :func:`git_state` is, and it never raises.

    Parameters
    ----------
    directory : str, optional
        Where to look; :func:`script_directory` by default.

    Returns
    -------
    Diff or None
        The whole diff's size and sha256, and its bytes when at most
        :data:`DIFF_CAP`; None for clean code or no repository.
    """
    directory = directory or script_directory()
    if not git_state(directory)["git_dirty"]:
        return None
    # The options pin what user configuration could change (prefixes, colour,
    # external diff drivers, submodule logs, paths relative to the working
    # directory) to what `git apply` reads at the top of the repository.
    options = ["--binary", "--no-color", "--no-ext-diff", "--no-textconv", "--no-relative"]
    options.append("--submodule=short")
    command = ["git", "-C", directory, "diff", *options, "--src-prefix=a/", "--dst-prefix=b/"]
    # A diff can be far larger than what is kept (a changed data file): it
    # goes to a temporary file and is hashed from there in pieces.
    with tempfile.TemporaryFile() as out:
        try:
            done = subprocess.run(
                [*command, "HEAD", "--"],
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=DIFF_TIMEOUT,
                env=_git_env(),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Diff(None, None, None, f"git diff did not answer within {DIFF_TIMEOUT} s")
        except OSError as exc:
            return Diff(None, None, None, f"git diff failed: {exc}")
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
            return Diff(None, None, None, reason[-1] if reason else "git diff failed")
        size, sha256 = _digest(out)
        out.seek(0)
        text = out.read() if size <= DIFF_CAP else None
    return Diff(size, sha256, text, "ok")


def _digest(file: IO[bytes]) -> tuple[int, str]:
    """``(size, sha256 hex)`` of *file* from its start, read in pieces."""
    file.seek(0)
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: file.read(1 << 20), b""):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def ipython_history() -> list[str] | None:
    """Return the newest input cells of the running IPython kernel, or None outside one.

    At most :data:`HISTORY_CELLS` cells and :data:`HISTORY_CAP` bytes, the
    oldest left out first (an older cell is never kept without the newer
    ones).  IPython is never imported here: a process that has not imported it
    runs no IPython kernel.
    """
    # A module half imported (this very session opened during its import)
    # may lack get_ipython yet.
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    manager = getattr(get_ipython() if get_ipython else None, "history_manager", None)
    if manager is None:
        return None
    cells = [str(c) for c in manager.input_hist_raw[1:]][-HISTORY_CELLS:]  # [0] is empty
    kept, total = [], 0
    for cell in reversed(cells):
        total += len(cell.encode("utf-8", "backslashreplace"))
        if total > HISTORY_CAP:
            break
        kept.append(cell)
    return kept[::-1]


#: ``(data directory, sha256)`` of the texts stored by this process.
_STORED: set[tuple[str, str]] = set()


def store_text(basepath: str, data: bytes) -> str:
    """Store *data* in the file store of data directory *basepath*; return its sha256.

    Every later session of this process that names the same text costs
    neither a write nor a look at the disk.
    """
    sha256 = hashlib.sha256(data).hexdigest()
    if (basepath, sha256) not in _STORED:
        store_bytes(basepath, data)
        _STORED.add((basepath, sha256))
    return sha256


def warm_cache() -> None:
    """Ask git now, so that processes forked from this one inherit the answers."""
    directory = script_directory()
    git_state(directory)
    git_diff(directory)


def code_record(basepath: str) -> dict[str, Any]:
    """The metadata of the code that runs: git commit, dirty flag, diff, IPython history.

    The diff (when at most :data:`DIFF_CAP` bytes) and the history are
    written to the file store of data directory *basepath* and named here
    by sha256 and size.  Never raises: a text the store cannot take is
    recorded as not stored, with the reason for a diff.
    """
    directory = script_directory()
    record: dict[str, Any] = dict(git_state(directory))
    diff = git_diff(directory)
    status = None if diff is None else diff.status
    stored = False
    if diff is not None and diff.text is not None:
        failure = _store_or_why(basepath, diff.text)
        stored = failure is None
        status = status if stored else f"not stored: {failure}"
    record.update(
        git_diff_status=status,
        git_diff_sha256=None if diff is None else diff.sha256,
        git_diff_size=None if diff is None else diff.size,
        git_diff_stored=stored,
    )
    history = ipython_history()
    record.update(ipython_history_sha256=None, ipython_history_cells=None)
    if history is not None:
        # JSON keeps each cell exactly, whatever it holds; a lone surrogate
        # becomes the JSON escape that reads back as it, in valid UTF-8.
        text = json.dumps(history, ensure_ascii=False).encode("utf-8", "backslashreplace")
        if _store_or_why(basepath, text) is None:
            record.update(
                ipython_history_sha256=hashlib.sha256(text).hexdigest(),
                ipython_history_cells=len(history),
            )
    return record


def _store_or_why(basepath: str, data: bytes) -> str | None:
    """Store *data* (see :func:`store_text`); None, or why it could not be."""
    # The session being created must not fail for its provenance: a full
    # disk, say, then fails the session's own write, with its own error.
    try:
        store_text(basepath, data)
    except OSError as exc:
        return str(exc)
    return None


def code_versions(
    sessions: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], list[str]]]:
    """Group sessions by the code that wrote them.

    Parameters
    ----------
    sessions : list of dict
        Each a session's ``name`` and metadata (a row of
        :meth:`~datamanager.DataManager.sessions`); a field it lacks, or
        holds as NaN, counts as None.

    Returns
    -------
    list of (dict, list of str)
        One pair per code version: its :data:`CODE_IDENTITY` fields plus
        ``git_status``, ``git_diff_size`` and ``git_diff_stored``, and the
        names of its sessions, sorted.  Versions come in the order of their
        first session in *sessions*.

    Examples
    --------
    >>> rows = [{"name": "b", "git_commit": "1f", "git_dirty": False},
    ...         {"name": "a", "git_commit": "1f", "git_dirty": False}]
    >>> [(v["git_commit"], names) for v, names in code_versions(rows)]
    [('1f', ['a', 'b'])]
    """
    fields = (*CODE_IDENTITY, "git_status")
    groups: dict[tuple[Any, ...], tuple[dict[str, Any], list[str]]] = {}
    for row in sessions:
        version = {f: _scalar(row.get(f)) for f in (*fields, "git_diff_size", "git_diff_stored")}
        key = tuple(version[f] for f in fields)
        groups.setdefault(key, (version, []))[1].append(row["name"])
    return [(version, sorted(names)) for version, names in groups.values()]


def _scalar(value: Any) -> Any:
    # A column that some sessions lack holds NaN (a float) where they lack it.
    return None if isinstance(value, float) and value != value else value


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


def session_metadata(basepath: str) -> dict[str, Any]:
    """Return the JSON-able metadata recorded when a session is first written.

    *basepath* is the session's data directory, where the texts of
    :func:`code_record` are stored.
    """
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
        **code_record(basepath),
        "packages": imported_versions(),
    }
