"""Reruns: the stored items of a sweep, changed by modification functions, run again.

:func:`rerun_tasks` reads the items of a sweep, passes each through the
modification functions and hands the changed items, with a link per new item
to the original it came from, to :func:`~datamanager.tasks.run_tasks`, which
stores the links, runs, stores, resumes and reports exactly as for any sweep.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import marshal
import os
import types
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .files import ItemFiles
from .itemkeys import item_key
from .queries import Stored, scan
from .records import TaskSummary, sweep_name
from .run import key_of, run_tasks

if TYPE_CHECKING:
    from ..manager import DataManager

__all__ = ["describe_function", "rerun_name", "rerun_tasks"]


def rerun_tasks(
    dm: DataManager,
    task: Callable[..., Any],
    modify: Callable[[Any], Any] | Sequence[Callable[[Any], Any]] = (),
    select: Callable[[Any], Any] | Iterable[str] | None = None,
    out: DataManager | None = None,
    name: str | None = None,
    processes: int | None = None,
    client: Any = None,
    *,
    sweep: str | None = None,
    key: Callable[[Any], str] | None = None,
    **options: Any,
) -> TaskSummary:
    """Run a stored sweep's items again, changed by *modify*, as a new sweep linked to it.

    The items of the sweep (those with a stored result) pass through the
    modification functions in order, ``f(item)`` returning the changed item,
    or None to leave it as it is (having changed it in place, or not at
    all).  The modified items then run as a sweep of their own: they are
    handed to :func:`run_tasks`, so resuming, failures, progress, Dask and
    Ctrl-C / SIGTERM behave as there.  Before anything runs, a link record
    ``<name>.links/<key>`` is stored for each new item that is to run (a task record, which
    collation does not see): ``{"key": <original item key>, "sweep":
    <original sweep>, "data": <original data directory, or None when it is
    out itself>}``, so :func:`task_table` of the rerun shows each original
    item's key and result beside the new ones.

    Modification functions run in this process, before anything starts, so
    that the new items' keys, and so what a resumed rerun skips, are known.
    A file an item refers to is, in the stored items, a
    :class:`~datamanager.StoredFile` bound to the stored copy; a function may
    read it, write a changed copy of the parameter file and return an item
    holding its :class:`pathlib.Path`, which is stored as :func:`run_tasks`
    stores it (in *out*, which also receives the unchanged files).

    Parameters
    ----------
    dm : DataManager
        The data directory holding the original sweep.
    task : callable or class
        What to run, as for :func:`run_tasks`; its name also names the
        original sweep unless *sweep* is given.
    modify : callable or sequence of callables
        The modification functions, applied in order.
    select : callable or iterable of str, optional
        Which items: those for which ``select(item)`` is true, or the items
        of these keys (in this order); all by default (in the order of
        :func:`task_results`).
    out : DataManager, optional
        Where the rerun goes; *dm* by default.
    name : str, optional
        The rerun's sweep name; by default :func:`rerun_name` of the
        original sweep and the modifications,
        ``<sweep>~rerun-<8 hex digits>``, so the same modifications resume
        the same rerun and different ones start a new sweep.
    processes, client
        As for :func:`run_tasks`.
    sweep : str, optional
        The original sweep's name; the task's ``__qualname__`` by default.
    key : callable, optional
        ``key(item) -> str`` for the new items, as for :func:`run_tasks`.
    **options
        Any other keyword of :func:`run_tasks` (``progress``, ``resume``,
        ``chunksize``, ``mp_context``, ``initargs``, ...).

    Returns
    -------
    TaskSummary
        Of the rerun's sweep; where several original items became the same
        new item, it runs once (the others count as skipped) and its link
        names the first of them.

    Raises
    ------
    KeyError
        If the original sweep stored nothing, or *select* names an item key
        without a stored result.
    TypeError
        For a *select* that is a str (a list of keys is meant), a
        modification that is not callable, a default name that cannot be
        derived (a modification that cannot be told apart from others, see
        :func:`rerun_name`: pass *name*), or a new item without a canonical
        form.
    ValueError
        If the rerun would write into the original sweep itself.

    Notes
    -----
    The rerun's provenance, ``rerun`` in the metadata of every session it
    writes: ``{"sweep": ..., "data": ..., "modify": [...]}``, with each
    modification function as :func:`describe_function` describes it
    (qualified name, a sha256 of its source, and one of the values it
    binds).  An exception raised by
    a modification function propagates before anything runs.

    Examples
    --------
    >>> import tempfile
    >>> from datamanager import DataManager, run_tasks, task_table
    >>> def rate(current, tau):
    ...     return {"rate": current / tau}
    >>> dm = DataManager("sweep", tempfile.mkdtemp())
    >>> _ = run_tasks(dm, rate, [(1.0, 0.5), (2.0, 0.5)], processes=2, progress=False)
    >>> def slower(item):
    ...     current, tau = item
    ...     return (current, 2 * tau)
    >>> summary = rerun_tasks(dm, rate, [slower], processes=2, progress=False)
    >>> summary.name.startswith("rate~rerun-"), summary.done
    (True, 2)
    >>> table = task_table(dm, summary.name).sort_values("current")
    >>> table[["current", "tau", "rate", "original.rate"]].to_numpy().tolist()
    [[1.0, 1.0, 1.0, 2.0], [2.0, 1.0, 2.0, 4.0]]
    """
    original = sweep if sweep is not None else sweep_name(task)
    target = dm if out is None else out
    functions = (modify,) if callable(modify) else tuple(modify)
    for f in functions:
        if not callable(f):
            raise TypeError(f"modification functions must be callable, not {f!r}")
    described = [describe_function(f) for f in functions]
    name = rerun_name(original, described) if name is None else name
    same = _same_directory(dm, target)
    if same and name == original:
        raise ValueError(f"a rerun cannot write into its original sweep {original!r}; rename it")
    found = scan(dm, original, values=True, results=False)  # the items are enough
    if not found.results:
        found.check(dm, original)
    items, links = [], {}
    where = None if same else os.path.abspath(dm.basepath)
    # Stored here as run_tasks would store them, so that a file a function
    # wrote is hashed once, for this key and for run_tasks' alike.
    files = ItemFiles(target.basepath) if key is None else None
    for index, stored in enumerate(_chosen(found.results, select)):
        item = stored.item
        for f in functions:
            changed = f(item)
            if changed is not None:
                item = changed
        if files is not None:
            item = files(item)
        k = key_of(item, index, key)
        links.setdefault(k, {"key": stored.key, "sweep": original, "data": where})
        items.append(item)
    provenance = {"sweep": original, "data": where, "modify": described}
    metadata = {**(options.pop("metadata", None) or {}), "rerun": provenance}
    return run_tasks(
        target,
        task,
        items,
        processes=processes,
        client=client,
        name=name,
        key=key,
        metadata=metadata,
        links=links,
        **options,
    )


def describe_function(function: Callable[..., Any]) -> dict[str, Any]:
    """Name a modification function and hash its code, for a rerun's provenance.

    Returns
    -------
    dict
        - ``name``: ``<module>.<qualified name>`` (``functools.partial(<name>)``
          for a partial);
        - ``sha256``: of the source text (:func:`inspect.getsource`) when it
          can be found, else of the compiled code (:mod:`marshal`, which
          differs between Python versions: a function typed at a prompt or
          in ``python -c``), else None;
        - ``hashed``: which it is, ``'source'`` or ``'bytecode'``;
          ``'builtin'`` for a builtin, which its name identifies; ``'nothing'``
          for what cannot be told apart from another of its kind (a callable
          object, a value bound that has no canonical form);
        - ``bound``: a sha256 of the values the function binds (its
          defaults, its closure, a partial's arguments; functions among them
          by their own description, other values by :func:`item_key`), None
          if it binds none.

        What the function reads from its module's globals is not covered.

    Examples
    --------
    >>> describe_function(len)
    {'name': 'builtins.len', 'sha256': None, 'hashed': 'builtin', 'bound': None}
    """
    return _describe(function, set())


# Functions and methods written in C, which have neither source nor bytecode.
_BUILTIN = (
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.ClassMethodDescriptorType,
)


def _describe(function: Any, active: set[int]) -> dict[str, Any]:
    """:func:`describe_function`; *active* holds the functions being described,
    so that one reaching itself through its closure (recursion) ends."""
    active = active | {id(function)}
    if isinstance(function, functools.partial):
        inner = _describe(function.func, active)
        bound = _bound([inner["bound"], function.args, function.keywords], active)
        hashed = "nothing" if bound is None else inner["hashed"]
        name = f"functools.partial({inner['name']})"
        return {"name": name, "sha256": inner["sha256"], "hashed": hashed, "bound": bound}
    module = getattr(function, "__module__", None) or type(function).__module__
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    described = {"name": f"{module}.{qualname}", "sha256": None, "hashed": "nothing"}
    code = getattr(function, "__code__", None)
    if isinstance(function, _BUILTIN) or getattr(function, "__module__", None) == "builtins":
        described["hashed"] = "builtin"
    elif isinstance(code, types.CodeType):
        try:
            text = inspect.getsource(function).encode()
            described["hashed"] = "source"
        except (OSError, TypeError):  # no source file: a prompt, python -c
            text = marshal.dumps(code)
            described["hashed"] = "bytecode"
        described["sha256"] = hashlib.sha256(text).hexdigest()
    values = [getattr(function, "__defaults__", None), getattr(function, "__kwdefaults__", None)]
    values += [cell.cell_contents for cell in getattr(function, "__closure__", None) or ()]
    described["bound"] = None
    if any(v is not None for v in values):
        described["bound"] = _bound(values, active)
        if described["bound"] is None:
            described["hashed"] = "nothing"
    return described


def _bound(values: list[Any], active: set[int]) -> str | None:
    """A sha256 of *values* (see :func:`describe_function`); None if one has no canonical form."""
    parts = []
    for value in values:
        if isinstance(value, (types.FunctionType, functools.partial)):
            # A function met again through its own closure is named, not described again.
            inner = _describe(value, active) if id(value) not in active else value.__qualname__
            parts.append(json.dumps(inner))
            continue
        try:
            parts.append(item_key(value))
        except (TypeError, OSError):  # OSError: a Path to a folder, or to no file
            return None
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def rerun_name(original: str, described: list[dict[str, Any]]) -> str:
    """The default name of a rerun: ``<original>~rerun-<8 hex digits>``.

    The digits are the start of a sha256 of the modification functions'
    descriptions (:func:`describe_function`: names, hashes, bound values),
    in order.

    Raises
    ------
    TypeError
        If a modification cannot be told apart from others of its kind (it
        was hashed ``'nothing'``), so that different ones would share a name.
    """
    for d in described:
        if d["hashed"] == "nothing":
            raise TypeError(
                f"cannot name a rerun after the modification {d['name']}, which cannot be "
                "told apart from others of its kind (a callable object, or it binds a "
                "value without a canonical form); pass name="
            )
    identity = json.dumps(described, sort_keys=True)
    return f"{original}~rerun-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def _same_directory(a: DataManager, b: DataManager) -> bool:
    return os.path.realpath(a.basepath) == os.path.realpath(b.basepath)


def _chosen(
    results: dict[str, Stored], select: Callable[[Any], Any] | Iterable[str] | None
) -> list[Stored]:
    """The stored results *select* picks (see :func:`rerun_tasks`)."""
    if select is None:
        return list(results.values())
    if callable(select):
        return [stored for stored in results.values() if select(stored.item)]
    if isinstance(select, (str, bytes)):
        raise TypeError("select must be a callable or a list of item keys, not a str")
    keys = list(select)
    missing = [k for k in keys if k not in results]
    if missing:
        raise KeyError(f"no stored result for the item keys {missing[:5]}")
    return [results[k] for k in keys]
