"""Reading a sweep back: its results, its open failures, the keys already stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from .records import TaskFailure, sweep_name

if TYPE_CHECKING:
    from ..manager import DataManager

__all__ = ["stored_keys", "task_failures", "task_results"]


def stored_keys(dm: DataManager) -> set[str]:
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
    name = sweep_name(task)
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
    wanted = None if task is None else sweep_name(task)
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
