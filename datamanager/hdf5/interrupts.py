"""Ctrl-C held back while h5py runs, and raised at the next safe point.

Python runs a signal handler at the next bytecode of the main thread.  While
an export writes, that bytecode is often inside the weakref callback that
h5py's registry of HDF5 identifiers runs whenever an identifier dies (after
each ``write`` that made a temporary dataspace or type).  An exception raised
in such a callback is printed as "Exception ignored in ..." and dropped, so
the ``KeyboardInterrupt`` of the default handler was lost and the export ran
on to the end.  Here the handler only notes the signal; the export calls
:meth:`DeferredInterrupt.checkpoint` between values, where the handler that
was replaced then runs (and raises) in ordinary code.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class DeferredInterrupt:
    """Context manager: SIGINT is noted while inside, delivered at checkpoints.

    Only the main thread can set signal handlers; elsewhere, or when SIGINT is
    ignored or left to the operating system (no Python handler), nothing
    changes.  A signal still pending on exit is delivered then, after the
    handler is restored.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self._pending = False

    def __enter__(self) -> DeferredInterrupt:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and threading.current_thread() is threading.main_thread():
            self._previous = handler
            signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._pending = True

    def checkpoint(self) -> None:
        """Run the original handler now if SIGINT came since the last checkpoint.

        With Python's default handler this raises :class:`KeyboardInterrupt`.
        """
        if self._pending:
            self._pending = False
            self._previous(signal.SIGINT, None)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._previous is None:
            return
        signal.signal(signal.SIGINT, self._previous)
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            return  # already stopping for this very signal
        self.checkpoint()
