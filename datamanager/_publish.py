"""Publishing a file that is written whole: under a temporary name, then moved into place.

Shared by the exports (HDF5, NWB): a reader of the target sees nothing or
the finished file, never half of one, and a failed export leaves nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import Callable, Iterator, Union

from ._format import EXPORT_TEMP_SUFFIX
from .errors import ExportError

__all__ = ["exists_error", "fsync_path", "publish", "publishing", "target"]

PathLike = Union[str, "os.PathLike[str]"]


def fsync_path(path: str) -> None:
    """Flush a file (or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exists_error(path: str) -> ExportError:
    """The error for a target that exists when ``overwrite`` is false."""
    return ExportError(path, "the file exists (use overwrite=True to replace it)", errno.EEXIST)


def target(path: PathLike, overwrite: bool) -> str:
    """The absolute path of an export's target, checked before any work starts.

    Raises
    ------
    ExportError
        If the target exists and *overwrite* is false, or its folder is missing.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.lexists(path) and not overwrite:
        raise exists_error(path)
    if not os.path.isdir(folder):
        raise ExportError(path, f"no such folder {folder}", errno.ENOENT)
    return path


@contextlib.contextmanager
def publishing(
    path: str, overwrite: bool, fsync: bool, last_check: Callable[[], None] | None = None
) -> Iterator[str]:
    """Yield a temporary file beside *path*; publish it if the block succeeds.

    The temporary file is hidden (``.<name>.<random>.part``) and made an
    ordinary 0644 file (``mkstemp`` makes it 0600).  After the block it is
    fsynced, *last_check* runs (the last moment at which stopping leaves
    nothing behind) and it is moved into place (:func:`publish`).  On any
    failure it is removed, and an OSError becomes an :class:`ExportError`
    naming *path*.
    """
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=EXPORT_TEMP_SUFFIX, dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)
        yield tmp
        if fsync:
            fsync_path(tmp)
        if last_check is not None:
            last_check()
        publish(tmp, path, overwrite, fsync)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, ExportError):
            raise ExportError(path, f"{type(exc).__name__}: {exc}", exc.errno) from exc
        raise


def publish(tmp: str, path: str, overwrite: bool, fsync: bool) -> None:
    """Move the finished file ``tmp`` to ``path`` in one step."""
    if overwrite:
        os.replace(tmp, path)
    else:
        # A hard link fails if the target appeared meanwhile, where a
        # check-then-rename could clobber a file written by someone else.
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise exists_error(path) from None
        except OSError:  # no hard links on this filesystem
            if os.path.lexists(path):
                raise exists_error(path) from None
            os.replace(tmp, path)
        else:
            os.unlink(tmp)
    if fsync:
        try:
            fsync_path(os.path.dirname(path))
        except OSError:
            pass  # some filesystems cannot fsync a directory
