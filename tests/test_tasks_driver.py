"""The sweep driver on its own: chunks out, acknowledgements back, counters, restarts.

run_tasks builds a :class:`Sweep` and runs it; here a sweep runs step by step
on a real process pool, or on a pool that runs each chunk at once in this
process (through a real worker and real sessions) and can lose a worker on
demand, so the accounting after a lost worker is checked exactly.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing
import threading
import time
import uuid
from typing import Any, Callable

import pytest

from datamanager import DataManager
from datamanager.tasks import item_key, task_failures, task_results
from datamanager.tasks.driver import Sweep
from datamanager.tasks.pools import LocalPool
from datamanager.tasks.run import plan
from datamanager.tasks.worker import Entry, Spec, Worker

FORK = multiprocessing.get_context("fork")


def square(x):
    return x * x


def picky(x):
    if x % 5 == 0:
        raise ValueError(f"no multiples of five: {x}")
    return x * x


def slow(x):
    time.sleep(0.05)  # a task that takes a while, not a synchronisation
    return x


def make_sweep(dm: DataManager, task: Callable[[Any], Any], items: list[Any], pool: Any) -> Sweep:
    """A sweep of *task* over *items*; ``pool(spec)`` makes each of its pools."""
    spec = Spec(dm, task, task.__qualname__, f"{__name__}.{task.__qualname__}", uuid.uuid4().hex)
    todo, _skipped, _rejected = plan(items, spec.name, None, set())
    return Sweep(spec, todo, functools.partial(pool, spec))


class InlinePool:
    """Runs each chunk at once in this process, through a real :class:`Worker`.

    The chunk holding the item *doom* loses its worker as a crash would: the
    items before *doom* are stored, then the chunk fails with
    ``BrokenProcessPool``.  ``asked`` records the ``per_item`` of each
    chunk-size request.
    """

    slots = 1

    def __init__(self, spec: Spec, size: int = 2, doom: Any = None) -> None:
        self.worker, self.size, self.doom = Worker(spec), size, doom
        self.count = 0
        self.asked: list[float | None] = []

    def chunk_size(self, total: int, remaining: int, per_item: float | None) -> int:
        self.asked.append(per_item)
        return self.size

    def submit(self, chunk: list[Entry]) -> cf.Future:
        future: cf.Future = cf.Future()
        items = [item for _index, _key, item in chunk]
        if self.doom in items:
            self.count += items.index(self.doom)
            self.worker.run(chunk[: items.index(self.doom)])
            future.set_exception(cf.process.BrokenProcessPool("a worker died"))
        else:
            self.count += len(chunk)
            future.set_result(self.worker.run(chunk))
        return future

    def wait(self, pending: Any, timeout: float | None) -> list[cf.Future]:
        return [f for f in pending if f.done()]

    def finished(self) -> int:
        return self.count

    def interrupt(self, pending: Any) -> list[cf.Future]:
        return []

    def terminate(self) -> None:
        pass

    def close(self) -> None:
        self.worker.close()


def test_counters_add_up_on_a_local_pool(dm: DataManager):
    sweep = make_sweep(dm, picky, list(range(12)), lambda spec: LocalPool(spec, 2, FORK, None))
    try:
        sweep.run()
    finally:
        sweep.close()
    assert sweep.finished and sweep.pools == 1
    assert (sweep.done, len(sweep.failures), sweep.settled, sweep.progress) == (9, 3, 12, 12)
    assert sorted(f.item for f in sweep.failures) == [0, 5, 10]
    assert sorted(result for _item, result in task_results(dm, picky)) == sorted(
        x * x for x in range(12) if x % 5
    )
    summary = sweep.summary()
    assert (summary.done, summary.failed, summary.failures) == (9, 3, tuple(sweep.failures))


def test_a_lost_worker_fails_only_what_it_had_not_stored(dm: DataManager):
    sweep = make_sweep(dm, square, list(range(10)), functools.partial(InlinePool, doom=5))
    seen = []
    try:
        while not sweep.finished:
            sweep.step()
            seen.append(sweep.progress)
    finally:
        sweep.close()
    # Chunks [4, 5] and [6, 7] were out when 5 broke the pool: 4 was stored
    # before the crash, 6 and 7 came back from the same pool, and only then
    # did a second pool start, for [8, 9].
    assert sweep.pools == 2
    assert (sweep.done, sweep.settled) == (9, 10)
    assert [(f.item, f.key) for f in sweep.failures] == [(5, item_key(5))]
    assert sweep.failures[0].error.startswith("BrokenProcessPool")
    assert [f.item for f in task_failures(dm, square)] == [5]
    stored = sorted(item for item, _result in task_results(dm, square))
    assert stored == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    # The bar never runs back, nor past the end, across the restart.
    assert seen == sorted(seen) and seen[-1] == 10


def test_chunk_sizes_are_asked_with_the_time_measured_so_far(dm: DataManager):
    pools: list[InlinePool] = []

    def pool(spec: Spec) -> InlinePool:
        pools.append(InlinePool(spec, size=3))
        return pools[-1]

    sweep = make_sweep(dm, square, list(range(9)), pool)
    try:
        sweep.run()
    finally:
        sweep.close()
    asked = pools[0].asked
    assert len(asked) == 3 and asked[0] is None and asked[-1] is not None
    assert sweep.per_item is not None and sweep.done == 9


def test_interrupt_settles_what_runs_and_starts_nothing_more(dm: DataManager):
    pool = functools.partial(LocalPool, processes=1, ctx=FORK, chunksize=1)
    sweep = make_sweep(dm, slow, list(range(8)), pool)
    try:
        sweep.step()  # one worker, two chunks of one item out; returns when one is back
        settled = sweep.settled
        sweep.interrupt()
    finally:
        sweep.close()
    assert settled >= 1
    assert not sweep.finished  # six items were never handed out
    assert 1 <= sweep.done <= 2 and not sweep.failures
    assert len(task_results(dm, slow)) == sweep.done


def test_plan_skips_repeats_and_stored_items_and_rejects_the_unpicklable():
    todo, skipped, rejected = plan([1, 2, 1, 3], "sq", None, {f"sq/{item_key(3)}"})
    assert [(index, item) for index, _key, item in todo] == [(0, 1), (1, 2)]
    assert (skipped, rejected) == (2, [])
    lock = threading.Lock()
    todo, skipped, rejected = plan(["a", lock], "sq", str, set())
    assert [key for _index, key, _item in todo] == ["a"]
    [(index, key, shown, result, (error, _tb))] = rejected
    assert (index, key, shown, result) == (1, str(lock), repr(lock), None)
    assert error.startswith("TypeError")
    with pytest.raises(TypeError, match=r"key\(items\[0\]\) returned ''"):
        plan(["x"], "sq", lambda item: "", set())
