"""The worker side of a sweep: running chunks of items and storing their results.

A :class:`Worker` runs chunks of items in one process and stores their
results in that process's own session, sending back only a small
acknowledgement.  The module-level entry points (:func:`init_local`,
:func:`run_local`, :func:`run_dask`, :func:`close_dask`) are what the pools
of :mod:`datamanager.tasks.pools` send to worker processes: module-level, so
they pickle by reference.
"""

from __future__ import annotations

import inspect
import multiprocessing.util
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UnstorableValueError
from .files import bind_files
from .queries import LINK
from .records import parameter_names

if TYPE_CHECKING:
    from ..manager import DataManager

__all__ = ["COMMIT_SECONDS", "Ack", "Entry", "Spec", "Worker", "describe", "worker_name"]

#: A worker commits what it has computed at least this often (seconds).
COMMIT_SECONDS = 1.0

# What a chunk sends back: failures (index, key, error, traceback, worker), the
# number of items run, their compute time and the session name.
Ack = tuple[list[tuple[Any, ...]], int, float, str]
# One item to run: its index in the caller's items, its key, the item.
Entry = tuple[int, str, Any]


def worker_name() -> str:
    """Return ``<host>:<pid>``, naming this process in failure records."""
    return f"{socket.gethostname()}:{os.getpid()}"


def describe(exc: BaseException) -> tuple[str, str]:
    """Return ``('<ExceptionType>: <message>', traceback)`` for a failure record."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}", tb


@dataclass(frozen=True)
class Spec:
    """What a worker needs to run a sweep; pickles as configuration only."""

    dm: DataManager
    task: Callable[[Any], Any]
    name: str
    qualname: str
    run_id: str
    initargs: tuple[Any, ...] = ()
    initkwds: dict[str, Any] | None = None
    #: More entries for the metadata of every session the sweep writes.
    metadata: dict[str, Any] | None = None


def _takes(function: Callable[..., Any], parameter: str) -> bool:
    """Whether *function* accepts the keyword *parameter* (by name or ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return any(p.name == parameter or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class Worker:
    """The sweep's state in one process: its session, opened at the first result."""

    def __init__(self, spec: Spec, number: int = 0) -> None:
        self.spec, self.number = spec, number
        self.session: Any = None
        self._lock = threading.Lock()
        self._call: tuple[Callable[..., Any], bool] | None = None

    def _task(self) -> tuple[Callable[..., Any], bool]:
        """The callable run per item, and whether it takes ``report``.

        A task that is a class is instantiated here, once per process, so
        its ``__init__`` can do expensive set-up shared by all the items.
        """
        with self._lock:
            if self._call is None:
                task = self.spec.task
                if isinstance(task, type):
                    kwds = dict(self.spec.initkwds or {})
                    if _takes(task, "process_number"):
                        kwds["process_number"] = self.number
                    task = task(*self.spec.initargs, **kwds)
                self._call = task, _takes(task, "report")
            return self._call

    def _open(self) -> Any:
        with self._lock:  # Dask runs several threads in one worker process
            if self.session is None:
                session = self.spec.dm.session()
                session.update_metadata(
                    {
                        "task": self.spec.qualname,
                        "task_name": self.spec.name,
                        "task_run": self.spec.run_id,
                        # So that a table of the sweep, read by its name
                        # alone, names the positions of tuple items.
                        "task_parameters": parameter_names(self.spec.task),
                        **(self.spec.metadata or {}),
                    }
                )
                self.session = session
            return self.session

    def run(
        self, chunk: list[Entry], stop: Any = None, counter: Any = None, partial: Any = None
    ) -> Ack:
        """Run and store one chunk; return only a small acknowledgement.

        Results are committed at the end of the chunk and at least every
        :data:`COMMIT_SECONDS`, so long tasks lose little to a crash.  *stop*
        (an event) ends the chunk early between items; *counter* (a shared
        integer) counts finished items for the progress bar, and
        ``partial[number]`` (a shared array) holds how far the current item
        is, as the task reports it.
        """
        outcomes: list[tuple[Any, ...]] = []
        failures: list[tuple[Any, ...]] = []
        ran, seconds, committed = 0, 0.0, time.monotonic()
        task, wants_report = self._task()
        extra = {"report": self._reporter(partial)} if wants_report else {}
        basepath = self.spec.dm.basepath
        for index, key, item in chunk:
            if stop is not None and stop.is_set():
                break
            start = time.perf_counter()
            # Its files came without their place (a StoredFile pickles
            # without it): here they are where this worker sees the store.
            item = bind_files(item, basepath)
            # A tuple is a parameter set, one argument per entry (as Brian's
            # task farm passed them).
            args = item if isinstance(item, tuple) else (item,)
            try:
                outcomes.append((index, key, item, task(*args, **extra), None))
            except Exception as exc:  # the sweep goes on; the failure is recorded
                outcomes.append((index, key, item, None, describe(exc)))
            seconds += time.perf_counter() - start
            ran += 1
            if partial is not None:
                partial[self.number] = 0.0
            if counter is not None:
                with counter.get_lock():
                    counter.value += 1
            if time.monotonic() - committed >= COMMIT_SECONDS:
                failures += self.store(outcomes)
                outcomes, committed = [], time.monotonic()
        if outcomes:
            failures += self.store(outcomes)
        return failures, ran, seconds, getattr(self.session, "name", "")

    def _reporter(self, partial: Any) -> Callable[[float, float], None]:
        """The ``report(elapsed, complete)`` passed to a task that asks for it."""

        def report(elapsed: float, complete: float) -> None:
            # *elapsed* is the task's own business; only the fraction moves the bar.
            if partial is not None:
                partial[self.number] = min(max(float(complete), 0.0), 1.0)

        return report

    def store(self, outcomes: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Write results, items and failure records in one transaction; return the failures.

        Results go to the session's keys, through one ``session.update()``
        (so a bulk write in the session speeds this up too); items and
        failure records go to its task records, where collation does not see
        them.  A result that cannot be pickled (:class:`UnstorableValueError`
        names its key) becomes that item's failure and the rest is written
        again.
        """
        name, worker, failures = self.spec.name, worker_name(), []
        results: dict[str, Any] = {}
        owner: dict[str, tuple[Any, ...]] = {}
        for outcome in outcomes:
            index, key, item, result, error = outcome
            if error is None:
                results[f"{name}/{key}"] = result
                owner[f"{name}/{key}"] = outcome
            else:
                failures.append((index, key, item, error))
        session = self._open()
        with session.transaction():
            while True:
                try:
                    session.update(results)
                    break
                except UnstorableValueError as exc:
                    if exc.key not in owner:
                        raise
                    index, key, item, _result, _error = owner.pop(exc.key)
                    del results[exc.key]
                    failures.append((index, key, item, describe(exc)))
            now, task = time.time(), self.spec.qualname
            records = {f"{name}.items/{o[1]}": o[2] for o in owner.values()}
            for _index, key, item, error in failures:
                records[f"{name}.failures/{key}"] = dict(
                    item=item,
                    error=error[0],
                    traceback=error[1],
                    worker=worker,
                    time=now,
                    task=task,
                )
            session.update_records(records)
        return [(index, key, error[0], error[1], worker) for index, key, _item, error in failures]

    def link(self, links: dict[str, Any]) -> None:
        """Store link records (item key -> where the item came from), in one transaction."""
        if links:
            records = {f"{self.spec.name}{LINK}{key}": link for key, link in links.items()}
            self._open().update_records(records)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


# This pool worker's state, set by init_local: the worker, the driver's stop
# event, the shared count of finished items and the shared per-worker
# fractions of the current items.
_LOCAL: tuple[Worker, Any, Any, Any] | None = None


def init_local(
    spec: Spec, parent_pid: int | None, stop: Any, counter: Any, numbers: Any, partial: Any
) -> None:
    global _LOCAL
    # Ctrl-C at a terminal reaches the whole process group; the driver alone
    # decides what happens then (it sets *stop*), so no task is cut in half.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits the driver's SIGTERM handler (see run_tasks);
    # a worker the pool terminates must die at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent_pid)
    with numbers.get_lock():  # each worker of the pool takes the next number
        number, numbers.value = numbers.value, numbers.value + 1
    worker = Worker(spec, number)
    _LOCAL = (worker, stop, counter, partial)
    # Pool workers leave through multiprocessing's exit handlers, not atexit.
    multiprocessing.util.Finalize(worker, worker.close, exitpriority=10)


def _die_with_parent(parent_pid: int | None) -> None:
    # A driver killed with SIGKILL cannot stop its workers.  Left running they
    # would store items that the resumed sweep computes again, so each worker
    # dies with its parent: every item is done exactly once.
    parent, asked = os.getppid(), False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            asked = ctypes.CDLL(None).prctl(1, signal.SIGKILL) == 0  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if not asked:
        _watch_parent(parent)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the driver died before we could ask to follow it


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="datamanager-watch-parent").start()


def run_local(chunk: list[Entry]) -> Ack:
    assert _LOCAL is not None, "run_tasks worker used outside its pool"
    worker, stop, counter, partial = _LOCAL
    return worker.run(chunk, stop, counter, partial)


_DASK: dict[str, Worker] = {}  # run id -> state, in each Dask worker process
_DASK_LOCK = threading.Lock()


def run_dask(spec: Spec, chunk: list[Entry]) -> Ack:
    with _DASK_LOCK:
        worker = _DASK.get(spec.run_id)
        if worker is None:
            worker = _DASK[spec.run_id] = Worker(spec, _dask_number())
    return worker.run(chunk)


def _dask_number() -> int:
    # LocalCluster names its workers 0..n-1; other clusters name them freely.
    from distributed import get_worker

    name = get_worker().name
    return name if isinstance(name, int) else 0


def close_dask(run_id: str) -> None:
    with _DASK_LOCK:
        worker = _DASK.pop(run_id, None)
    if worker is not None:
        worker.close()
