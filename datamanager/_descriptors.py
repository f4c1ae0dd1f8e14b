"""File descriptors: how many readers may stay open, telling a shortage from damage,
and which session files this process holds open.

A process may hold only so many open files (``ulimit -n``: 256 by default on
macOS, often 1024 on Linux).  SQLite reports a descriptor it could not get as
"unable to open database file", the same words it uses for a damaged or
missing file, so a shortage would pass for a corrupt session and its data
would silently drop out of a collation.
"""

from __future__ import annotations

import errno
import os
import threading

__all__ = ["PER_READER", "check_descriptors", "held", "hold", "reader_budget"]

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
    fds: list[int] = []
    try:
        # The null device opens whenever a descriptor is free, whatever the
        # session's file and folder allow, so a failure here is the shortage.
        fds.append(os.open(os.devnull, os.O_RDONLY))
        while len(fds) < PER_READER:
            fds.append(os.dup(fds[0]))
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
        for fd in fds:
            os.close(fd)


# How many SQLite connections this process has open to each session file.
# SQLite locks files with POSIX locks, which the kernel drops as soon as the
# process closes *any* descriptor of that file: code that reads a session file
# with plain open() must not do so while SQLite may hold locks on it here.
_HELD: dict[str, int] = {}
_HELD_LOCK = threading.Lock()


def hold(path: str, count: int = 1) -> None:
    """Count one connection of this process to *path* opened (or, with -1, closed)."""
    if not os.path.isabs(path):
        path = os.path.abspath(path)  # a relative datapath names the same file
    with _HELD_LOCK:
        left = _HELD.get(path, 0) + count
        if left > 0:
            _HELD[path] = left
        else:
            _HELD.pop(path, None)


def held(path: str) -> bool:
    """Whether this process has a connection open to the session file *path*."""
    return bool(_HELD) and os.path.abspath(path) in _HELD
