"""Collation: reading every session of a data directory back, as Brian did.

:class:`Collator` is the read side of :class:`~datamanager.DataManager`:
finding the sessions (native and legacy), opening each once, through the
directory's index where it can answer (:mod:`datamanager.index`), and
Brian's collation methods on top.  The names and meanings of the methods
follow Brian's ``brian.tools.datamanager.DataManager``, so scripts written
for it run unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from ._descriptors import reader_budget
from ._sidecodec import pandas_kind
from .errors import CorruptSessionError, warn_caller
from .filestore import stored_in
from .index import IndexView, open_view
from .legacy import find_sessions
from .provenance import CODE_IDENTITY
from .readers import (
    Listing,
    Match,
    SessionEntry,
    SessionReader,
    check_match,
    key_test,
    list_directory,
)
from .session import _check_key

if TYPE_CHECKING:
    import pandas

__all__ = ["Collator", "check_dtypes", "merge_values"]

T = TypeVar("T")
A = TypeVar("A")
_MISSING = object()
#: Readers iter_sessions keeps open at most, however many descriptors are free.
_MAX_OPEN = 256


class Collator:
    """The read side of a data directory: its sessions, and collation across them.

    :class:`~datamanager.DataManager` is one; it sets what a collator reads:
    :attr:`name`, :attr:`basepath` (the ``<name>.data`` directory) and
    :attr:`safe`.
    """

    name: str
    basepath: str
    safe: bool
    #: The folder whose absence makes reading an error rather than empty.
    _needed: str

    # -- finding and opening sessions --

    def _entries(self, warn: bool = True, listing: Listing | None = None) -> list[SessionEntry]:
        """The sessions of the data directory; FileNotFoundError where it cannot exist."""
        entries = find_sessions(self.basepath, warn, listing)
        if not entries and not os.path.isdir(self._needed):
            what = (
                "no such data directory"
                if self._needed == self.basepath
                else f"no such folder to hold {self.name}.data"
            )
            raise FileNotFoundError(errno.ENOENT, what, self._needed)
        return entries

    def _skip(
        self, entry: SessionEntry | SessionReader, exc: CorruptSessionError, strict: bool
    ) -> None:
        if strict:
            raise exc
        # The reason alone: str(exc) would name the session a second time.
        where = f" (key {exc.key!r})" if exc.key is not None else ""
        warn_caller(f"skipping corrupt session {entry.path}{where}: {exc.reason}")

    def _open(
        self, entry: SessionEntry, strict: bool, index: IndexView | None = None, kept: bool = False
    ) -> SessionReader | None:
        """Open *entry*, through *index* if it serves it; None for a corrupt session skipped.

        *kept*: the reader is kept to be read later (see :meth:`.IndexView.reader`).
        """
        try:
            reader = index.reader(entry, self.safe, kept) if index is not None else None
            return reader if reader is not None else entry.open(self.safe)
        except CorruptSessionError as exc:
            self._skip(entry, exc, strict)
            return None

    @contextlib.contextmanager
    def _sources(self) -> Iterator[tuple[list[SessionEntry], IndexView | None]]:
        """The sessions, and the directory's index where there is one to serve them."""
        listing = list_directory(self.basepath)
        entries = self._entries(listing=listing)
        index = open_view(self.basepath, entries, listing.names)
        try:
            yield entries, index
        finally:
            if index is not None:
                index.close()

    def _collect(
        self,
        read: Callable[[SessionReader], T],
        strict: bool,
        holding: Callable[[IndexView], set[str]] | None = None,
    ) -> list[tuple[str, T]]:
        """``(name, read(reader))`` for every session, each opened once, in creation order.

        Sessions sort by creation time, ties by name (see :meth:`iter_sessions`).
        With *holding*, sessions the index serves are read only if they are
        among ``holding(index)``: the others hold nothing *read* looks for.
        """
        found = []
        passed = set()  # native sessions not read: they hold nothing asked for
        with self._sources() as (entries, index):
            wanted = holding(index) if index is not None and holding is not None else None
            for entry in entries:
                # A shelf shares its name with its native twin, which the
                # index may serve: only the native entry may be passed.
                if (
                    wanted is not None
                    and not entry.legacy
                    and entry.name not in wanted
                    and entry.name in index.served
                ):
                    passed.add(entry.name)
                    continue
                reader = self._open(entry, strict, index)
                if reader is None:
                    continue
                with reader:
                    try:
                        found.append(((reader.created, entry.name), read(reader), entry.legacy))
                    except CorruptSessionError as exc:
                        self._skip(entry, exc, strict)
        # A shelf read beside a native session of its name (one written by
        # an older version) is labelled apart, so that get() keeps both
        # values of a key the two hold.
        native = passed | {order[1] for order, _, legacy in found if not legacy}
        labelled = [
            ((created, f"{name} (legacy shelf)" if legacy and name in native else name), result)
            for (created, name), result, legacy in found
        ]
        labelled.sort(key=lambda t: t[0])
        return [(order[1], result) for order, result in labelled]

    def iter_sessions(self, strict: bool = False) -> Iterator[SessionReader]:
        """Yield a read-only reader for each session, in creation order.

        Each reader is closed when the next one is taken (or at the end), so
        ``[dict(r.items()) for r in dm.iter_sessions()]`` leaves nothing open;
        a reader kept after breaking out of the loop is the caller's to close
        (or use it as a context manager).  Sessions that cannot be read are
        skipped with a warning, or raise with ``strict=True``.  A process out
        of file descriptors gets ``OSError(EMFILE)``, never a skipped session.
        Sessions sort by creation time, ties by name, so that a collation run
        twice on the same data gives the same order.
        """
        with self._sources() as (entries, index):
            yield from self._iter_open(entries, index, strict)

    def _iter_open(
        self, entries: list[SessionEntry], index: IndexView | None, strict: bool
    ) -> Iterator[SessionReader]:
        # Readers stay open from the pass that orders them, so each session is
        # opened once, as long as the process has descriptors to spare (see
        # reader_budget); otherwise each is opened again when its turn comes.
        keep = len(entries) <= reader_budget(_MAX_OPEN)
        found: list[tuple[float, str, SessionEntry, SessionReader | None]] = []
        try:
            for entry in entries:
                reader = self._open(entry, strict, index, kept=keep)
                if reader is None:
                    continue
                found.append((reader.created, entry.name, entry, reader if keep else None))
                if not keep:
                    reader.close()
            found.sort(key=lambda t: (t[0], t[1]))
            for i, (created, name, entry, kept) in enumerate(found):
                found[i] = (created, name, entry, None)  # handed over to the caller
                if kept is None:
                    kept = self._open(entry, strict, index)
                    if kept is None:
                        continue
                yield kept
                kept.close()  # the caller has moved on to the next one
        finally:
            for *_, reader in found:
                if reader is not None:
                    reader.close()

    def session_filenames(self, strict: bool = False) -> list[str]:
        """Return one file name per session, in creation order.

        A native session is its ``.sqlite`` file; a legacy shelf is named as
        ``shelve.open`` was given it (without ``.dat``/``.dir``/``.bak``).
        """
        return [path for _, path in self._collect(lambda r: r.path, strict)]

    # -- collation (Brian's API) --

    def get(self, key: str, strict: bool = False) -> dict[str, Any]:
        """Return ``{session name: value}`` for every session holding *key*."""
        _check_key(key)
        found = self._collect(lambda r: r.get(key, _MISSING), strict, lambda i: i.holding(key))
        return {name: value for name, value in found if value is not _MISSING}

    def get_merged(self, key: str, strict: bool = False) -> Any:
        """Concatenate the values of *key* across sessions, in session order.

        List and tuple values give one list; where every value is a numpy
        array the result is one array concatenated along axis 0 (numbers are
        promoted by numpy's rules, but numbers and strings are refused: a
        TypeError names the sessions and dtypes).  DataFrames (or Series)
        give one, with an outer index level ``session`` naming each row's
        session.  Any other value raises TypeError naming its session and
        type.  See :func:`merge_values`.
        """
        return merge_values(key, list(self.get(key, strict).items()))

    def _matching(self, match: Match, strict: bool) -> dict[str, dict[str, Any]]:
        check_match(match)

        # One pass: each session is opened once for all the matching keys,
        # not once per key as Brian's implementation did.
        def read(reader: SessionReader) -> dict[str, Any]:
            skip = functools.partial(self._skip, reader, strict=strict)
            return dict(reader.items(reader.matching(match), skip))

        found = self._collect(read, strict, lambda i: i.holding_match(match))
        result: dict[str, dict[str, Any]] = {}
        for key in sorted({k for _, values in found for k in values}):
            result[key] = {name: values[key] for name, values in found if key in values}
        return result

    def get_matching(self, match: Match, strict: bool = False) -> dict[str, dict[str, Any]]:
        """Return ``{key: get(key)}`` for the keys matching *match*.

        *match* is a key prefix (str) or a callable taking a key and
        returning true for the keys wanted.  Keys come in sorted order.
        """
        return self._matching(match, strict)

    def get_merged_matching(self, match: Match, strict: bool = False) -> Any:
        """Concatenate ``get_merged(key)`` over the keys matching *match*, in key order.

        Lists and arrays give one list, as in Brian.  Keys merging to
        DataFrames (or Series) give one, with outer index levels ``key``,
        then ``session``.
        """
        found = self._matching(match, strict)
        return _merge_keys([(key, merge_values(key, list(v.items()))) for key, v in found.items()])

    def get_flat_matching(self, match: Match, strict: bool = False) -> list[Any]:
        """Return every value of every session for the keys matching *match*."""
        return [v for values in self._matching(match, strict).values() for v in values.values()]

    def keys(self, strict: bool = False) -> list[str]:
        """Return all keys of all sessions, each once, sorted."""
        return self._keys(lambda r: r.keys(), lambda i: i.distinct_keys(), strict)

    def get_matching_keys(self, match: Match, strict: bool = False) -> list[str]:
        """Return the keys matching *match* in any session, each once, sorted.

        *match* is a key prefix (str) or a callable taking a key and
        returning true for the keys wanted, as for :meth:`get_matching`.
        No value is read.

        Examples
        --------
        >>> import tempfile
        >>> from datamanager import DataManager
        >>> dm = DataManager("sweep", tempfile.mkdtemp())
        >>> with dm.session() as s:
        ...     s.update({"rate/1": 1.0, "rate/2": 2.0, "seed": 7})
        >>> dm.get_matching_keys("rate/")
        ['rate/1', 'rate/2']
        """
        check_match(match)
        test = key_test(match)
        return self._keys(
            lambda r: r.matching(match), lambda i: filter(test, i.distinct_keys()), strict
        )

    def _keys(
        self,
        read: Callable[[SessionReader], list[str]],
        served: Callable[[IndexView], Iterable[str]],
        strict: bool,
    ) -> list[str]:
        keys, found = self._answer(served, read, strict)
        return sorted(set(keys or ()).union(*(keys for _, keys in found)))

    def _answer(
        self,
        served: Callable[[IndexView], A],
        read: Callable[[SessionReader], T],
        strict: bool,
    ) -> tuple[A | None, list[tuple[str, T]]]:
        """``served(index)`` for the sessions the index serves, ``read(reader)`` for the others.

        The first is None without an index.
        """
        answer = None

        def holding(index: IndexView) -> set[str]:
            nonlocal answer
            answer = served(index)
            return set()  # served(index) has answered for them all

        found = self._collect(read, strict, holding)
        return answer, found

    def iteritems(self, strict: bool = False) -> Iterator[tuple[str, Any]]:
        """Yield every ``(key, value)`` of every session, one at a time."""
        for reader in self.iter_sessions(strict):
            with reader:
                skip = functools.partial(self._skip, reader, strict=strict)
                yield from reader.items(on_error=skip)

    def itervalues(self, strict: bool = False) -> Iterator[Any]:
        """Yield every value of every session, one at a time."""
        for _, value in self.iteritems(strict):
            yield value

    def items(self, strict: bool = False) -> list[tuple[str, Any]]:
        """Return every ``(key, value)`` of every session as a list."""
        return list(self.iteritems(strict))

    def values(self, strict: bool = False) -> list[Any]:
        """Return every value of every session as a list."""
        return list(self.itervalues(strict))

    def itemcount(self, strict: bool = False) -> int:
        """Return the number of items summed over all sessions."""
        count, found = self._answer(lambda i: i.count(), len, strict)
        return (count or 0) + sum(n for _, n in found)

    def sessions(self, strict: bool = False) -> pandas.DataFrame:
        """Return a DataFrame with one row per session: its metadata, keys and size.

        ``created`` is a UTC timestamp; ``keys`` the number of keys; ``size``
        the bytes on disk (database, journal and side files).  The columns
        that name the code which wrote each session come first, after
        ``name``: ``git_commit``, ``git_dirty``, ``git_diff_sha256`` (of its
        uncommitted changes), ``datamanager_version`` and ``python``.
        """
        import pandas

        def row(reader: SessionReader) -> tuple[str, dict[str, Any]]:
            metadata = reader.metadata
            metadata.pop("name", None)  # the session's name comes first, from its file
            return reader.name, {**metadata, "keys": len(reader), "size": reader.nbytes}

        found = [r for _, r in self._collect(row, strict)]
        frame = pandas.DataFrame([r for _, r in found])
        # Which code wrote each session, at a glance: those columns first.
        first = [c for c in CODE_IDENTITY if c in frame]
        frame = frame[first + [c for c in frame if c not in first]]
        # Object dtype: a name read from a file system in another encoding
        # keeps its undecodable bytes, which pyarrow-backed text refuses.
        frame.insert(0, "name", pandas.Series([n for n, _ in found], dtype=object))
        if "created" in frame:
            frame["created"] = pandas.to_datetime(frame["created"], unit="s", utc=True)
        return frame

    def files(self, strict: bool = False) -> pandas.DataFrame:
        """Every stored file the values and task records refer to, as a DataFrame.

        One row per reference: ``session``, ``key`` (of the value, or of the
        task record), ``item`` (the item key, for a file an item of
        :func:`~datamanager.tasks.run_tasks` refers to), ``name`` and
        ``original`` (where it was stored from), ``sha256``, ``size``, and
        ``path`` (the stored copy).  Files inside lists, tuples, dicts and
        sets are found; sessions sort as in :meth:`iter_sessions`.
        """
        import pandas

        columns = ["session", "key", "item", "name", "original", "sha256", "size", "path"]
        rows = [
            {"session": name, **row}
            for name, found in self._collect(stored_in, strict)
            for row in found
        ]
        return pandas.DataFrame(rows, columns=columns)

    def _repr_html_(self) -> str:
        """A short HTML summary for notebooks: sessions, keys, size.

        Read from the directory's listing and index; sessions the index
        does not serve are opened only if they are few.  Never writes.
        """
        from ._html import datamanager_html

        return datamanager_html(self)


def merge_values(key: str, values: list[tuple[str, Any]]) -> Any:
    """Merge one key's values across sessions, as :meth:`DataManager.get_merged`.

    Parameters
    ----------
    key : str
        The key, to name in errors.
    values : list of (str, object)
        ``(session name, value)`` in session order.

    Returns
    -------
    object
        Lists and tuples give one list.  Numpy arrays give one array,
        concatenated along axis 0.  pandas DataFrames (or Series) give one
        DataFrame (or Series) whose outer index level ``session`` names the
        session of each row, over each value's own index; the index keeps
        no unused level values (a session without rows is not among them).

    Raises
    ------
    TypeError
        A value of another type, values of different kinds, or arrays whose
        dtypes numpy would turn into text or objects (numbers with strings).
    ValueError
        Arrays whose shapes differ beyond axis 0.
    """
    if not values:
        return []
    first = values[0][1]
    if isinstance(first, np.ndarray):
        return _merge_arrays(key, values)
    if pandas_kind(first) is not None:
        return _concat_labelled(f"key {key!r}", "session", values)
    merged: list[Any] = []
    for session, v in values:
        if not isinstance(v, (list, tuple)):
            raise TypeError(
                f"cannot merge key {key!r}: session {session!r} holds a "
                f"{type(v).__name__}, but merging needs list or tuple values in every "
                "session (or numpy arrays, or pandas DataFrames or Series, in every "
                "session); use get() and merge by hand"
            )
        merged.extend(v)
    return merged


def _merge_keys(merged: list[tuple[str, Any]]) -> Any:
    """Concatenate ``(key, merged value)`` in key order, as :meth:`get_merged_matching`.

    Lists and arrays are concatenated into one list, as Brian did.  Where every
    key merges to a DataFrame (or every key to a Series) the result is one,
    with an outer index level ``key`` over ``session``; a mix of the two
    kinds is a TypeError naming a key of each.
    """
    if any(pandas_kind(v) is not None for _, v in merged):
        return _concat_labelled("the matching keys", "key", merged)
    result: list[Any] = []
    for _, v in merged:
        result.extend(v)
    return result


def _merge_arrays(key: str, values: list[tuple[str, Any]]) -> np.ndarray:
    for session, v in values:
        if not isinstance(v, np.ndarray):
            raise TypeError(
                f"cannot merge key {key!r}: session {session!r} holds a {type(v).__name__}, "
                f"but session {values[0][0]!r} holds a numpy array; merging needs numpy "
                "arrays in every session; use get() and merge by hand"
            )
        if v.ndim == 0:
            raise TypeError(f"cannot merge key {key!r}: session {session!r} holds a 0-d array")
    dtype = check_dtypes(key, values)
    try:
        return np.concatenate([v for _, v in values], axis=0, dtype=dtype)
    except ValueError as exc:
        shapes = ", ".join(f"{s}: {v.shape}" for s, v in values)
        raise ValueError(f"cannot merge key {key!r}: shapes differ ({shapes})") from exc


def check_dtypes(key: str, values: list[tuple[str, Any]]) -> np.dtype:
    """The dtype of arrays concatenated (theirs if they share one); TypeError for a refused mix.

    Numbers (bool, int, float, complex) mix by numpy's own promotion, and so
    do datetime64 of any unit, timedelta64 of any unit, byte strings of any
    length, or unicode strings of any length.  Any other mix is refused with
    a message naming the sessions and dtypes: numpy would concatenate
    ``[0, 1]`` with ``["a"]`` as ``['0', '1', 'a']``, and ``[5]`` with a
    timedelta64 as a duration.  *values* are ``(session, array)``; anything
    with a ``dtype`` will do (an HDF5 dataset merged on disk is checked by
    the same rules).
    """
    distinct = list(dict.fromkeys(v.dtype for _, v in values))
    if len(distinct) == 1:
        # Kept as it is: numpy's promotion would make a big-endian dtype native.
        return distinct[0]
    held = [(session, v.dtype) for session, v in values]
    try:
        # Pairwise: result_type takes a bounded number of arguments.
        common = functools.reduce(np.result_type, distinct)
    except TypeError as exc:  # numpy's DTypePromotionError, e.g. datetime64 with int64
        raise TypeError(
            f"cannot merge key {key!r}: numpy has no common dtype for {_dtypes(held)}"
        ) from exc
    if not _mixable(distinct):
        raise TypeError(
            f"cannot merge key {key!r}: numpy would turn {_dtypes(held)} into {common}; "
            "use get() and convert by hand"
        )
    return common


_NUMBER_KINDS = frozenset("biufc")
#: numpy kinds whose dtypes mix only with their own kind (units, lengths).
_OWN_KINDS = frozenset("MmSU")


def _family(dtype: Any) -> Any:
    """What *dtype* (numpy's or a pandas extension dtype) may be merged with:
    the same family only."""
    kind = getattr(dtype, "kind", None)
    if kind in _NUMBER_KINDS and getattr(dtype, "names", None) is None:
        return "number"  # pandas' nullable numbers too: their kind is a number's
    if isinstance(dtype, np.dtype) and kind in _OWN_KINDS:
        return kind
    # Objects, categoricals, timezone-aware datetimes, structured arrays...:
    # merging changes them unless they are equal.
    return dtype


def _mixable(dtypes: Iterable[Any], columns: bool = False) -> bool:
    """Whether values of *dtypes* merge without turning into other values.

    In *columns* of pandas objects bools mix only with bools: ``pandas.concat``
    makes a column of bools and ints one of objects, where numpy makes ints.
    """
    dtypes = list(dtypes)
    families = {_family(d) for d in dtypes}
    if columns and families == {"number"}:
        families = {getattr(d, "kind", None) == "b" for d in dtypes}
    return len(families) <= 1


def _dtypes(held: list[tuple[str, Any]], level: str = "session", shown: int = 3) -> str:
    """``int64 (session 'a'), <U1 (sessions 'b', 'c' and 2 more)``: each dtype, who holds it.

    *held* are ``(name, dtype)``, each name a *level* (a session, or a key).
    """
    holders: dict[Any, list[str]] = {}
    for name, dtype in held:
        holders.setdefault(dtype, []).append(name)
    parts = []
    for dtype, names in holders.items():
        listed = ", ".join(repr(s) for s in names[:shown])
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        parts.append(f"{dtype} ({level}{'s' if len(names) > 1 else ''} {listed}{more})")
    return ", ".join(parts)


def _concat_labelled(what: str, level: str, parts: list[tuple[str, Any]]) -> Any:
    """``pandas.concat`` of *parts*, each labelled by its name in a new outer index *level*.

    Every part must be of the first one's kind: DataFrame, or Series.
    """
    import pandas

    first, kind = parts[0][0], type(parts[0][1])
    for name, v in parts:
        if pandas_kind(v) != pandas_kind(parts[0][1]):
            raise TypeError(
                f"cannot merge {what}: {level} {name!r} holds a {type(v).__name__}, but "
                f"{level} {first!r} holds a {kind.__name__}; merging needs DataFrames in "
                f"every {level}, or Series in every {level}; use get() and merge by hand"
            )
    _check_columns(what, level, parts)
    # The inner levels keep each value's own index, so that
    # merged.loc[name] (or .xs(name, level=...)) gives a part back.
    merged = pandas.concat([v for _, v in parts], keys=[n for n, _ in parts], names=[level])
    # A part without rows would leave its name as a level value no row
    # uses: the index then says the same as its rows, as an export keeps it.
    merged.index = merged.index.remove_unused_levels()
    return merged


def _check_columns(what: str, level: str, parts: list[tuple[str, Any]]) -> None:
    """TypeError if a column of the DataFrames (or the Series) *parts* holds
    dtypes that arrays may not mix (see :func:`check_dtypes`), naming them.

    ``pandas.concat`` would make one object column of numbers and text; a
    column missing from some parts is fine (pandas fills it with NaN), and
    so is any dtype of a part without rows, which has no values to change
    (an empty list makes a column of objects).
    """
    held: dict[Any, list[tuple[str, Any]]] = {}
    for name, v in parts:
        if not len(v):
            continue
        columns = v.dtypes.items() if v.ndim == 2 else [(None, v.dtype)]
        for label, dtype in columns:
            held.setdefault(label, []).append((name, dtype))
    for label, dtypes in held.items():
        if not _mixable((d for _, d in dtypes), columns=True):
            where = f"column {label!r} holds" if parts[0][1].ndim == 2 else "the Series hold"
            raise TypeError(
                f"cannot merge {what}: {where} {_dtypes(dtypes, level)}; pandas would "
                "turn them into other values; use get() and convert by hand"
            )
