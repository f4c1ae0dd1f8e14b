"""Task farming: run a function over many items in parallel, keeping every result.

:func:`run_tasks` calls ``task(item)`` for each item on a local process pool
(:class:`concurrent.futures.ProcessPoolExecutor`) or on the workers of a
``dask.distributed.Client``; it never schedules anything itself (issue #5).
Each worker process opens its own session once and stores every result under
a key derived from the item, so a sweep that is killed finishes by running the
same call again, and the results collate with the usual API.

Keys, for a sweep named ``name`` (the task's ``__qualname__`` by default) and an
item whose :func:`item_key` is ``k``:

- ``name/k``: the result, exactly as the task returned it;
- ``name.items/k``: the item, written in the same transaction as the result;
- ``name.failures/k``: a failure record (a dict of builtin values) when the
  task raised or its result could not be stored.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import math
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from . import provenance
from .errors import UnstorableValueError

if TYPE_CHECKING:
    from .manager import DataManager

__all__ = ["TaskFailure", "TaskSummary", "item_key", "run_tasks", "task_failures", "task_results"]

# Bumped whenever the canonical encoding changes, so old and new keys never meet.
_KEY_VERSION = b"datamanager item key 1\0"
#: A worker commits what it has computed at least this often (seconds).
COMMIT_SECONDS = 1.0
#: Work per chunk sent to a Dask cluster (seconds, as measured).
CHUNK_SECONDS = 0.2
_SUPPORTED = (
    "None, bool, int, float, complex, str, bytes, and lists, tuples, dicts, sets "
    "of them, numpy arrays and scalars"
)


# -- deterministic keys ----------------------------------------------------------------


def item_key(item: Any) -> str:
    """Return the stable key of *item*: a hash of its canonical form.

    Equal items give equal keys in every process, run, Python hash seed and
    platform: dicts and sets are ordered by content, numpy scalars count as the
    Python numbers they equal, -0.0 as 0.0, every NaN as one NaN, numpy arrays
    by dtype, shape and (little-endian) bytes.  Values of different kinds stay
    apart even when Python calls them equal (``1``, ``1.0`` and ``True``; a list
    and a tuple; a list and an array).

    Parameters
    ----------
    item : object
        None, bool, int, float, complex, str, bytes, numpy arrays (not of
        dtype object) and scalars, and lists, tuples, dicts and sets of these.

    Returns
    -------
    str
        32 hexadecimal digits.

    Raises
    ------
    TypeError
        For any other value, naming where in the item it was found.

    Examples
    --------
    >>> item_key({"tau": 0.01, "I": 2}) == item_key({"I": 2, "tau": 0.01})
    True
    >>> item_key(1) == item_key(1.0)
    False
    >>> item_key([open])
    Traceback (most recent call last):
    ...
    TypeError: item[0]: cannot derive a stable key from a value of type ...
    """
    return _digest(item, "item")


def _digest(item: Any, path: str) -> str:
    return hashlib.blake2b(_KEY_VERSION + _encode(item, path, set()), digest_size=16).hexdigest()


def _tlv(tag: bytes, payload: bytes) -> bytes:
    # Tag and length make every encoding self-delimiting, so concatenations
    # of different items can never coincide.
    return tag + len(payload).to_bytes(8, "little") + payload


def _float(x: float) -> bytes:
    return b"nan" if math.isnan(x) else (x + 0.0).hex().encode()  # + 0.0 turns -0.0 into 0.0


def _encode(obj: Any, path: str, active: set[int]) -> bytes:
    if obj is None:
        return b"N"
    if isinstance(obj, (bool, np.bool_)):
        return b"T" if obj else b"F"
    if isinstance(obj, (int, np.integer)):
        return _tlv(b"i", str(int(obj)).encode())
    if isinstance(obj, (float, np.floating)) and np.asarray(obj).itemsize <= 8:
        return _tlv(b"f", _float(float(obj)))
    if isinstance(obj, (complex, np.complexfloating)) and np.asarray(obj).itemsize <= 16:
        z = complex(obj)
        return _tlv(b"c", _float(z.real) + b"," + _float(z.imag))
    if isinstance(obj, str):
        return _tlv(b"s", obj.encode("utf-8", "surrogatepass"))
    if isinstance(obj, (bytes, bytearray)):
        return _tlv(b"b", bytes(obj))
    if isinstance(obj, np.generic):  # long double and friends: exact, as a 0-d array
        return _encode_array(np.asarray(obj), path)
    if isinstance(obj, np.ndarray) and not isinstance(obj, np.ma.MaskedArray):
        return _encode_array(obj, path)
    if isinstance(obj, (list, tuple, dict, set, frozenset)):
        if id(obj) in active:
            raise TypeError(f"{path}: a container that contains itself has no stable key")
        active.add(id(obj))
        try:
            if isinstance(obj, dict):
                pairs = sorted(
                    _encode(k, f"{path} key {k!r}", active) + _encode(v, f"{path}[{k!r}]", active)
                    for k, v in obj.items()
                )
                return _tlv(b"d", b"".join(pairs))
            if isinstance(obj, (set, frozenset)):
                parts = sorted(_encode(v, f"{path} element {v!r}", active) for v in obj)
                return _tlv(b"S", b"".join(parts))
            tag = b"l" if isinstance(obj, list) else b"t"
            return _tlv(
                tag, b"".join(_encode(v, f"{path}[{i}]", active) for i, v in enumerate(obj))
            )
        finally:
            active.discard(id(obj))
    raise TypeError(
        f"{path}: cannot derive a stable key from a value of type {type(obj).__qualname__}; "
        f"items may hold {_SUPPORTED} (or pass key= to run_tasks)"
    )


def _encode_array(a: np.ndarray, path: str) -> bytes:
    if a.dtype.hasobject:
        raise TypeError(f"{path}: a numpy array of dtype {a.dtype} has no stable key")
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.astype(a.dtype.newbyteorder("<"))
    header = repr(a.dtype.descr if a.dtype.fields else a.dtype.str) + repr(a.shape)
    data = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    return _tlv(b"a", header.encode() + hashlib.blake2b(data, digest_size=16).digest())


# -- records -----------------------------------------------------------------------------


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


# What a chunk sends back: failures (index, key, error, traceback, worker), the
# number of items run, their compute time and the session name.
Ack = tuple[list[tuple[Any, ...]], int, float, str]


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _describe(exc: BaseException) -> tuple[str, str]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}", tb


# -- the worker side ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """What a worker needs to run a sweep; pickles as configuration only."""

    dm: DataManager
    task: Callable[[Any], Any]
    name: str
    qualname: str
    run_id: str


class _Worker:
    """The sweep's state in one process: its session, opened at the first result."""

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.session: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        with self._lock:  # Dask runs several threads in one worker process
            if self.session is None:
                session = self.spec.dm.session()
                session.update_metadata(
                    {
                        "task": self.spec.qualname,
                        "task_name": self.spec.name,
                        "task_run": self.spec.run_id,
                    }
                )
                self.session = session
            return self.session

    def run(self, chunk: list[tuple[int, str, Any]], stop: Any = None, counter: Any = None) -> Ack:
        """Run and store one chunk; return only a small acknowledgement.

        Results are committed at the end of the chunk and at least every
        :data:`COMMIT_SECONDS`, so long tasks lose little to a crash.  *stop*
        (an event) ends the chunk early between items; *counter* (a shared
        integer) counts finished items for the progress bar.
        """
        outcomes: list[tuple[Any, ...]] = []
        failures: list[tuple[Any, ...]] = []
        ran, seconds, committed = 0, 0.0, time.monotonic()
        for index, key, item in chunk:
            if stop is not None and stop.is_set():
                break
            start = time.perf_counter()
            try:
                outcomes.append((index, key, item, self.spec.task(item), None))
            except Exception as exc:  # the sweep goes on; the failure is recorded
                outcomes.append((index, key, item, None, _describe(exc)))
            seconds += time.perf_counter() - start
            ran += 1
            if counter is not None:
                with counter.get_lock():
                    counter.value += 1
            if time.monotonic() - committed >= COMMIT_SECONDS:
                failures += self.store(outcomes)
                outcomes, committed = [], time.monotonic()
        if outcomes:
            failures += self.store(outcomes)
        return failures, ran, seconds, getattr(self.session, "name", "")

    def store(self, outcomes: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Write results and failure records in one transaction; return the failures.

        Everything goes through one ``session.update()``, so a bulk write in
        the session speeds this up too; a result that cannot be pickled
        (:class:`UnstorableValueError` names its key) becomes that item's
        failure and the rest is written again.
        """
        name, worker, failures = self.spec.name, _worker_name(), []
        writes: dict[str, Any] = {}
        owner: dict[str, tuple[Any, ...]] = {}
        for outcome in outcomes:
            index, key, item, result, error = outcome
            if error is None:
                writes[f"{name}/{key}"], writes[f"{name}.items/{key}"] = result, item
                owner[f"{name}/{key}"] = outcome
            else:
                failures.append((index, key, item, error))
        session = self._open()
        with session.transaction():
            while True:
                try:
                    session.update(writes)
                    break
                except UnstorableValueError as exc:
                    if exc.key not in owner:
                        raise
                    index, key, item, _result, _error = owner.pop(exc.key)
                    del writes[f"{name}/{key}"], writes[f"{name}.items/{key}"]
                    failures.append((index, key, item, _describe(exc)))
            now, task = time.time(), self.spec.qualname
            session.update(
                {
                    f"{name}.failures/{key}": dict(
                        item=item,
                        error=error[0],
                        traceback=error[1],
                        worker=worker,
                        time=now,
                        task=task,
                    )
                    for _index, key, item, error in failures
                }
            )
        return [(index, key, error[0], error[1], worker) for index, key, _item, error in failures]

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


# This pool worker's state, set by _init_local: the worker, the driver's stop
# event and the shared count of finished items.
_LOCAL: tuple[_Worker, Any, Any] | None = None


def _init_local(spec: _Spec, parent_pid: int | None, stop: Any, counter: Any) -> None:
    global _LOCAL
    # Ctrl-C at a terminal reaches the whole process group; the driver alone
    # decides what happens then (it sets *stop*), so no task is cut in half.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    worker = _Worker(spec)
    _LOCAL = (worker, stop, counter)
    # Pool workers leave through multiprocessing's exit handlers, not atexit.
    multiprocessing.util.Finalize(worker, worker.close, exitpriority=10)


def _die_with_parent(parent_pid: int | None) -> None:
    # A driver killed with SIGKILL cannot stop its workers.  Left running they
    # would store items that the resumed sweep computes again, so each worker
    # dies with its parent (issue #5: every item done exactly once).
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            asked = ctypes.CDLL(None).prctl(1, signal.SIGKILL) == 0  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            asked = False
        if not asked:
            _watch_parent(parent)
    else:
        _watch_parent(parent)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the driver died before we could ask to follow it


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="datamanager-watch-parent").start()


def _run_local(chunk: list[tuple[int, str, Any]]) -> Ack:
    assert _LOCAL is not None, "run_tasks worker used outside its pool"
    worker, stop, counter = _LOCAL
    return worker.run(chunk, stop, counter)


_DASK: dict[str, _Worker] = {}  # run id -> state, in each Dask worker process
_DASK_LOCK = threading.Lock()


def _run_dask(spec: _Spec, chunk: list[tuple[int, str, Any]]) -> Any:
    with _DASK_LOCK:
        worker = _DASK.get(spec.run_id)
        if worker is None:
            worker = _DASK[spec.run_id] = _Worker(spec)
    return worker.run(chunk)


def _close_dask(run_id: str) -> None:
    with _DASK_LOCK:
        worker = _DASK.pop(run_id, None)
    if worker is not None:
        worker.close()


# -- the driver side ---------------------------------------------------------------------


class _LocalPool:
    """Chunks on a local process pool; the pool schedules, we only batch."""

    def __init__(self, spec: _Spec, processes: int, ctx: Any, chunksize: int | None) -> None:
        method = ctx.get_start_method()
        if method != "fork":  # the task travels to the workers by pickle
            try:
                pickle.dumps(spec.task, protocol=5)
            except Exception as exc:
                raise TypeError(
                    f"the task {spec.qualname} cannot be pickled for {method!r} workers "
                    f"({exc}); define it at module level"
                ) from exc
        else:
            # Forked workers inherit this process's cached git state, so
            # each need not run its own git subprocess when its session opens.
            provenance.git_state(provenance.script_directory())
        # Under forkserver the workers' parent is the fork server, not us.
        parent = os.getpid() if method in ("fork", "spawn") else None
        self.slots, self.chunksize = processes, chunksize
        self.stop, self.counter = ctx.Event(), ctx.Value("q", 0)
        self.executor = cf.ProcessPoolExecutor(
            processes, mp_context=ctx, initializer=_init_local,
            initargs=(spec, parent, self.stop, self.counter),
        )  # fmt: skip

    def chunk_size(self, total: int, remaining: int, per_item: float | None) -> int:
        # Pool.map's choice: four chunks per worker.  Workers commit within a
        # chunk, report progress through the shared counter and stop between
        # items, so a large chunk costs neither durability nor a prompt Ctrl-C.
        return self.chunksize or max(1, math.ceil(total / (4 * self.slots)))

    def submit(self, chunk: list[tuple[int, str, Any]]) -> Any:
        return self.executor.submit(_run_local, chunk)

    def wait(self, pending: Iterable[Any], timeout: float | None) -> Iterable[Any]:
        return cf.wait(pending, timeout, return_when=cf.FIRST_COMPLETED).done

    def finished(self) -> int | None:
        return self.counter.value

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
        for process in list(getattr(self.executor, "_processes", {}).values()):
            process.terminate()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class _DaskPool:
    """Chunks on a Dask cluster; only acknowledgements come back."""

    def __init__(self, spec: _Spec, client: Any, chunksize: int | None) -> None:
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

    def submit(self, chunk: list[tuple[int, str, Any]]) -> Any:
        future = self.client.submit(_run_dask, self.spec, chunk, pure=False)
        self.completed.add(future)
        return future

    def wait(self, pending: Iterable[Any], timeout: float | None) -> Iterable[Any]:
        return self.completed.next_batch(block=True)

    def finished(self) -> int | None:
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
            self.client.run(_close_dask, self.spec.run_id)
        except Exception:  # a lost worker: its session is durable anyway
            pass


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
    spec = _Spec(dm, task, name, qualname, uuid.uuid4().hex)
    stored = set(dm.keys()) if resume else set()
    todo, seen, skipped, rejected = [], set(), 0, []
    for index, item in enumerate(items):
        if key is None:
            k = _digest(item, f"items[{index}]")
        else:
            k = key(item)
            if not isinstance(k, str) or not k:
                raise TypeError(f"key(items[{index}]) returned {k!r}, not a non-empty str")
            try:  # a process pool would choke on it later, far from the cause
                pickle.dumps(item, protocol=5)
            except Exception as exc:
                rejected.append((index, k, repr(item), None, _describe(exc)))
                continue
        if k in seen or f"{name}/{k}" in stored:
            skipped += 1
            continue
        seen.add(k)
        todo.append((index, k, item))
    items_by_index = {index: item for index, _k, item in todo}
    failures: list[TaskFailure] = []
    local = _Worker(spec)  # records failures that never reached a worker

    def record(acks: list[tuple[Any, ...]], session: str) -> None:
        for index, k, error, tb, worker in acks:
            item = items_by_index.get(index)
            failures.append(TaskFailure(name, k, item, error, tb, worker, session))

    if rejected:
        items_by_index.update((index, item) for index, _k, item, _r, _e in rejected)
        record(local.store(rejected), local.session.name)
    done, settled, base = 0, 0, 0  # items stored; items in settled chunks; at pool start
    measured = [0, 0.0]  # items run and their compute seconds, for chunk sizes

    def settle(future: Any, chunk: list[tuple[int, str, Any]]) -> bool:
        """Account for one finished chunk; return whether it broke the pool."""
        nonlocal done, settled
        try:
            acks, ran, seconds, session = future.result()
            lost = False
        except Exception as exc:
            # A worker died (a crash, the OOM killer) or Dask gave up on a
            # chunk (KilledWorker).  Which item was to blame is unknown, so
            # each is recorded as failed for a later run to retry; the sweep
            # goes on.
            error = _describe(exc)
            acks = local.store([(i, k, item, None, error) for i, k, item in chunk])
            ran, seconds, session = len(chunk), 0.0, local.session.name
            lost = isinstance(exc, cf.process.BrokenProcessPool)
        record(acks, session)
        done += ran - len(acks)
        settled += len(chunk)
        measured[0] += ran
        measured[1] += seconds
        return lost

    bar = _progress_bar(progress, len(todo), name)
    pool: Any = None
    pending: dict[Any, list[tuple[int, str, Any]]] = {}
    try:
        if todo:
            # Warm the provenance cache (one git call) so forked workers inherit it.
            from .provenance import session_metadata

            session_metadata()
        if client is not None and todo:
            pool = _DaskPool(spec, client, chunksize)
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
                pool, broken, base = _LocalPool(spec, workers, ctx, chunksize), False, settled
            while not broken and position < len(todo) and len(pending) < 2 * pool.slots:
                per_item = measured[1] / measured[0] if measured[0] else None
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
        summary = TaskSummary(
            name, done, skipped, len(failures), time.perf_counter() - started, tuple(failures)
        )
        print(f"run_tasks: {summary}; run again to resume", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.close()
        local.close()
    return TaskSummary(
        name, done, skipped, len(failures), time.perf_counter() - started, tuple(failures)
    )


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
        appears once, with its newest result.
    """
    name = _task_name(task)
    prefix, found = name + "/", {}
    for reader in dm.iter_sessions():
        with reader:
            for k in reader.keys():  # noqa: SIM118 (a list, read once)
                if k.startswith(prefix):
                    digest = k[len(prefix) :]
                    found[digest] = (reader.get(f"{name}.items/{digest}"), reader[k])
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
                        name, digest, rec.get("item"), rec.get("error", ""),
                        rec.get("traceback", ""), rec.get("worker", ""), reader.name,
                    )  # fmt: skip
    return [f for (name, digest), f in records.items() if f"{name}/{digest}" not in keys]
