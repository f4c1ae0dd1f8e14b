"""Where the chunks of a sweep run: a local process pool or a Dask cluster.

:class:`LocalPool` hands chunks to a
:class:`concurrent.futures.ProcessPoolExecutor`, :class:`DaskPool` to a
``dask.distributed.Client``; both only batch items and get back small
acknowledgements, leaving the scheduling to the executor.  :class:`Pool` is
what the driver (:class:`datamanager.tasks.driver.Sweep`) asks of either.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import math
import os
import pickle
import sys
import time
import types
from typing import Any, Iterable, Protocol

from .worker import Entry, Spec, close_dask, init_local, run_dask, run_local

__all__ = ["CHUNK_SECONDS", "DaskPool", "LocalPool", "Pool", "check_importable"]

#: Work per chunk sent to a Dask cluster (seconds, as measured).
CHUNK_SECONDS = 0.2


class Pool(Protocol):
    """What the driver needs of a pool of workers."""

    #: Workers (threads, on Dask) that can run a chunk at once.
    slots: int

    def chunk_size(self, total: int, remaining: int, per_item: float | None) -> int:
        """Items for the next chunk, given the measured seconds per item (if any)."""

    def submit(self, chunk: list[Entry]) -> Any:
        """Start running *chunk*; return a future of its :data:`~.worker.Ack`."""

    def wait(self, pending: Iterable[Any], timeout: float | None) -> Iterable[Any]:
        """Return futures of *pending* that finished, waiting at most *timeout*."""

    def finished(self) -> float | None:
        """Items the workers have finished so far (with fractions reported
        by the tasks), where the pool can tell."""

    def interrupt(self, pending: Iterable[Any]) -> list[Any]:
        """Start nothing new; return the futures still running."""

    def terminate(self) -> None:
        """Stop the workers at once."""

    def close(self) -> None:
        """Shut the pool down, waiting for its workers."""


class LocalPool:
    """Chunks on a local process pool; the pool schedules, we only batch."""

    def __init__(self, spec: Spec, processes: int, ctx: Any, chunksize: int | None) -> None:
        method = ctx.get_start_method()
        # Under forkserver the workers' parent is the fork server, not us.
        parent = os.getpid() if method in ("fork", "spawn") else None
        self.slots, self.chunksize = processes, chunksize
        self.stop, self.counter = ctx.Event(), ctx.Value("q", 0)
        self.partial = ctx.Array("d", processes, lock=False)
        self.executor = cf.ProcessPoolExecutor(
            processes,
            mp_context=ctx,
            initializer=init_local,
            initargs=(spec, parent, self.stop, self.counter, ctx.Value("i", 0), self.partial),
        )

    def chunk_size(self, total: int, remaining: int, per_item: float | None) -> int:
        # Pool.map's choice: four chunks per worker.  Workers commit within a
        # chunk, report progress through the shared counter and stop between
        # items, so a large chunk costs neither durability nor a prompt Ctrl-C.
        return self.chunksize or max(1, math.ceil(total / (4 * self.slots)))

    def submit(self, chunk: list[Entry]) -> Any:
        return self.executor.submit(run_local, chunk)

    def wait(self, pending: Iterable[Any], timeout: float | None) -> Iterable[Any]:
        return cf.wait(pending, timeout, return_when=cf.FIRST_COMPLETED).done

    def finished(self) -> float | None:
        # Whole items stay an int, so a bar shows "8/8", not "8.0/8".
        fraction = sum(self.partial)
        return self.counter.value + fraction if fraction else self.counter.value

    def interrupt(self, pending: Iterable[Any]) -> list[Any]:
        """Start nothing new, end running chunks after their current item."""
        self.stop.set()
        return [f for f in pending if not f.cancel()]

    def terminate(self) -> None:
        stop = getattr(self.executor, "terminate_workers", None)  # Python >= 3.14
        if stop is not None:
            stop()
            return
        # Before 3.14 the executor offers no way to stop a busy worker; its
        # process table is the only handle on them.
        for process in self._processes():
            process.terminate()

    def _processes(self) -> list[Any]:
        """The executor's worker processes, also once a broken executor dropped its table."""
        table = getattr(self.executor, "_processes", None)
        if not table:  # a broken executor hands its table to its manager thread
            manager = getattr(self.executor, "_executor_manager_thread", None)
            table = getattr(manager, "processes", None)
        return list((table or {}).values())

    def close(self) -> None:
        if getattr(self.executor, "_broken", False):
            # A broken pool joins its workers on shutdown; one started just as
            # another died may wait for work forever (seen on Python 3.13.0).
            self.terminate()
        self.executor.shutdown(wait=True, cancel_futures=True)


def check_importable(spec: Spec, method: str) -> None:
    """Refuse a task that *method* workers could not unpickle, before it runs.

    Such workers find the task by pickle, that is by module and name.  Pickle
    itself only fails for lambdas and the like; what is defined in
    ``__main__`` without a file (``python -c``, a notebook, the REPL) pickles
    but cannot be found in the workers, which would then fail every chunk.
    """
    finder = _MainFinder(io.BytesIO(), protocol=5)
    try:
        finder.dump((spec.task, spec.initargs, spec.initkwds))
    except Exception as exc:
        raise TypeError(
            f"the task {spec.qualname} cannot be pickled for {method!r} workers "
            f"({exc}); define it at module level"
        ) from exc
    main = sys.modules.get("__main__")
    if finder.found and not getattr(main, "__file__", None):
        raise TypeError(
            f"the task uses {', '.join(sorted(finder.found))}, defined in an interactive "
            f"session or 'python -c', which {method!r} workers cannot import; "
            f"define it in a module, or use mp_context='fork'"
        )


class _MainFinder(pickle.Pickler):
    """A pickler noting the functions and classes of ``__main__`` it meets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.found: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and obj.__module__ == "__main__":
            self.found.add(f"__main__.{obj.__qualname__}")
        return NotImplemented


class DaskPool:
    """Chunks on a Dask cluster; only acknowledgements come back."""

    def __init__(self, spec: Spec, client: Any, chunksize: int | None) -> None:
        from distributed import as_completed

        self.spec, self.client, self.chunksize = spec, client, chunksize
        self.completed = as_completed()
        self._slots, self._checked = 1, -math.inf

    @property
    def slots(self) -> int:
        # Adaptive clusters (dask-jobqueue) grow and shrink while we run.
        if time.monotonic() - self._checked > 1.0:
            self._slots = max(1, sum(self.client.nthreads().values()))
            self._checked = time.monotonic()
        return self._slots

    def chunk_size(self, total: int, remaining: int, per_item: float | None) -> int:
        # Workers may join late, and a running Dask task can be neither
        # interrupted nor watched: chunks of about CHUNK_SECONDS of measured
        # work (one item until something is measured), never more than a fair
        # share of what is left, so the tail stays balanced.
        if self.chunksize:
            return self.chunksize
        if per_item is None:
            return 1
        size = math.ceil(remaining / (2 * self.slots))
        return max(1, min(size, int(CHUNK_SECONDS / per_item) if per_item > 0 else size))

    def submit(self, chunk: list[Entry]) -> Any:
        future = self.client.submit(run_dask, self.spec, chunk, pure=False)
        self.completed.add(future)
        return future

    def wait(self, pending: Iterable[Any], timeout: float | None) -> Iterable[Any]:
        return self.completed.next_batch(block=True)

    def finished(self) -> float | None:
        return None

    def interrupt(self, pending: Iterable[Any]) -> list[Any]:
        # A running Dask task cannot be stopped: it finishes and stores its
        # results after we return.
        self.client.cancel(list(pending))
        return []

    def terminate(self) -> None:
        pass

    def close(self) -> None:
        try:
            self.client.run(close_dask, self.spec.run_id)
        except Exception:  # a lost worker: its session is durable anyway
            pass
