"""File descriptors: how many readers may stay open, and telling a shortage from damage.

A process may hold only so many open files (``ulimit -n``: 256 by default on
macOS, often 1024 on Linux).  SQLite reports a descriptor it could not get as
"unable to open database file", the same words it uses for a damaged or
missing file, so a shortage would pass for a corrupt session and its data
would silently drop out of a collation.
"""

from __future__ import annotations

import errno
import os

__all__ = ["PER_READER", "check_descriptors", "reader_budget"]

#: Descriptors one reader may hold: the database, its ``-wal`` file and the
#: ``-shm`` index of a session open in WAL mode.
PER_READER = 3


def _limit() -> int | None:
    """The soft limit on open files, or None where there is none to respect."""
    try:
        import resource
    except ImportError:  # Windows: no per-process limit of this kind
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def _in_use() -> int:
    """How many descriptors the process holds (0 where the system cannot tell)."""
    for folder in ("/proc/self/fd", "/dev/fd"):  # Linux, then macOS and the BSDs
        try:
            return len(os.listdir(folder)) - 1  # less the listing's own descriptor
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return _limit() or 0  # every descriptor is taken
    return 0


def reader_budget(cap: int) -> int:
    """How many readers may stay open at once, at most *cap*.

    Half of the descriptors still free go to readers; the other half stay
    free for the caller, who opens files of its own while it collates.
    """
    limit = _limit()
    if limit is None:
        return cap
    return max(0, min(cap, (limit - _in_use()) // 2 // PER_READER))


def check_descriptors(path: str) -> None:
    """Raise ``OSError(EMFILE)`` naming *path* if a reader would lack descriptors now.

    Call it where opening the session at *path* failed for a reason SQLite
    did not tell: a process short of descriptors must get that answer, not
    a report of a corrupt file.
    """
    held: list[int] = []
    try:
        # The null device opens whenever a descriptor is free, whatever the
        # session's file and folder allow, so a failure here is the shortage.
        held.append(os.open(os.devnull, os.O_RDONLY))
        while len(held) < PER_READER:
            held.append(os.dup(held[0]))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            limit = _limit()
            held_at = f"; this process may hold {limit}" if limit else ""
            reason = (
                f"{os.strerror(exc.errno)} to read a session{held_at} "
                "(close files, or raise the limit with ulimit -n)"
            )
            raise OSError(exc.errno, reason, path) from None
    finally:
        for fd in held:
            os.close(fd)
