"""A sweep as a table: one row per item, its parameters and its result side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

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
        - ``session`` and ``key``: the session holding the result (or the
          failure record) and the item's key (the result is that session's
          key ``<name>/<key>``);
        - with *failures*, ``error``: ``'<ExceptionType>: <message>'``,
          missing (NaN) for a stored result.

        A field named like a column before it gets a prefix rather than
        hiding it: ``item.`` for an item field named ``session``, ``key``
        or ``error``, ``result.`` for a result field named like one of
        those or like an item field (``x`` of both: ``x`` and ``result.x``).
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
    item_names, result_names = _column_names(rows)
    columns = [*item_names.values(), *result_names.values(), "session", "key"]
    columns += ["error"] if failures else []
    records = []
    for item, result, session, key, error in rows:
        record = {item_names[c]: v for c, v in item.items()}
        record.update((result_names[c], v) for c, v in result.items())
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


def _column_names(rows: list[tuple[Any, ...]]) -> tuple[dict[str, str], dict[str, str]]:
    """Map the item fields and the result fields of *rows* to their columns.

    Decided over the whole table, so that a column means one thing in
    every row: a result field is prefixed wherever any item has a field of
    its name.
    """

    def fields(part: int) -> list[str]:  # in order of first appearance
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row[part]))
        return list(seen)

    item_names = {c: f"item.{c}" if c in RESERVED else c for c in fields(0)}
    taken = set(item_names.values()) | set(RESERVED)
    return item_names, {c: f"result.{c}" if c in taken else c for c in fields(1)}
