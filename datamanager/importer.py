"""Bring folders of legacy recordings into a DataManager session.

Every file is recognised by content (the ATF signature, NEURON's layouts),
never by name, and stored as the :class:`Recording` itself under its path
relative to the imported folder, so ``dm.get_matching("cells/")`` collates
recordings like any simulation result. A file holding several blocks is
stored as ``<path>#0``, ``<path>#1``, ... (one Recording per block).

The session metadata keeps the source folder and, per file, the sha256 of
its content and the keys it was stored under: importing the same folder
again reads each file's hash, finds it already there and adds nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Union

from .errors import RecordingFormatError
from .recordings.atf import is_atf
from .recordings.detect import load_recording
from .recordings.neuron import is_neuron

if TYPE_CHECKING:
    from .manager import DataManager

__all__ = ["ImportSummary", "default_session_name", "import_recordings"]

PathLike = Union[str, "os.PathLike[str]"]
# Files stored per transaction: one commit (one fsync) per batch, not per
# file, keeps a 1,000-file import close to the speed of just reading them.
_BATCH = 200
_BATCH_BYTES = 64 << 20  # ... and never more than this much data held back
_INDEX = "recordings"


@dataclass
class ImportSummary:
    """What :func:`import_recordings` did, file by file (paths relative to the folder).

    Attributes
    ----------
    session : str
        The name of the import session.
    folder : str
        The absolute folder the keys are relative to.
    imported : list of str
        Files read and stored (new, or changed since the last import).
    unchanged : list of str
        Files already in the session with the same content hash.
    skipped : list of str
        Files that are not recordings (no ATF signature, no NEURON layout).
    failed : dict of str to str
        Files that look like recordings but could not be read, with the error.
    """

    session: str
    folder: str
    imported: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"session {self.session!r}: {len(self.imported)} imported, "
            f"{len(self.unchanged)} unchanged, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed"
        )


def default_session_name(folder: PathLike) -> str:
    """``import-<folder name>-<8 hex digits of the absolute path's hash>``.

    The same folder always maps to the same session (so a second import finds
    the first); two folders with the same name do not collide.

    >>> name = default_session_name("/data/cells")
    >>> name.startswith("import-cells-"), len(name)
    (True, 21)
    """
    absolute = os.path.abspath(os.fspath(folder))
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(absolute.rstrip(os.sep)) or "root")
    base = base.lstrip(".").replace("..", "_")[:60] or "root"
    digest = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"import-{base}-{digest}"


def _walk(folder: str) -> Iterable[str]:
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(top, name)


def _collect(paths_or_folder: Any) -> tuple[str, list[str]]:
    if isinstance(paths_or_folder, (str, os.PathLike)):
        given = [os.fspath(paths_or_folder)]
    else:
        given = [os.fspath(p) for p in paths_or_folder]
    if not given:
        raise ValueError("import_recordings needs a folder or at least one path")
    files: list[str] = []
    roots = []
    for p in given:
        p = os.path.abspath(p)
        if os.path.isdir(p):
            roots.append(p)
            files.extend(_walk(p))
        elif os.path.exists(p):
            roots.append(os.path.dirname(p))
            files.append(p)
        else:
            raise FileNotFoundError(p)
    root = os.path.commonpath(roots)
    return root, sorted(set(files), key=files.index)


def _head_and_sha256(path: str) -> tuple[bytes, str]:
    """The first 64 KiB (to recognise the format) and the content hash, in one pass."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
        h.update(head)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return head, h.hexdigest()


def import_recordings(
    dm: DataManager, paths_or_folder: Any, session_name: str | None = None
) -> ImportSummary:
    """Read every recording under a folder (recursively) into one session.

    Parameters
    ----------
    dm : DataManager
        Where the import session lives.
    paths_or_folder : str, os.PathLike or iterable of them
        A folder (walked recursively), a file, or several of either. Keys are
        POSIX paths relative to the folder (or to the common folder of the
        paths given).
    session_name : str, optional
        The session to import into; by default :func:`default_session_name`
        of the folder, so the same folder always lands in the same session.

    Returns
    -------
    ImportSummary
        imported / unchanged / skipped (not a recording) / failed (with the
        error). One bad file never stops the others. Where nothing is
        imported, nothing is written: a folder without recordings leaves
        no session and no data directory behind.

    Raises
    ------
    FileNotFoundError
        If a path given does not exist.
    """
    root, files = _collect(paths_or_folder)
    name = session_name if session_name is not None else default_session_name(root)
    session = dm.session(name)
    summary = ImportSummary(session=name, folder=root)
    index: dict[str, Any] = dict(session.metadata.get(_INDEX) or {})
    pending: list[tuple[str, str, list[Any]]] = []
    held = 0

    def flush() -> None:
        if not pending:
            return
        with session.transaction():
            values: dict[str, Any] = {}
            for rel, digest, recordings in pending:
                keys = (
                    [rel]
                    if len(recordings) == 1
                    else [f"{rel}#{i}" for i in range(len(recordings))]
                )
                for old in (index.get(rel) or {}).get("keys", []):
                    if old not in keys and old in session:
                        del session[old]
                for key, rec in zip(keys, recordings):
                    rec.attrs["sha256"] = digest
                    rec.attrs["source"] = rel
                    values[key] = rec
                index[rel] = {"sha256": digest, "keys": keys}
            session.update(values)  # one batch
            session.update_metadata({"source_folder": root, _INDEX: index})
        pending.clear()

    for path in files:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        try:
            head, digest = _head_and_sha256(path)
            if not (is_atf(head) or is_neuron(head)):
                summary.skipped.append(rel)
                continue
            known = index.get(rel)
            if (
                known
                and known.get("sha256") == digest
                and all(k in session for k in known.get("keys", []))
            ):
                summary.unchanged.append(rel)
                continue
            recordings = load_recording(path)
        except (RecordingFormatError, OSError) as exc:
            summary.failed[rel] = str(exc)
            continue
        except Exception as exc:  # one bad file never stops the others
            summary.failed[rel] = f"{type(exc).__name__}: {exc}"
            continue
        pending.append((rel, digest, recordings))
        summary.imported.append(rel)
        held += sum(int(r.data.nbytes) for r in recordings)
        if len(pending) >= _BATCH or held >= _BATCH_BYTES:
            flush()
            held = 0
    flush()
    session.close()
    return summary
