"""A sweep as a table: one row per item, its parameters and its result side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from .queries import scan
from .records import parameter_names, sweep_name

if TYPE_CHECKING:
    import pandas

    from ..manager import DataManager

__all__ = ["task_sweeps", "task_table"]

#: Columns the table itself fills; an item or result field of such a name is prefixed.
RESERVED = ("session", "key", "error")


def task_table(
    dm: DataManager, task: Callable[..., Any] | str, *, failures: bool = False
) -> pandas.DataFrame:
    """Return a sweep as a DataFrame: one row per item, its fields and its result's.

    Parameters
    ----------
    dm : DataManager
        The data directory the sweep wrote to.
    task : callable or str
        The task, or the sweep's name (``name=`` of :func:`run_tasks`).  Only
        the task itself can name the positions of tuple items.
    failures : bool
        Also a row for each item that failed and that no later run stored a
        result for, with the error in an ``error`` column.

    Returns
    -------
    pandas.DataFrame
        The columns, in this order:

        - the item's fields: a dict item's keys; a tuple item's positions,
          named after the task's parameters (of ``__call__`` for a class),
          ``item_0``, ``item_1``, ... where no name is known (a sweep given
          by name, ``*args``); any other item is one column, named after
          the task's first parameter, or ``item``;
        - the result's fields: a dict result's keys, any other result one
          column ``result`` (arrays, lists and the like kept as objects);
        - for a rerun (see :func:`rerun_tasks`), ``original_key``: the key
          of the item it was made from, and that item's result as
          ``original.<field>`` columns (``original.result`` for a result
          that is no dict), NaN where the original is no longer stored
          (no such columns when none is);
        - ``session`` and ``key``: the session holding the result (or the
          failure record) and the item's key (the result is that session's
          key ``<name>/<key>``);
        - with *failures*, ``error``: ``'<ExceptionType>: <message>'``,
          missing (NaN) for a stored result.

        A field named like a column before it gets a prefix rather than
        hiding it: ``item.`` for an item field named ``session``, ``key``
        or ``error`` (or, in a rerun, ``original_key``), ``result.`` for a
        result field named like one of those or like an item field (``x``
        of both: ``x`` and ``result.x``).
        A field missing from some rows is NaN there.  The rows are the
        results in the order of :func:`task_results` (session creation
        order, each item once, with its newest result), then the failures in
        the order of :func:`task_failures`.

    Raises
    ------
    KeyError
        If no sweep of that name stored anything (a typo); the message
        lists the sweeps that did.

    Examples
    --------
    >>> import tempfile
    >>> from datamanager import DataManager, run_tasks
    >>> def rate(current, tau):
    ...     return {"rate": current / tau}
    >>> dm = DataManager("sweep", tempfile.mkdtemp())
    >>> _ = run_tasks(dm, rate, [(1.0, 0.5), (2.0, 0.5)], processes=2, progress=False)
    >>> table = task_table(dm, rate)
    >>> list(table.columns)
    ['current', 'tau', 'rate', 'session', 'key']
    >>> table.sort_values("current")[["current", "rate"]].to_numpy().tolist()
    [[1.0, 2.0], [2.0, 4.0]]
    """
    import pandas

    name = sweep_name(task)
    found = scan(dm, name, values=True)
    if not found.results:
        found.check(dm, name)
    names = parameter_names(task) if not isinstance(task, str) else found.parameters
    rows = [
        (_item_fields(s.item, names), _result_fields(s.result), s.session, s.key, float("nan"))
        for s in found.results.values()
    ]
    if failures:
        rows += [
            (_item_fields(f.item, names), {}, f.session, f.key, f.error)
            for f in found.open_failures()
        ]
    originals = _originals(dm, found.links) if found.links else None
    linked = ["original_key"] if originals is not None else []
    if originals is not None:
        fields: dict[str, None] = {}  # of the rows' originals, in order of first appearance
        for row in rows:
            fields.update(dict.fromkeys(_original_fields(found.links.get(row[3]), originals)))
        linked += [c for c in fields if c != "original_key"]
    item_names, result_names = _column_names(rows, linked)
    columns = [*item_names.values(), *result_names.values(), *linked, "session", "key"]
    columns += ["error"] if failures else []
    records = []
    for item, result, session, key, error in rows:
        record = {item_names[c]: v for c, v in item.items()}
        record.update((result_names[c], v) for c, v in result.items())
        if originals is not None:
            record.update(_original_fields(found.links.get(key), originals))
        record.update(session=session, key=key)
        if failures:
            record["error"] = error
        records.append(record)
    # Built column by column: a frame built from the records would read an
    # array or list value as several cells.
    data = {c: pandas.Series([r.get(c, float("nan")) for r in records]) for c in columns}
    for c in ("session", "key", "error"):
        # Object dtype, as in dm.sessions(): a session name read from a file
        # system in another encoding keeps bytes that pyarrow-backed text refuses.
        if c in data:
            data[c] = data[c].astype(object)
    return pandas.DataFrame(data, columns=columns)


def task_sweeps(dm: DataManager) -> pandas.DataFrame:
    """Return every sweep stored in *dm*: its items done, its open failures, its last run.

    Reads no result: only keys and failure records.

    Returns
    -------
    pandas.DataFrame
        One row per sweep, sorted by name: ``name``, ``done`` (items with a
        stored result), ``failed`` (items whose failure no later run fixed,
        as :func:`task_failures`) and ``last_run`` (UTC timestamp: creation
        of the newest session holding its results or failures; a worker
        creates its session when it stores its first item of a run).
    """
    import pandas

    found = scan(dm)
    failed: dict[str, int] = {}
    for failure in found.open_failures():
        failed[failure.name] = failed.get(failure.name, 0) + 1
    names = sorted(found.last)
    frame = pandas.DataFrame(
        {
            "name": pandas.Series(names, dtype=object),
            "done": pandas.Series([len(found.done.get(n, ())) for n in names], dtype="int64"),
            "failed": pandas.Series([failed.get(n, 0) for n in names], dtype="int64"),
            "last_run": pandas.Series([found.last[n] for n in names], dtype="float64"),
        }
    )
    frame["last_run"] = pandas.to_datetime(frame["last_run"], unit="s", utc=True)
    return frame


def _item_fields(item: Any, names: list[str] | None) -> dict[str, Any]:
    """The columns of one item (see :func:`task_table`)."""
    if isinstance(item, dict):
        return {str(k): v for k, v in item.items()}
    known = names or []
    if isinstance(item, tuple):
        return {known[i] if i < len(known) else f"item_{i}": value for i, value in enumerate(item)}
    return {known[0] if known else "item": item}


def _result_fields(result: Any) -> dict[str, Any]:
    """The columns of one result (see :func:`task_table`)."""
    if isinstance(result, dict):
        return {str(k): v for k, v in result.items()}
    return {"result": result}


def _originals(dm: DataManager, links: dict[str, Any]) -> dict[tuple[str, Any, str], Any]:
    """The original results the links of a rerun name, by ``(sweep, data, key)``.

    Each original sweep is read once; one whose data directory is gone
    gives no rows (its columns stay NaN).
    """
    from ..manager import DataManager

    found: dict[tuple[str, Any, str], Any] = {}
    for sweep, data in {(link["sweep"], link["data"]) for link in links.values()}:
        source = dm if data is None else DataManager.from_path(data)
        try:
            results = scan(source, sweep, values=True).results
        except FileNotFoundError:
            continue
        found.update(((sweep, data, k), stored) for k, stored in results.items())
    return found


def _original_fields(link: Any, originals: dict[tuple[str, Any, str], Any]) -> dict[str, Any]:
    """The ``original_key`` and ``original.`` columns of one row of a rerun."""
    if link is None:
        return {}
    fields = {"original_key": link["key"]}
    stored = originals.get((link["sweep"], link["data"], link["key"]))
    if stored is not None:
        fields.update((f"original.{c}", v) for c, v in _result_fields(stored.result).items())
    return fields


def _column_names(
    rows: list[tuple[Any, ...]], linked: Sequence[str] = ()
) -> tuple[dict[str, str], dict[str, str]]:
    """Map the item fields and the result fields of *rows* to their columns.

    Decided over the whole table, so that a column means one thing in
    every row: a result field is prefixed wherever any item has a field of
    its name, and neither hides the *linked* columns of a rerun.
    """

    def fields(part: int) -> list[str]:  # in order of first appearance
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row[part]))
        return list(seen)

    reserved = {*RESERVED, *linked}
    item_names = {c: f"item.{c}" if c in reserved else c for c in fields(0)}
    taken = set(item_names.values()) | reserved
    return item_names, {c: f"result.{c}" if c in taken else c for c in fields(1)}
