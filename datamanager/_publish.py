"""Publishing a file that is written whole: under a temporary name, then moved into place.

Shared by the exports (HDF5, NWB): a reader of the target sees nothing or
the finished file, never half of one.
"""

from __future__ import annotations

import errno
import os

from .errors import ExportError

__all__ = ["exists_error", "fsync_path", "publish"]


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
