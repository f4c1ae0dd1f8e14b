"""The identity of a session's files, and the filesystem's clock.

What lets the index tell, without opening a session, that it is unchanged
since the index read it (see :mod:`datamanager.index`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Tuple

from .. import _format as fmt
from ..filesystem import NETWORK_FILESYSTEMS, filesystem_type

__all__ = ["CLOCK_WAIT", "Files", "Key", "clock", "files", "key", "needs_open", "wait_past"]

#: Seconds a build waits for the filesystem clock to pass the last write of
#: a session written during the build.
CLOCK_WAIT = 5.0
#: Inode, size, modification and change time (ns) of a session's database,
#: and the same but the change time of its ``-journal`` and ``-wal`` as text
#: ("" when it has none): SQLite running as root chowns these to their
#: database's owner whenever it opens them, to read too, which sets it.
Key = Tuple[int, int, int, int, str]
#: A key no files can have: a file that vanished while it was looked at.
_CHANGING: Key = (-1, -1, -1, -1, "changing")


@dataclasses.dataclass(frozen=True)
class Files:
    key: Key
    #: The latest modification time of the files, in ns.
    newest: int
    stats: dict[str, os.stat_result]


def needs_open(basepath: str) -> bool:
    """Whether a file's attributes are only fresh once it is opened, on *basepath*'s filesystem.

    A network filesystem client may answer ``stat`` from attributes cached
    for some seconds (NFS's ``actimeo``), missing another machine's write;
    opening the file makes it ask the server (close-to-open consistency).
    """
    return filesystem_type(basepath) in NETWORK_FILESYSTEMS


def _stat(path: str, fresh: bool) -> os.stat_result:
    if not fresh:
        return os.stat(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def files(path: str, base: str, names: frozenset[str], fresh: bool = False) -> Files | None:
    """The identity of the files of the session at *path*; None if it is gone.

    *base* is the file name of *path*, *names* a listing of the data
    directory: companions it does not name are taken as absent (one created
    since belongs to a write that began after the listing).  *fresh*: see
    :func:`needs_open`.
    """
    try:
        db = _stat(path, fresh)
    except FileNotFoundError:
        return None
    stats = {"": db}
    companions = []
    for suffix in fmt.SQLITE_DATA[1:]:
        if base + suffix in names:
            try:
                st = stats[suffix] = _stat(path + suffix, fresh)
            except FileNotFoundError:
                # A write is finishing right now.  The database's stat is
                # kept: the unsettled row made of it records its size and time.
                return Files(_CHANGING, 1 << 63, {"": db})
            companions.append(f"{suffix}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
    newest = max(st.st_mtime_ns for st in stats.values())
    return Files(_key(db, ";".join(companions)), newest, stats)


def key(path: str, base: str, names: frozenset[str], fresh: bool) -> Key | None:
    """``files(path, base, names, fresh).key``, quicker for a session without journal files."""
    if base + "-wal" in names or base + "-journal" in names:
        found = files(path, base, names, fresh)
        return None if found is None else found.key
    try:
        return _key(_stat(path, fresh))
    except FileNotFoundError:
        return None


def _key(db: os.stat_result, companions: str = "") -> Key:
    return (db.st_ino, db.st_size, db.st_mtime_ns, db.st_ctime_ns, companions)


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
