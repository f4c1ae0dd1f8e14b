"""What a sweep reports: its name, its parameters' names, its failures and the summary of a run."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

__all__ = ["TaskFailure", "TaskSummary", "parameter_names", "sweep_name"]


@dataclass(frozen=True)
class TaskFailure:
    """One item whose task raised, or whose result could not be stored.

    Attributes
    ----------
    name : str
        The sweep's name (the key prefix).
    key : str
        The item's key; the failure is stored as the task record
        ``<name>.failures/<key>``.
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
    """What one :func:`~datamanager.tasks.run_tasks` call did.

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


def sweep_name(task: Any) -> str:
    """The name of the sweep of *task*: *task* itself if a str, else its ``__qualname__``.

    Raises
    ------
    TypeError
        For a lambda, a partial or a callable object, which may stand for
        many computations and so cannot name one sweep.
    """
    if isinstance(task, str):
        return task
    qualname = getattr(task, "__qualname__", None)
    if not isinstance(qualname, str) or "<lambda>" in qualname:
        raise TypeError(
            f"cannot name the sweep after {task!r} (a lambda, partial or callable object "
            "may stand for many computations); pass name="
        )
    return qualname


def parameter_names(task: Any) -> list[str] | None:
    """The names of *task*'s positional parameters, in order; None if unknown.

    A class's instances are what is called per item, so its ``__call__``
    names the items' positions (past ``self``).
    """
    function, skip = (task.__call__, 1) if isinstance(task, type) else (task, 0)
    try:
        parameters = list(inspect.signature(function).parameters.values())[skip:]
    except (TypeError, ValueError):  # some builtins have no signature
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = []
    for parameter in parameters:
        if parameter.kind not in positional:
            break  # *args and what follows take no position of their own
        names.append(parameter.name)
    return names
