"""LockingSession: a session guarded by a cross-process file lock."""

from __future__ import annotations

import threading
from typing import Any

from filelock import FileLock

from ._format import LOCK_SUFFIX
from .session import Session

__all__ = ["LockingSession"]


class _Both:
    """Hold the cross-process lock, then the thread lock; release in reverse order."""

    def __init__(self, outer: FileLock, inner: threading.RLock) -> None:
        self.outer, self.inner = outer, inner

    def __enter__(self) -> None:
        self.outer.acquire()
        try:
            self.inner.acquire()
        except BaseException:
            self.outer.release()
            raise

    def __exit__(self, *exc_info: Any) -> None:
        self.inner.release()
        self.outer.release()


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
        self.lock = FileLock(self.path + LOCK_SUFFIX, poll_interval=0.002)
        self._both = _Both(self.lock, self._lock)

    def _guard(self) -> _Both:
        return self._both

    def acquire(self) -> None:
        """Hold the lock until :meth:`release`, across any number of operations.

        Brian's API for a read-modify-write; :meth:`transaction` is the
        better one, as it also undoes the writes of a block that fails.  The
        two nest in either order, and ``acquire()`` may be called again by
        the thread holding the lock (each call needs its ``release()``).
        Another process waits for the lock meanwhile.

        Examples
        --------
        >>> import os, tempfile
        >>> s = LockingSession(os.path.join(tempfile.mkdtemp(), "counter.sqlite"))
        >>> s.acquire()
        >>> s["n"] = s.get("n", 0) + 1
        >>> s.release()
        >>> s["n"]
        1
        """
        self._check_open()
        self._both.__enter__()

    def release(self) -> None:
        """Release the lock taken by :meth:`acquire`."""
        self._both.__exit__(None, None, None)
