"""Task farming: run a function over many items in parallel, keeping every result.

:func:`run_tasks` calls ``task(item)`` for each item on a local process pool
(:class:`concurrent.futures.ProcessPoolExecutor`) or on the workers of a
``dask.distributed.Client``; it never schedules anything itself.
Each worker process opens its own session once and stores every result under
a key derived from the item, so a sweep that is killed finishes by running the
same call again, and the results collate with the usual API.

Keys, for a sweep named ``name`` (the task's ``__qualname__`` by default) and an
item whose :func:`item_key` is ``k``:

- ``name/k``: the result, exactly as the task returned it, a key of the session;
- ``name.items/k``: the item, written in the same transaction as the result;
- ``name.failures/k``: a failure record (a dict of builtin values) when the
  task raised or its result could not be stored;
- ``name.links/k``: in a rerun (:func:`rerun_tasks`), the item it was made
  from (its key, sweep and data directory).

Items and failure records are the session's task records, kept apart from
its keys so that collation sees the results only; sessions written before
task records existed kept them as keys, and are read too.

The modules: :mod:`~datamanager.tasks.run` (:func:`run_tasks`),
:mod:`~datamanager.tasks.driver` (a sweep's chunks and counters),
:mod:`~datamanager.tasks.pools` and :mod:`~datamanager.tasks.worker` (where
chunks run), :mod:`~datamanager.tasks.itemkeys` (the keys),
:mod:`~datamanager.tasks.files` (the files items refer to),
:mod:`~datamanager.tasks.queries` (reading a sweep back),
:mod:`~datamanager.tasks.rerun` (a sweep run again with changed items),
:mod:`~datamanager.tasks.tables` (a sweep as a table) and
:mod:`~datamanager.tasks.records` (what a sweep reports).
"""

from __future__ import annotations

from .itemkeys import item_key
from .pools import CHUNK_SECONDS
from .queries import task_failures, task_results
from .records import TaskFailure, TaskSummary
from .rerun import rerun_tasks
from .run import run_tasks
from .tables import task_sweeps, task_table
from .worker import COMMIT_SECONDS

__all__ = [
    "CHUNK_SECONDS",
    "COMMIT_SECONDS",
    "TaskFailure",
    "TaskSummary",
    "item_key",
    "rerun_tasks",
    "run_tasks",
    "task_failures",
    "task_results",
    "task_sweeps",
    "task_table",
]
