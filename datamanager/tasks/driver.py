"""The driver of a sweep: chunks out to a pool, acknowledgements back, counted.

A :class:`Sweep` is one run over the items that still need computing.  It
keeps a pool fed with chunks, settles each chunk that comes back (counting
what was stored and recording what failed), starts a new pool when a worker
died and took its pool down, and knows how far it got for a progress bar.
:func:`~datamanager.tasks.run_tasks` plans the items, builds a sweep and
runs it.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any, Callable

from .pools import Pool
from .queries import stored_keys
from .records import TaskFailure, TaskSummary
from .worker import Entry, Spec, Worker, describe

__all__ = ["Sweep"]


class Sweep:
    """One run of a sweep over *todo*, on pools made by *new_pool*.

    Parameters
    ----------
    spec : Spec
        The sweep: data directory, task, name.
    todo : list of (index, key, item)
        The items to run, in order.
    new_pool : callable
        ``new_pool() -> Pool``; called for the first pool, and again for a
        fresh one after a worker died (a broken process pool takes no more
        work).
    skipped : int
        Items left out before the sweep started, for the summary.
    started : float, optional
        :func:`time.perf_counter` at the start of the call, for the summary.

    Attributes
    ----------
    done : int
        Items stored by this sweep.
    settled : int
        Items in chunks that came back, stored or failed.
    failures : list of TaskFailure
        This sweep's failures, in the order they came back.
    pools : int
        Pools started; more than one after a worker died.
    """

    def __init__(
        self,
        spec: Spec,
        todo: list[Entry],
        new_pool: Callable[[], Pool],
        *,
        skipped: int = 0,
        started: float | None = None,
    ) -> None:
        self.spec, self.todo, self.skipped = spec, todo, skipped
        self.started = time.perf_counter() if started is None else started
        self.done, self.settled, self.pools = 0, 0, 0
        self.failures: list[TaskFailure] = []
        self.pool: Pool | None = None
        self.pending: dict[Any, list[Entry]] = {}  # future -> its chunk
        self._new_pool = new_pool
        self._items = {index: item for index, _key, item in todo}
        self._position = 0  # todo[:_position] has been submitted
        self._broken = False  # the current pool lost a worker
        self._base = 0  # items settled when the current pool started
        self._ran, self._seconds = 0, 0.0  # items run and their compute time
        # Records the failures that never reached a worker (an unpicklable
        # item, the chunks of a dead worker), in this process's own session.
        self._local = Worker(spec)

    # -- state ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Every chunk was submitted and has come back."""
        return self._position >= len(self.todo) and not self.pending

    @property
    def progress(self) -> float:
        """Items finished so far, for a progress bar.

        The current pool's workers count items as they finish them, so the
        bar moves within long chunks; chunks of earlier pools count once
        settled.
        """
        counted = None if self.pool is None else self.pool.finished()
        return self.settled if counted is None else max(self.settled, self._base + counted)

    @property
    def per_item(self) -> float | None:
        """Measured compute seconds per item; None until a chunk came back."""
        return self._seconds / self._ran if self._ran else None

    def summary(self) -> TaskSummary:
        """What the sweep did so far."""
        elapsed = time.perf_counter() - self.started
        return TaskSummary(
            self.spec.name,
            self.done,
            self.skipped,
            len(self.failures),
            elapsed,
            tuple(self.failures),
        )

    # -- running -------------------------------------------------------------------------

    def link(self, links: dict[str, Any]) -> None:
        """Store where items came from (item key -> link), before they run."""
        self._local.link(links)

    def reject(self, rejected: list[tuple[Any, ...]]) -> None:
        """Record items that cannot be sent to a worker, as failure outcomes
        ``(index, key, repr(item), None, error)``."""
        self._items.update((index, item) for index, _key, item, _result, _error in rejected)
        self._record(self._local.store(rejected), self._local.session.name)

    def run(self, bar: Any = None) -> None:
        """Run every item; *bar* (a tqdm bar or None) follows :attr:`progress`."""
        while not self.finished:
            # With a bar, wake up now and then to move it within long chunks.
            self.step(None if bar is None else 0.1)
            if bar is not None:
                bar.update(self.progress - bar.n)

    def step(self, timeout: float | None = None) -> None:
        """Keep a pool fed, then settle the chunks that finish within *timeout*.

        A new pool replaces one that lost a worker once its last chunk has
        come back.
        """
        if self.pool is None or (self._broken and not self.pending):
            if self.pool is not None:
                self.pool.close()
            self.pool, self._broken, self._base = self._new_pool(), False, self.settled
            self.pools += 1
        self._submit(self.pool)
        for future in self.pool.wait(list(self.pending), timeout):
            lost = self._settle(future, self.pending.pop(future))
            self._broken = self._broken or lost

    def interrupt(self) -> None:
        """Stop on Ctrl-C: start nothing new and settle the chunks still running.

        A second Ctrl-C while waiting for them terminates the workers.
        """
        try:
            running = self.pool.interrupt(list(self.pending)) if self.pool is not None else []
            for future in cf.as_completed(running):
                self._settle(future, self.pending.pop(future))
        except KeyboardInterrupt:
            if self.pool is not None:
                self.pool.terminate()

    def close(self) -> None:
        """Shut the pool down and close this process's session."""
        if self.pool is not None:
            self.pool.close()
        self._local.close()

    # -- accounting ----------------------------------------------------------------------

    def _submit(self, pool: Pool) -> None:
        # Two chunks per slot: a worker that finishes one finds the next waiting.
        while (
            not self._broken
            and self._position < len(self.todo)
            and len(self.pending) < 2 * pool.slots
        ):
            total, remaining = len(self.todo), len(self.todo) - self._position
            size = pool.chunk_size(total, remaining, self.per_item)
            chunk = self.todo[self._position : self._position + size]
            self._position += len(chunk)
            self.pending[pool.submit(chunk)] = chunk

    def _settle(self, future: Any, chunk: list[Entry]) -> bool:
        """Account for one chunk that came back; return whether it broke the pool."""
        try:
            acks, ran, seconds, session = future.result()
            lost = False
        except Exception as exc:
            # A worker died (a crash, the OOM killer) or Dask gave up on a
            # chunk (KilledWorker).  Which item was to blame is unknown, so
            # each is recorded as failed for a later run to retry; the sweep
            # goes on.  A worker that died mid-chunk may have committed part
            # of it: those items are done, and only the rest become failures.
            error, name = describe(exc), self.spec.name
            lost = isinstance(exc, cf.process.BrokenProcessPool)
            if lost and self.pool is not None:
                # A broken pool's other workers are ended by the executor, but
                # one may still commit its chunk after its future failed: wait
                # until none is left before asking what was stored.
                self.pool.close()
            stored = stored_keys(self.spec.dm)
            lost_items = [entry for entry in chunk if f"{name}/{entry[1]}" not in stored]
            acks = self._local.store([(i, k, item, None, error) for i, k, item in lost_items])
            ran, seconds, session = len(chunk), 0.0, self._local.session.name
        self._record(acks, session)
        self.done += ran - len(acks)
        self.settled += len(chunk)
        self._ran += ran
        self._seconds += seconds
        return lost

    def _record(self, acks: list[tuple[Any, ...]], session: str) -> None:
        for index, key, error, tb, worker in acks:
            item = self._items.get(index)
            self.failures.append(
                TaskFailure(self.spec.name, key, item, error, tb, worker, session)
            )
