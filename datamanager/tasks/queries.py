"""Reading a sweep back: its results, its open failures, the keys already stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from .records import TaskFailure, sweep_name

if TYPE_CHECKING:
    from ..manager import DataManager
    from ..readers import SessionReader

__all__ = ["Scan", "Stored", "scan", "stored_keys", "task_failures", "task_results"]


def stored_keys(dm: DataManager) -> set[str]:
    """Every key in *dm*; none where nothing was written yet (not even its folder)."""
    try:
        return set(dm.keys())
    except FileNotFoundError:  # the first result will create the folder
        return set()


#: What marks the key of an item, of a failure record and of a rerun's link to
#: the original item: ``<name><marker><item key>``.
ITEM, FAILURE, LINK = ".items/", ".failures/", ".links/"


class Stored(NamedTuple):
    """One result of a sweep as a pass over the sessions found it."""

    key: str
    item: Any
    result: Any
    session: str


@dataclass
class Scan:
    """What one pass over the sessions found of the sweeps in a data directory.

    Attributes
    ----------
    results : dict
        Item key -> :class:`Stored`, the newest result of the sweep asked
        for, in the order first stored (empty unless values were asked for).
    failures : dict
        ``(sweep name, item key)`` -> newest :class:`TaskFailure`.
    keys : set of str
        Every key of every session.
    done : dict
        Sweep name -> the item keys with a stored result (found by their
        item records, without reading any value).
    last : dict
        Sweep name -> :attr:`~datamanager.readers.SessionReader.created` of
        the newest session holding its results or failures.
    parameters : list of str or None
        The names of the task's positional parameters, as the newest
        session holding results of the sweep asked for recorded them
        (``task_parameters`` of its metadata); None if none did.
    links : dict
        Item key -> the newest link record of the sweep asked for, when it
        is a rerun (see :func:`~datamanager.tasks.rerun_tasks`): where its
        item came from.
    """

    results: dict[str, Stored] = field(default_factory=dict)
    failures: dict[tuple[str, str], TaskFailure] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    done: dict[str, set[str]] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    parameters: list[str] | None = None
    links: dict[str, Any] = field(default_factory=dict)

    def open_failures(self) -> list[TaskFailure]:
        """The failures that no later run fixed (no result stored for the item)."""
        return [f for (name, key), f in self.failures.items() if f"{name}/{key}" not in self.keys]

    def check(self, dm: DataManager, name: str) -> None:
        """Raise KeyError for a sweep *name* that stored nothing, naming those that did."""
        if name in self.last or any(k.startswith(name + "/") for k in self.keys):
            return
        known = ", ".join(repr(n) for n in sorted(self.last)) or "none"
        raise KeyError(f"no sweep named {name!r} in {dm.basepath} (sweeps stored there: {known})")


def _split(key: str) -> tuple[str, str, str] | None:
    """``(marker, sweep name, item key)`` of a record's key; None for another key."""
    for marker in (ITEM, FAILURE, LINK):
        name, sep, item_key = key.rpartition(marker)
        if sep:
            return marker, name, item_key
    return None


def scan(
    dm: DataManager, wanted: str | None = None, values: bool = False, *, results: bool = True
) -> Scan:
    """Read what the sweeps stored in *dm*, in one pass over its sessions.

    Failure records (of *wanted* only, when given) and the link records of
    *wanted* are always read; with *values*, the items and results of the
    sweep *wanted* are read too.
    Everything else is known from the keys alone, so that counting the
    items of every sweep reads no value.  Without *results*, the results
    found are not read (their :attr:`Stored.result` is None): a rerun needs
    only the items of a sweep whose results may be large.
    """
    found = Scan()
    for reader in dm.iter_sessions():
        with reader:
            _read(found, reader, wanted, values, results)
    return found


def _read(
    found: Scan, reader: SessionReader, wanted: str | None, values: bool, results: bool
) -> None:
    """Add to *found* what one session holds (see :func:`scan`)."""
    names = reader.keys()
    found.keys.update(names)
    record_keys: list[str] = []

    def keep(k: str) -> bool:
        # Sees every record key; those not unpickled are counted all the same.
        record_keys.append(k)
        marker, name, _ = _split(k) or ("", None, "")
        if marker == FAILURE:
            return wanted is None or name == wanted
        if marker == LINK:
            return name == wanted
        return marker == ITEM and values and name == wanted

    # Sessions written before task records existed kept them among their
    # keys; the newer comes last, so the dicts built from these keep it.
    records = [(k, reader[k]) for k in names if _split(k) and keep(k)]
    records += reader.task_records(keep)
    _count(found, reader, names, record_keys)
    items = {}
    for k, record in records:
        marker, name, key = _split(k)  # type: ignore[misc]
        if marker == ITEM:
            items[key] = record
        elif marker == LINK:
            found.links[key] = record
        else:
            found.failures[name, key] = _failure(name, key, record, reader.name)
    if values and wanted is not None:
        prefix = wanted + "/"
        for k in names:
            if k.startswith(prefix):
                key = k[len(prefix) :]
                result = reader[k] if results else None
                found.results[key] = Stored(key, items.get(key), result, reader.name)
        metadata = reader.metadata if items else {}
        if metadata.get("task_name") == wanted and metadata.get("task_parameters") is not None:
            found.parameters = list(metadata["task_parameters"])


def _count(found: Scan, reader: SessionReader, names: list[str], record_keys: list[str]) -> None:
    """Note in *found* the sweeps that *reader* holds records of, and their stored items."""
    present = set(names)
    for k in record_keys:
        marker, name, key = _split(k)  # type: ignore[misc]
        found.last[name] = max(found.last.get(name, reader.created), reader.created)
        if marker == ITEM and f"{name}/{key}" in present:
            found.done.setdefault(name, set()).add(key)


def _failure(name: str, key: str, record: Any, session: str) -> TaskFailure:
    get = record.get
    return TaskFailure(
        name,
        key,
        get("item"),
        get("error", ""),
        get("traceback", ""),
        get("worker", ""),
        session,
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
        appears once, with its newest result.  Empty for a sweep whose every
        item failed so far.

    Raises
    ------
    KeyError
        If no sweep of that name stored anything, neither a result nor a
        failure (a typo); the message lists the sweeps that did.
    """
    name = sweep_name(task)
    found = scan(dm, name, values=True)
    if not found.results:
        found.check(dm, name)
    return [(stored.item, stored.result) for stored in found.results.values()]


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
    found = scan(dm, wanted)
    if wanted is not None:
        found.check(dm, wanted)
    return found.open_failures()
