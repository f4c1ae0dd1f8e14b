"""Which SQLite journal a data directory can use, decided by its filesystem.

SQLite's WAL mode keeps its index in shared memory, which only works when
every process that opens the database runs on one machine and the filesystem
gives coherent memory-mapped files.  Network filesystems (NFS, Lustre, GPFS,
CIFS, ...) do not, so on them sessions use a rollback journal instead.
"""

from __future__ import annotations

import os

__all__ = [
    "JOURNAL_ENV",
    "NETWORK_FILESYSTEMS",
    "check_journal_mode",
    "choose_journal_mode",
    "filesystem_type",
]

#: Environment variable that overrides the journal mode everywhere (``wal`` or ``delete``).
JOURNAL_ENV = "DATAMANAGER_JOURNAL_MODE"

#: Network file systems: file sharing protocols, cluster file systems, FUSE mounts of either.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "afs", "9p"}
    | {"lustre", "gpfs", "ceph", "cephfs", "glusterfs", "beegfs", "panfs", "wekafs"}
    | {"orangefs", "pvfs2", "fuse.glusterfs", "fuse.sshfs", "fuse.cephfs"}
)


def _unescape_mount_path(path: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal (\040 ...).
    return (
        path.encode("latin-1")
        .decode("unicode_escape")
        .encode("latin-1")
        .decode("utf-8", "surrogateescape")
    )


def filesystem_type(path: str, mounts: str | None = None) -> str | None:
    """Return the type of the filesystem holding *path* (``'ext4'``, ``'nfs4'``...).

    Parameters
    ----------
    path : str
        A file or directory (it need not exist yet).
    mounts : str, optional
        The text of a mount table in ``/proc/self/mounts`` format; read from
        the running system when omitted.

    Returns
    -------
    str or None
        None where the mount table cannot be read (a system other than Linux).
    """
    if mounts is None:
        try:
            with open("/proc/self/mounts", encoding="latin-1") as f:
                mounts = f.read()
        except OSError:
            return None
    path = os.path.realpath(path)
    best, best_type = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mountpoint = _unescape_mount_path(fields[1])
        inside = path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")
        # The longest matching mount point wins; the last of equals, as it mounts on top.
        if inside and len(mountpoint) >= len(best):
            best, best_type = mountpoint, fields[2]
    return best_type


def check_journal_mode(requested: str | None) -> str | None:
    """Return *requested* in lower case (None stays None), or raise ValueError.

    Called where the mode is given, so that a typo fails there and then,
    not at the first write.
    """
    if requested is None:
        return None
    mode = requested.lower() if isinstance(requested, str) else requested
    if mode not in ("wal", "delete"):
        raise ValueError(f"journal_mode must be 'wal' or 'delete' (or None), got {requested!r}")
    return mode


def choose_journal_mode(path: str, requested: str | None = None) -> str:
    """Return ``'wal'`` or ``'delete'`` for sessions stored under *path*.

    An explicit *requested* mode wins, then the ``DATAMANAGER_JOURNAL_MODE``
    environment variable, then the filesystem: ``'delete'`` (a rollback
    journal) on a network filesystem, ``'wal'`` elsewhere.
    """
    mode = check_journal_mode(requested or os.environ.get(JOURNAL_ENV) or None)
    if mode is not None:
        return mode
    return "delete" if filesystem_type(path) in NETWORK_FILESYSTEMS else "wal"
