"""Reading a sweep back: its results, its open failures, the keys already stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

from .records import TaskFailure, sweep_name

if TYPE_CHECKING:
    from ..manager import DataManager
    from ..readers import SessionReader

__all__ = ["stored_keys", "task_failures", "task_results"]


def stored_keys(dm: DataManager) -> set[str]:
    """Every key in *dm*; none where nothing was written yet (not even its folder)."""
    try:
        return set(dm.keys())
    except FileNotFoundError:  # the first result will create the folder
        return set()


#: What marks the key of an item and of a failure record: ``<name><marker><item key>``.
ITEM, FAILURE = ".items/", ".failures/"


def _records(
    reader: SessionReader, keys: list[str], marker: str, wanted: str | None = None
) -> Iterator[tuple[str, str, Any]]:
    """Yield ``(sweep name, item key, record)`` of one kind of record in *reader*.

    Records live in the session's task records; sessions written before
    those existed kept them among their *keys*, read too.  The newer comes
    last, so a ``dict`` built from these keeps it.
    """

    def keep(k: str) -> bool:
        name, sep, _ = k.rpartition(marker)
        return bool(sep) and (wanted is None or name == wanted)

    old = [(k, reader[k]) for k in keys if keep(k)]
    for k, record in old + reader.task_records(keep):
        name, _, key = k.rpartition(marker)
        yield name, key, record


def _sweep_names(dm: DataManager) -> set[str]:
    """The names of the sweeps that stored anything (a result or a failure) in *dm*."""
    names = set()
    for reader in dm.iter_sessions():
        with reader:
            keys = reader.keys() + [k for k, _ in reader.raw_task_records()]
        for k in keys:
            for marker in (ITEM, FAILURE):
                name, sep, _ = k.rpartition(marker)
                if sep:
                    names.add(name)
    return names


def _check_sweep(dm: DataManager, name: str) -> None:
    """Raise KeyError for a sweep *name* that stored nothing in *dm*, naming those that did."""
    names = _sweep_names(dm)
    if name not in names:
        known = ", ".join(repr(n) for n in sorted(names)) or "none"
        raise KeyError(f"no sweep named {name!r} in {dm.basepath} (sweeps stored there: {known})")


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
    prefix, found = name + "/", {}
    for reader in dm.iter_sessions():
        with reader:
            names = reader.keys()
            items = {key: item for _, key, item in _records(reader, names, ITEM, name)}
            for k in names:
                if k.startswith(prefix):
                    key = k[len(prefix) :]
                    found[key] = (items.get(key), reader[k])
    if not found:
        _check_sweep(dm, name)
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
    wanted = None if task is None else sweep_name(task)
    records: dict[tuple[str, str], TaskFailure] = {}
    keys: set[str] = set()
    for reader in dm.iter_sessions():
        with reader:
            names = reader.keys()
            keys.update(names)
            for name, key, rec in _records(reader, names, FAILURE, wanted):
                records[name, key] = TaskFailure(
                    name,
                    key,
                    rec.get("item"),
                    rec.get("error", ""),
                    rec.get("traceback", ""),
                    rec.get("worker", ""),
                    reader.name,
                )
    if wanted is not None and not records and not any(k.startswith(wanted + "/") for k in keys):
        _check_sweep(dm, wanted)
    return [f for (name, key), f in records.items() if f"{name}/{key}" not in keys]
