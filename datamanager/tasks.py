"""Task farming: run a function over many items in parallel, keeping every result.

:func:`run_tasks` calls ``task(item)`` for each item on a local process pool
(:class:`concurrent.futures.ProcessPoolExecutor`) or on the workers of a
``dask.distributed.Client``; it never schedules anything itself.
Each worker process opens its own session once and stores every result under
a key derived from the item, so a sweep that is killed finishes by running the
same call again, and the results collate with the usual API.

Keys, for a sweep named ``name`` (the task's ``__qualname__`` by default) and an
item whose :func:`item_key` is ``k``:

- ``name/k``: the result, exactly as the task returned it;
- ``name.items/k``: the item, written in the same transaction as the result;
- ``name.failures/k``: a failure record (a dict of builtin values) when the
  task raised or its result could not be stored.

The keys come from :mod:`datamanager.itemkeys`; the worker processes and the
pools that feed them live in :mod:`datamanager._pools`.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import pickle
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import provenance
from ._pools import CHUNK_SECONDS as CHUNK_SECONDS
from ._pools import COMMIT_SECONDS as COMMIT_SECONDS
from ._pools import DaskPool, LocalPool, Spec, Worker, describe
from .itemkeys import digest, item_key

if TYPE_CHECKING:
    from .manager import DataManager

__all__ = ["TaskFailure", "TaskSummary", "item_key", "run_tasks", "task_failures", "task_results"]


@dataclass(frozen=True)
class TaskFailure:
    """One item whose task raised, or whose result could not be stored.

    Attributes
    ----------
    name : str
        The sweep's name (the key prefix).
    key : str
        The item's key; the failure is stored as ``<name>.failures/<key>``.
    item : object
        The item (its ``repr`` when the item itself could not be pickled).
    error : str
        ``'<ExceptionType>: <message>'``.
    traceback : str
        The formatted traceback, from the worker.
    worker : str
        ``<host>:<pid>`` of the process that ran (or rejected) the item.
    session : str
        The session holding the record.
    """

    name: str
    key: str
    item: Any
    error: str
    traceback: str
    worker: str
    session: str

    def __str__(self) -> str:
        return f"{self.name}({self.item!r}) failed on {self.worker}: {self.error}"


@dataclass(frozen=True)
class TaskSummary:
    """What one :func:`run_tasks` call did.

    Attributes
    ----------
    name : str
        The sweep's name (the key prefix of its results).
    done : int
        Items computed and stored by this call.
    skipped : int
        Items already stored by an earlier run, or repeated in *items*.
    failed : int
        Items that failed in this call (each has a failure record).
    elapsed : float
        Wall time of the call in seconds.
    failures : tuple of TaskFailure
        This call's failures.
    """

    name: str
    done: int
    skipped: int
    failed: int
    elapsed: float
    failures: tuple[TaskFailure, ...] = ()

    def __str__(self) -> str:
        return (
            f"{self.name}: {self.done} done, {self.skipped} skipped, {self.failed} failed "
            f"in {self.elapsed:.1f} s"
        )


def _task_name(task: Any) -> str:
    if isinstance(task, str):
        return task
    qualname = getattr(task, "__qualname__", None)
    if not isinstance(qualname, str) or "<lambda>" in qualname:
        raise TypeError(
            f"cannot name the sweep after {task!r} (a lambda, partial or callable object "
            "may stand for many computations); pass name="
        )
    return qualname


def _progress_bar(enabled: bool, total: int, name: str) -> Any:
    if not enabled or not total or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=name, unit="task", file=sys.stderr, dynamic_ncols=True)


def _plan(
    items: Iterable[Any], name: str, key: Callable[[Any], str] | None, stored: set[str]
) -> tuple[list[tuple[int, str, Any]], int, list[tuple[Any, ...]]]:
    """Key every item; return what to run, how many to skip, and the unpicklable.

    The rejected come as failure outcomes ``(index, key, repr(item), None,
    error)`` for :meth:`Worker.store <datamanager._pools.Worker.store>`.
    """
    todo, seen, skipped, rejected = [], set(), 0, []
    for index, item in enumerate(items):
        if key is None:
            k = digest(item, f"items[{index}]")
        else:
            k = key(item)
            if not isinstance(k, str) or not k:
                raise TypeError(f"key(items[{index}]) returned {k!r}, not a non-empty str")
            try:  # a process pool would choke on it later, far from the cause
                pickle.dumps(item, protocol=5)
            except Exception as exc:
                rejected.append((index, k, repr(item), None, describe(exc)))
                continue
        if k in seen or f"{name}/{k}" in stored:
            skipped += 1
            continue
        seen.add(k)
        todo.append((index, k, item))
    return todo, skipped, rejected


def run_tasks(
    dm: DataManager,
    task: Callable[[Any], Any],
    items: Iterable[Any],
    processes: int | None = None,
    client: Any = None,
    progress: bool = True,
    resume: bool = True,
    *,
    name: str | None = None,
    key: Callable[[Any], str] | None = None,
    mp_context: Any = None,
    chunksize: int | None = None,
) -> TaskSummary:
    """Run ``task(item)`` for every item in parallel, storing each result in *dm*.

    Each worker process opens its own session once (``dm.session()``, with the
    task recorded in its metadata) and stores the result of ``item`` under
    ``<name>/<key>``, the item itself under ``<name>.items/<key>``, where the
    key is :func:`item_key` of the item.  Items travel to the workers in
    chunks; a worker commits its results at the end of each chunk and at
    least every :data:`COMMIT_SECONDS`, and only a small acknowledgement comes
    back.

    A task that raises does not stop the sweep: the traceback, item and worker
    are stored as a failure record (see :func:`task_failures`) and counted in
    the summary; a later run retries the item.  With *resume*, items whose
    result is already stored anywhere in the data directory are skipped, so a
    sweep killed half-way (Ctrl-C, SIGKILL of this process, a lost worker)
    finishes by calling ``run_tasks`` again.  Local workers die with this
    process, so none stores anything after it.  Ctrl-C stops cleanly: nothing
    new starts, local workers stop after their current item and store what
    they computed (a second Ctrl-C stops them at once), the pool shuts down
    and :class:`KeyboardInterrupt` propagates.  On Dask, chunks already
    running finish (and store) after the call returns.

    Parameters
    ----------
    dm : DataManager
        Where results go; pickled (as configuration) to the workers.
    task : callable
        ``task(item) -> result``; the result must be picklable.
    items : iterable
        The parameter sets (see :func:`item_key` for what they may hold).
    processes : int, optional
        Size of the local pool; ``os.cpu_count()`` by default.
    client : dask.distributed.Client, optional
        Run on this cluster instead.  Every worker must see the data
        directory at the same path (a shared filesystem).
    progress : bool
        Show a tqdm progress bar (when tqdm is installed and stderr is a
        terminal).
    resume : bool
        Skip items whose result is already stored.
    name : str, optional
        The sweep's name, the prefix of its keys; the task's ``__qualname__``
        by default (required for lambdas and partials).
    key : callable, optional
        ``key(item) -> str``, used instead of :func:`item_key`, for items that
        have no canonical form.
    mp_context : str or multiprocessing context, optional
        Start method of the local pool; Python's default when omitted.
    chunksize : int, optional
        Items per chunk.  By default four chunks per local worker (as
        ``Pool.map``); on Dask about :data:`CHUNK_SECONDS` of measured work,
        never more than a fair share of what is left.

    Returns
    -------
    TaskSummary

    Raises
    ------
    TypeError
        An item without a canonical form (before anything runs), or a task
        that cannot be named.
    KeyboardInterrupt
        After a clean stop on Ctrl-C.

    Notes
    -----
    A local worker that dies (a crash, the OOM killer) takes its chunk with
    it: the items of the chunks in flight are recorded as failed (which item
    was to blame is unknown), a new pool takes over and a later run retries
    them.  Dask retries a lost worker's chunk elsewhere by itself; if the
    worker had already committed part of it, those items are stored twice
    (:func:`task_results` keeps the newest).  With a start method other than
    ``fork`` (and on Dask) the task must be importable or picklable.

    Examples
    --------
    >>> import tempfile
    >>> from datamanager import DataManager
    >>> dm = DataManager("sweep", tempfile.mkdtemp())
    >>> def square(x):
    ...     return x * x
    >>> print(run_tasks(dm, square, range(4), processes=2, progress=False))  # doctest: +ELLIPSIS
    square: 4 done, 0 skipped, 0 failed in ... s
    >>> sorted(result for item, result in task_results(dm, square))
    [0, 1, 4, 9]
    >>> run_tasks(dm, square, range(6), processes=2).skipped
    4
    """
    started = time.perf_counter()
    if not callable(task):
        raise TypeError(f"task must be callable, not {type(task).__name__}")
    name = name if name is not None else _task_name(task)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, not {name!r}")
    qualname = f"{getattr(task, '__module__', None)}.{getattr(task, '__qualname__', name)}"
    spec = Spec(dm, task, name, qualname, uuid.uuid4().hex)
    stored = _stored_keys(dm) if resume else set()
    todo, skipped, rejected = _plan(items, name, key, stored)
    items_by_index = {index: item for index, _k, item in todo}
    failures: list[TaskFailure] = []
    local = Worker(spec)  # records failures that never reached a worker

    def record(acks: list[tuple[Any, ...]], session: str) -> None:
        for index, k, error, tb, worker in acks:
            item = items_by_index.get(index)
            failures.append(TaskFailure(name, k, item, error, tb, worker, session))

    if rejected:
        items_by_index.update((index, item) for index, _k, item, _r, _e in rejected)
        record(local.store(rejected), local.session.name)
    done, settled, base = 0, 0, 0  # items stored; items in settled chunks; at pool start
    ran_total, seconds_total = 0, 0.0  # items run and their compute time, for chunk sizes

    def summary() -> TaskSummary:
        elapsed = time.perf_counter() - started
        return TaskSummary(name, done, skipped, len(failures), elapsed, tuple(failures))

    def settle(future: Any, chunk: list[tuple[int, str, Any]]) -> bool:
        """Account for one finished chunk; return whether it broke the pool."""
        nonlocal done, settled, ran_total, seconds_total
        try:
            acks, ran, seconds, session = future.result()
            lost = False
        except Exception as exc:
            # A worker died (a crash, the OOM killer) or Dask gave up on a
            # chunk (KilledWorker).  Which item was to blame is unknown, so
            # each is recorded as failed for a later run to retry; the sweep
            # goes on.
            error = describe(exc)
            # A worker that died mid-chunk may have committed part of it:
            # those items are done, and only the rest become failures.
            stored = _stored_keys(dm)
            lost_items = [c for c in chunk if f"{name}/{c[1]}" not in stored]
            acks = local.store([(i, k, item, None, error) for i, k, item in lost_items])
            ran, seconds, session = len(chunk), 0.0, local.session.name
            lost = isinstance(exc, cf.process.BrokenProcessPool)
        record(acks, session)
        done += ran - len(acks)
        settled += len(chunk)
        ran_total += ran
        seconds_total += seconds
        return lost

    bar = _progress_bar(progress, len(todo), name)
    pool: Any = None
    pending: dict[Any, list[tuple[int, str, Any]]] = {}
    try:
        if todo:
            # One git subprocess here, cached: forked workers inherit the answer
            # instead of each running its own when its session opens.
            provenance.git_state(provenance.script_directory())
        if client is not None and todo:
            pool = DaskPool(spec, client, chunksize)
        else:
            ctx = mp_context
            if ctx is None or isinstance(ctx, str):
                ctx = multiprocessing.get_context(ctx)
            workers = min(processes or os.cpu_count() or 1, len(todo) or 1)
        position, broken = 0, False
        while position < len(todo) or pending:
            if pool is None or (broken and not pending):
                if pool is not None:  # a worker died: a broken pool takes no more work
                    pool.close()
                pool, broken, base = LocalPool(spec, workers, ctx, chunksize), False, settled
            while not broken and position < len(todo) and len(pending) < 2 * pool.slots:
                per_item = seconds_total / ran_total if ran_total else None
                size = pool.chunk_size(len(todo), len(todo) - position, per_item)
                chunk, position = todo[position : position + size], position + size
                pending[pool.submit(chunk)] = chunk
            for future in pool.wait(list(pending), None if bar is None else 0.1):
                broken = settle(future, pending.pop(future)) or broken
            if bar is not None:
                bar.update(max(settled, base + (pool.finished() or 0)) - bar.n)
    except KeyboardInterrupt:
        print(
            "\nrun_tasks: interrupted; storing what the workers have computed "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
        )
        try:
            running = pool.interrupt(list(pending)) if pool is not None else []
            for future in cf.as_completed(running):
                settle(future, pending.pop(future))
        except KeyboardInterrupt:
            if pool is not None:
                pool.terminate()
        print(f"run_tasks: {summary()}; run again to resume", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.close()
        local.close()
    return summary()


def _stored_keys(dm: DataManager) -> set[str]:
    """Every key in *dm*; none where nothing was written yet (not even its folder)."""
    try:
        return set(dm.keys())
    except FileNotFoundError:  # the first result will create the folder
        return set()


def _sweep_names(keys: Iterable[str]) -> set[str]:
    """The names of the sweeps that stored anything (a result or a failure) among *keys*."""
    names = set()
    for k in keys:
        for marker in (".items/", ".failures/"):
            name, sep, _ = k.partition(marker)
            if sep:
                names.add(name)
    return names


def _unknown_sweep(dm: DataManager, name: str, keys: Iterable[str]) -> KeyError:
    """The error for a sweep *name* that stored nothing in *dm*, naming those that did."""
    known = ", ".join(repr(n) for n in sorted(_sweep_names(keys))) or "none"
    return KeyError(f"no sweep named {name!r} in {dm.basepath} (sweeps stored there: {known})")


def task_results(dm: DataManager, task: Callable[..., Any] | str) -> list[tuple[Any, Any]]:
    """Return the ``(item, result)`` pairs a sweep stored, one per item.

    Parameters
    ----------
    dm : DataManager
        The data directory the sweep wrote to.
    task : callable or str
        The task, or the sweep's name (``name=`` of :func:`run_tasks`).

    Returns
    -------
    list of (item, result)
        In session creation order; an item stored more than once (by
        ``resume=False``, or by a Dask worker lost after storing a chunk)
        appears once, with its newest result.  Empty for a sweep whose every
        item failed so far.

    Raises
    ------
    KeyError
        If no sweep of that name stored anything, neither a result nor a
        failure (a typo); the message lists the sweeps that did.
    """
    name = _task_name(task)
    prefix, found, keys = name + "/", {}, set()
    for reader in dm.iter_sessions():
        with reader:
            names = reader.keys()
            keys.update(names)
            for k in names:
                if k.startswith(prefix):
                    digest = k[len(prefix) :]
                    found[digest] = (reader.get(f"{name}.items/{digest}"), reader[k])
    if not found and name not in _sweep_names(keys):
        raise _unknown_sweep(dm, name, keys)
    return list(found.values())


def task_failures(
    dm: DataManager, task: Callable[..., Any] | str | None = None
) -> list[TaskFailure]:
    """Return the failures of a sweep (or of all sweeps) that no later run fixed.

    A failure record stays in its session for good; it is listed here until a
    later :func:`run_tasks` stores a result for the same item.  Each item
    appears once, with its newest failure.

    Parameters
    ----------
    dm : DataManager
        The data directory the sweeps wrote to.
    task : callable or str, optional
        The task, or the sweep's name; every sweep when omitted.

    Returns
    -------
    list of TaskFailure
        In session creation order.

    Raises
    ------
    KeyError
        If *task* is given and no sweep of that name stored anything (a
        typo); the message lists the sweeps that did.
    """
    marker = ".failures/"
    wanted = None if task is None else _task_name(task)
    records: dict[tuple[str, str], TaskFailure] = {}
    keys: set[str] = set()
    for reader in dm.iter_sessions():
        with reader:
            names = reader.keys()
            keys.update(names)
            for k in names:
                name, sep, digest = k.rpartition(marker)
                if sep and (wanted is None or name == wanted):
                    rec = reader[k]
                    records[name, digest] = TaskFailure(
                        name,
                        digest,
                        rec.get("item"),
                        rec.get("error", ""),
                        rec.get("traceback", ""),
                        rec.get("worker", ""),
                        reader.name,
                    )
    if wanted is not None and wanted not in _sweep_names(keys):
        raise _unknown_sweep(dm, wanted, keys)
    return [f for (name, digest), f in records.items() if f"{name}/{digest}" not in keys]
