"""The identity of a session's files, and the filesystem's clock.

What lets the index tell, without opening a session, that it is unchanged
since the index read it (see :mod:`datamanager.index`).
"""

from __future__ import annotations

import dataclasses
import os
import time

from .. import _format as fmt

__all__ = ["CLOCK_WAIT", "Files", "clock", "files", "wait_past"]

#: Seconds a build waits for the filesystem clock to pass the last write of
#: a session written during the build.
CLOCK_WAIT = 5.0
#: A signature no files can have: a file that vanished while it was looked at.
_CHANGING = "changing"


@dataclasses.dataclass(frozen=True)
class Files:
    signature: str
    #: The latest modification time of the files, in ns.
    newest: int
    stats: dict[str, os.stat_result]


def files(path: str, names: frozenset[str]) -> Files | None:
    """The identity of the files of the session at *path*; None if it is gone.

    *names* is a listing of the data directory: companions it does not name
    are taken as absent (one created since belongs to a write that began
    after the listing).
    """
    base = os.path.basename(path)
    stats = {}
    for suffix in fmt.SQLITE_DATA:
        if suffix and base + suffix not in names:
            continue
        try:
            stats[suffix] = os.stat(path + suffix)
        except FileNotFoundError:
            if not suffix:
                return None
            return Files(_CHANGING, 1 << 63, {})  # a write is finishing right now
    signature = ";".join(
        f"{suffix}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        for suffix, st in stats.items()
    )
    return Files(signature, max(st.st_mtime_ns for st in stats.values()), stats)


def clock(path: str) -> int:
    """Now, by the clock of the filesystem holding *path* (a file this process owns)."""
    os.utime(path)
    return os.stat(path).st_mtime_ns


def wait_past(path: str, newest: int) -> int:
    """Wait until the filesystem clock has passed *newest*; return its time."""
    deadline = time.monotonic() + CLOCK_WAIT
    now = clock(path)
    while now <= newest and time.monotonic() < deadline:
        time.sleep(0.001)  # a clock tick is a few ms; a coarse filesystem's up to 2 s
        now = clock(path)
    return now
