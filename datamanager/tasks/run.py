"""Running a sweep: :func:`run_tasks` checks its arguments, keys the items,
picks the pool and hands over to a :class:`~datamanager.tasks.driver.Sweep`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from .. import provenance
from .._progress import progress_bar
from ..errors import warn_caller
from .driver import Sweep
from .files import ItemFiles
from .itemkeys import digest
from .pools import DaskPool, LocalPool, Pool, check_importable
from .queries import stored_keys
from .records import TaskSummary, sweep_name
from .worker import Entry, Spec, describe

if TYPE_CHECKING:
    from ..manager import DataManager

__all__ = ["key_of", "plan", "run_tasks"]


def run_tasks(
    dm: DataManager,
    task: Callable[..., Any],
    items: Iterable[Any],
    gui: bool = True,
    poolsize: int = 0,
    initargs: Sequence[Any] | None = None,
    initkwds: Mapping[str, Any] | None = None,
    verbose: bool | None = None,
    numitems: int | None = None,
    *,
    processes: int | None = None,
    client: Any = None,
    progress: bool | None = None,
    resume: bool = True,
    name: str | None = None,
    key: Callable[[Any], str] | None = None,
    mp_context: Any = None,
    chunksize: int | None = None,
    index: bool = True,
    metadata: Mapping[str, Any] | None = None,
    links: Mapping[str, Any] | None = None,
) -> TaskSummary:
    """Run ``task(item)`` for every item in parallel, storing each result in *dm*.

    Each worker process opens its own session once (``dm.session()``, with the
    task recorded in its metadata) and stores the result of ``item`` under
    ``<name>/<key>``, the item itself under ``<name>.items/<key>`` in the
    session's task records (which collation does not see), where the key is
    :func:`item_key` of the item.  Items travel to the workers in
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
    task : callable or class
        ``task(item) -> result``; the result must be picklable.  An item that
        is a tuple is unpacked, ``task(*item)`` (results are still keyed,
        and :func:`task_results` still returns, the whole tuple); a task
        taking one tuple argument must wrap it, ``[(t,) for t in items]``.
        A class is instantiated once in each worker process,
        ``task(*initargs, **initkwds)``, with ``process_number=`` (0 to
        *processes* - 1 locally) if its ``__init__`` takes it; the instance
        is then called per item.  A task (or ``__call__``) that takes a
        ``report`` keyword gets ``report(elapsed, complete)``, which moves
        the progress bar by the fraction *complete* of the current item.
    items : iterable
        The parameter sets (see :func:`item_key` for what they may hold).
        Each :class:`pathlib.Path` in an item (nested too) is stored in the
        data directory's file store, once per distinct file, and replaced
        by its :class:`~datamanager.StoredFile`: the task receives that,
        bound to the stored copy, and the stored item refers to it (see
        :mod:`datamanager.tasks.files`).  Not with *key*, where items go to
        the task as given.
    gui : bool
        Brian's name for *progress*: whether to show progress (a bar, not a
        window); *progress*, when given, wins.
    poolsize : int
        Brian's name for *processes*: 0 leaves it to *processes*, ``n > 0``
        runs *n* processes, ``-n`` all CPUs but *n* (at least one).  A
        *processes* that disagrees is refused.
    initargs, initkwds : sequence and mapping, optional
        Arguments of a task that is a class.
    verbose : bool, optional
        ``True`` prints a progress line to stderr at each tenth of the sweep
        where no bar shows (a log, a pipe); ``False`` shows no progress at
        all; by default only *gui* / *progress* count.
    numitems : int, optional
        Brian's length of an iterator of items, for his progress estimate.
        Accepted and checked only: the items are keyed before anything
        runs, so their number is known exactly.
    processes : int, optional
        Size of the local pool; ``os.cpu_count()`` by default.
    client : dask.distributed.Client, optional
        Run on this cluster instead.  Every worker must see the data
        directory at the same path (a shared filesystem).
    progress : bool, optional
        Show a tqdm progress bar (when tqdm is installed and stderr is a
        terminal); *gui* by default.
    resume : bool
        Skip items whose result is already stored.
    name : str, optional
        The sweep's name, the prefix of its keys; the task's ``__qualname__``
        by default (required for lambdas and partials).
    key : callable, optional
        ``key(item) -> str``, used instead of :func:`item_key`, for items that
        have no canonical form; their Paths are then not stored.
    mp_context : str or multiprocessing context, optional
        Start method of the local pool; Python's default when omitted.
    chunksize : int, optional
        Items per chunk.  By default four chunks per local worker (as
        ``Pool.map``); on Dask about :data:`CHUNK_SECONDS` of measured work,
        never more than a fair share of what is left.
    index : bool
        Bring the data directory's index up to date when the sweep ends (see
        :meth:`~datamanager.DataManager.build_index`), so that collating the
        results is fast; a failure to write it is a warning, never an error.
    metadata : mapping, optional
        More entries (JSON-able values) for the metadata of every session
        the sweep writes, beside the task's (``task``, ``task_name``,
        ``task_run``, ``task_parameters``), which they cannot replace.
    links : mapping, optional
        Item key -> where that item came from (builtin values), stored as
        the task record ``<name>.links/<key>`` of each item that is to run,
        in one transaction before anything runs, so that every result has
        its link whatever stops the sweep (what :func:`rerun_tasks`
        passes; :func:`task_table` shows the linked originals).

    Returns
    -------
    TaskSummary

    Raises
    ------
    OSError
        A Path in an item names no readable file (before anything runs).
    TypeError
        An item without a canonical form (before anything runs), a task
        that cannot be named or that workers could not import (see Notes),
        *initargs* / *initkwds* for a task that is no class, a count
        (*processes*, *chunksize*, *poolsize*, *numitems*) not an int, or
        *metadata* that is not JSON-able.
    ValueError
        *processes* or *chunksize* below 1, *numitems* below 0,
        *poolsize* and *processes* disagreeing, or *metadata* replacing an
        entry the sweep records (before anything runs).
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
    >>> from datamanager.tasks import task_results
    >>> sorted(result for item, result in task_results(dm, square))
    [0, 1, 4, 9]
    >>> run_tasks(dm, square, range(6), processes=2).skipped
    4
    """
    started = time.perf_counter()
    _check_count("processes", processes)
    _check_count("chunksize", chunksize)
    _check_count("numitems", numitems, minimum=0)
    processes = _pool_size(poolsize, processes)
    if not callable(task):
        raise TypeError(f"task must be callable, not {type(task).__name__}")
    if (initargs or initkwds) and not isinstance(task, type):
        raise TypeError("initargs and initkwds are for a task that is a class")
    name = name if name is not None else sweep_name(task)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, not {name!r}")
    qualname = f"{getattr(task, '__module__', None)}.{getattr(task, '__qualname__', name)}"
    spec = Spec(
        dm,
        task,
        name,
        qualname,
        uuid.uuid4().hex,
        tuple(initargs or ()),
        initkwds,
        _check_metadata(metadata),
    )
    stored = stored_keys(dm) if resume else set()
    todo, skipped, rejected = plan(items, name, key, stored, ItemFiles(dm.basepath))
    new_pool = _pool_maker(spec, len(todo), processes, client, mp_context, chunksize)
    sweep = Sweep(spec, todo, new_pool, skipped=skipped, started=started)
    bar = None
    with _terminate_as_interrupt():
        try:
            if links:
                sweep.link({k: links[k] for _index, k, _item in todo if k in links})
            if rejected:
                sweep.reject(rejected)
            wanted = (gui if progress is None else progress) and verbose is not False
            make_bar = progress_bar(wanted and bool(todo))
            if make_bar is not None:
                bar = make_bar(total=len(todo), desc=name, unit="task", dynamic_ncols=True)
            elif verbose and todo:
                bar = _Lines(name, len(todo))
            if todo:
                # Git asked here, once, cached: forked workers inherit the answers
                # instead of each asking when its session opens.
                provenance.warm_cache()
            sweep.run(bar)
        except KeyboardInterrupt:
            print(
                "\nrun_tasks: interrupted; storing what the workers have computed "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
            )
            sweep.interrupt()
            print(f"run_tasks: {sweep.summary()}; run again to resume", file=sys.stderr)
            raise
        finally:
            if bar is not None:
                bar.close()
            sweep.close()
    if index and todo:
        try:
            dm.build_index()
        except OSError as exc:  # the results are stored: reading them is only slower
            warn_caller(f"run_tasks: the index of {dm.basepath} was not updated ({exc})")
    return sweep.summary()


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Stop on SIGTERM as cleanly as on Ctrl-C, then die of SIGTERM as before.

    Batch schedulers (SLURM at the time limit, ``kill``) send SIGTERM; what
    the workers computed is stored and the exit status still says SIGTERM.
    A handler the caller installed is left alone, and so is a sweep run
    outside the main thread, where Python cannot set handlers.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    received = []
    driver = os.getpid()

    def interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != driver:
            # A forked worker inherits this handler until it sets its own; it
            # must die of SIGTERM, or a pool that terminates it waits forever.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if received:
            signal.raise_signal(signal.SIGTERM)


def _check_count(argument: str, value: Any, minimum: int = 1) -> None:
    """Refuse a count that is neither None nor an int >= *minimum*, naming *argument*.

    Checked before anything runs: a chunk size of -1 would never advance the
    sweep, and 0 would silently mean the default.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int or None, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{argument} must be at least {minimum}, not {value}")


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Refuse, before anything runs, extra metadata that no session could store."""
    if metadata is None:
        return None
    entries = dict(metadata)
    clash = sorted(set(entries) & {"task", "task_name", "task_run", "task_parameters"})
    if clash:
        raise ValueError(f"metadata may not replace what the sweep records: {clash}")
    try:
        json.dumps(entries)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must hold JSON-able values ({exc})") from exc
    return entries


def _pool_size(poolsize: int, processes: int | None) -> int | None:
    """Reconcile Brian's *poolsize* with *processes*; return the process count.

    ``poolsize`` 0 leaves the choice to *processes* (all CPUs by default); a
    negative one leaves that many CPUs free, at least one process running.
    """
    if isinstance(poolsize, bool) or not isinstance(poolsize, int):
        raise TypeError(f"poolsize must be an int, not {type(poolsize).__name__}")
    if poolsize == 0:
        return processes
    size = poolsize if poolsize > 0 else max(1, (os.cpu_count() or 1) + poolsize)
    if processes is not None and processes != size:
        raise ValueError(f"poolsize={poolsize} and processes={processes} disagree; give one")
    return size


class _Lines:
    """Progress as lines on stderr, one per tenth of the sweep (``verbose=True``)."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.n, self._shown = name, total, 0.0, 0

    def update(self, delta: float) -> None:
        self.n += delta
        tenth = int(10 * self.n / self.total)
        if tenth > self._shown:
            self._shown = tenth
            print(f"{self.name}: {10 * tenth}% ({int(self.n)}/{self.total})", file=sys.stderr)

    def close(self) -> None:
        pass


def _pool_maker(
    spec: Spec,
    todo: int,
    processes: int | None,
    client: Any,
    mp_context: Any,
    chunksize: int | None,
) -> Callable[[], Pool]:
    """What makes the sweep's pools: Dask's for a *client*, else local processes."""
    if client is not None:
        return functools.partial(DaskPool, spec, client, chunksize)
    ctx = mp_context
    if ctx is None or isinstance(ctx, str):
        ctx = multiprocessing.get_context(ctx)
    if ctx.get_start_method() != "fork":
        check_importable(spec, ctx.get_start_method())
    workers = min(processes or os.cpu_count() or 1, todo or 1)
    return functools.partial(LocalPool, spec, workers, ctx, chunksize)


def key_of(item: Any, index: int, key: Callable[[Any], str] | None) -> str:
    """The key of ``items[index]``: :func:`item_key`, or what *key* returns, checked."""
    if key is None:
        return digest(item, f"items[{index}]")
    k = key(item)
    if not isinstance(k, str) or not k:
        raise TypeError(f"key(items[{index}]) returned {k!r}, not a non-empty str")
    return k


def plan(
    items: Iterable[Any],
    name: str,
    key: Callable[[Any], str] | None,
    stored: set[str],
    files: ItemFiles | None = None,
) -> tuple[list[Entry], int, list[tuple[Any, ...]]]:
    """Key every item; return what to run, how many to skip, and the unpicklable.

    With *files* (and no *key*), each Path in an item is first replaced by
    its StoredFile (see :mod:`~datamanager.tasks.files`), so that keying
    and storing share one hash of each distinct file.  The rejected come as
    failure outcomes ``(index, key, repr(item), None, error)`` for
    :meth:`Worker.store <datamanager.tasks.worker.Worker.store>`.
    """
    todo, seen, skipped, rejected = [], set(), 0, []
    for index, item in enumerate(items):
        if key is None and files is not None:
            item = files(item)
        k = key_of(item, index, key)
        if key is not None:
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
