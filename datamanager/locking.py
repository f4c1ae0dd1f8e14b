"""LockingSession: a session guarded by a cross-process file lock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from filelock import FileLock

from .session import Session

__all__ = ["LockingSession"]


class LockingSession(Session):
    """A session whose every operation holds a cross-process lock.

    The lock is a :class:`filelock.FileLock` on ``<session file>.lock``, so it
    also serialises processes on other machines where the shared filesystem
    honours ``flock`` (NFSv4 does; see README.rst).

    Holding the lock per operation makes each read and each write atomic, but
    it cannot make a *read-modify-write* atomic: between ``s['n']`` and
    ``s['n'] = ...`` another process may write.  Use :meth:`transaction`,
    which holds the lock (and an SQLite write transaction) across the block:

    >>> import os, tempfile
    >>> s = LockingSession(os.path.join(tempfile.mkdtemp(), "counter.sqlite"))
    >>> with s.transaction():
    ...     s["n"] = s.get("n", 0) + 1
    >>> s["n"]
    1
    """

    def __init__(self, path: str, journal_mode: str | None = None) -> None:
        super().__init__(path, journal_mode)
        # Short polls: under contention the default 50 ms poll interval would
        # dominate the cost of a small transaction.
        self.lock = FileLock(self.path + ".lock", poll_interval=0.002)

    @contextmanager
    def transaction(self) -> Iterator[LockingSession]:
        """Hold the lock and one SQLite transaction across the whole block."""
        with self.lock, super().transaction():
            yield self

    def _write(self, sql: str, params: tuple[Any, ...], new_side: str | None = None) -> int:
        with self.lock:
            return super()._write(sql, params, new_side)

    def __getitem__(self, key: str) -> Any:
        with self.lock:
            return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        with self.lock:
            return super().__iter__()

    def __len__(self) -> int:
        with self.lock:
            return super().__len__()

    def __contains__(self, key: object) -> bool:
        with self.lock:
            return super().__contains__(key)
