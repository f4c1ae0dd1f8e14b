"""Writing one export's values: session groups, side files, stacked ``/merged`` datasets.

With ``merged=True`` every key whose values all have one array dtype and row
shape (or are lists of one item type) is *stacked*: the values are appended
to one ``/merged/<key>`` dataset and ``/merged_index/<key>`` records which
rows belong to which session, so 10,000 small values cost two HDF5 objects
instead of 10,000.  A key stops stacking (it is *demoted*) at the
first value that does not fit; what was stacked is then written back into
the session groups and ``/merged/<key>`` comes from ``get_merged``.

Large arrays kept in session side files arrive as :class:`NpyFile` and are
copied into the file without being loaded.
"""

from __future__ import annotations

import json
import mmap
from typing import Any, Callable

import numpy as np

from .._npyheader import read_npy_header
from ..collator import check_dtypes, merge_values
from ..errors import UnsupportedValueError
from .frames import PANDAS_TYPES
from .schema import (
    ITEMS_ATTR,
    METADATA_ATTR,
    SESSION_TYPE_ATTR,
    TYPE_ATTR,
    Unsupported,
    Writer,
    escape_name,
    homogeneous,
    is_array,
    items_from_array,
    numeric,
    unescape_name,
)

# Bytes of a side file mapped at a time: never more than the array itself,
# so memory stays under the largest value; 64 MiB rather than 16 gains about
# 10% on a 100 MiB array (fewer mappings; ``benchmarks/bench_hdf5.py``).
_WINDOW = 64 << 20
_MAP: dict[str, Any] = (
    {"flags": mmap.MAP_SHARED | mmap.MAP_POPULATE, "prot": mmap.PROT_READ}
    if hasattr(mmap, "MAP_POPULATE")  # Linux
    else {"access": mmap.ACCESS_READ}
)

_KEY_FLUSH = 1 << 20  # bytes buffered per stacked key before an append
_ALL_FLUSH = 64 << 20  # bytes buffered over all keys: bounds memory
_CHUNK = 1 << 20


def _stackable(value: Any) -> tuple[tuple[Any, ...], np.ndarray | None] | None:
    """``(signature, array)`` when ``value`` can be one slice of a stacked dataset.

    Values with one signature concatenate along axis 0 into an array from
    which every value comes back exactly by slicing.
    """
    if is_array(value):
        if numeric(value.dtype) and value.ndim >= 1 and all(value.shape[1:]):
            return ("ndarray", None, value.dtype.str, value.shape[1:]), value
        return None
    if type(value) in (list, tuple):
        if not value:
            return (type(value).__name__, None, None, None), None
        packed = homogeneous(value)
        if packed is not None and packed[0] != "str" and all(packed[1].shape[1:]):
            items, arr = packed
            return (type(value).__name__, items, arr.dtype.str, arr.shape[1:]), arr
    return None


def _chunks(row_shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    row = list(row_shape)
    rows = max(1, _CHUNK // max(1, itemsize * int(np.prod(row, dtype=np.int64))))
    while rows == 1 and itemsize * int(np.prod(row, dtype=np.int64)) > _CHUNK:
        big = int(np.argmax(row))
        row[big] = (row[big] + 1) // 2
    return (rows, *row)


class _Stack:
    __slots__ = ("dataset", "length", "pending", "pending_bytes", "rows", "sig")

    def __init__(self, sig: tuple[Any, ...]) -> None:
        self.sig = sig
        self.rows: list[tuple[str, int, int]] = []
        self.length = 0
        self.pending: list[np.ndarray] = []
        self.pending_bytes = 0
        self.dataset: Any = None

    def accepts(self, sig: tuple[Any, ...]) -> bool:
        # An empty list fits any list; it says nothing about item types.
        return sig == self.sig or (sig[0] == self.sig[0] and None in (sig[2], self.sig[2]))


def _joined(stack: _Stack) -> np.ndarray:
    """The pending values of *stack* as one array, in the stack's own dtype."""
    # np.concatenate alone would turn a big-endian dtype into the native one.
    return np.concatenate(stack.pending, dtype=np.dtype(stack.sig[2]))


class Exporter:
    """One export: the open temporary file, the options and the report."""

    def __init__(
        self,
        f: Any,
        dm: Any,
        options: dict[str, Any],
        report: Any,
        checkpoint: Callable[[], None],
    ) -> None:
        self.f = f
        self.dm = dm
        self.report = report
        # Called between writes, where a held-back Ctrl-C may be raised.
        self.checkpoint = checkpoint
        self.on_unsupported = options["on_unsupported"]
        self.writer = Writer(options["compression"], self.on_unsupported, checkpoint)
        self.merged = options["merged"]
        self.sessions = f.create_group("sessions", track_order=True)
        self.stacks: dict[str, _Stack] = {}
        self.demoted: dict[str, list[str]] = {}  # key -> sessions holding it, in order
        self.pending_bytes = 0
        self._session_props: Any = None
        self._escaped = ("", "%")  # the current session's name, escaped once

    def session(self, name: str, metadata: dict[str, Any]) -> Any:
        """Create ``/sessions/<name>`` holding ``metadata`` as one JSON attribute.

        Through h5py's low-level API with the property lists made once: this
        halves the cost per session, which dominates exports of many small
        sessions (``benchmarks/bench_hdf5.py``).
        """
        import h5py
        from h5py import h5a, h5g, h5p, h5s, h5t

        if self._session_props is None:
            gcpl = h5p.create(h5p.GROUP_CREATE)  # members keep the order of the keys
            gcpl.set_link_creation_order(h5p.CRT_ORDER_TRACKED | h5p.CRT_ORDER_INDEXED)
            text = h5t.py_create(h5py.string_dtype(), logical=True)
            self._session_props = gcpl, text, h5s.create(h5s.SCALAR)
        gcpl, text, scalar = self._session_props
        self._escaped = (name, escape_name(name))
        gid = h5g.create(
            self.sessions.id,
            self._escaped[1].encode("utf-8"),
            lcpl=self.writer.link_props(),
            gcpl=gcpl,
        )
        # ASCII JSON (non-ASCII as \u escapes): any str, even one holding a
        # lone surrogate, becomes valid UTF-8 text that every JSON parser reads.
        attr = h5a.create(gid, METADATA_ATTR.encode(), text, scalar)
        attr.write(np.array(json.dumps(metadata, default=repr), dtype=object))
        attr.close()
        return h5py.Group(gid)

    def write_value(self, group: Any, session: str, key: str, value: Any) -> None:
        name = escape_name(key)
        before, files = len(self.writer.pickled), len(self.writer.files)
        try:
            if type(value) is NpyFile:
                value.write(group, name, self.writer.compression, self.checkpoint)
            else:
                self.writer.write(group, name, value)
        except Unsupported as exc:
            if name in group:
                del group[name]
            self.writer.drop_files(self.f, files)
            if self.on_unsupported == "error":
                raise UnsupportedValueError(session, key, exc.type_name) from None
            self.report.skipped.append((session, key, exc.type_name))
            return
        if len(self.writer.pickled) > before:
            self.report.pickled.append((session, key, ", ".join(self.writer.pickled[before:])))
        self.report.values += 1
        if self.merged:
            self.demoted.setdefault(key, []).append(escape_name(session))

    def add(self, group: Any, session: str, key: str, value: Any) -> None:
        if not self.merged or key in self.demoted:
            self.write_value(group, session, key, value)
            return
        if type(value) is NpyFile:
            value = value.load()
        found = _stackable(value)
        stack = self.stacks.get(key)
        if found is None or (stack is not None and not stack.accepts(found[0])):
            self.demote(key)
            self.write_value(group, session, key, value)
            return
        sig, arr = found
        if stack is None:
            stack = self.stacks[key] = _Stack(sig)
        elif stack.sig[2] is None:
            stack.sig = sig
        n = 0 if arr is None else len(arr)
        escaped = self._escaped[1] if session == self._escaped[0] else escape_name(session)
        stack.rows.append((escaped, stack.length, stack.length + n))
        stack.length += n
        self.report.values += 1
        if n:
            stack.pending.append(arr)
            stack.pending_bytes += arr.nbytes
            self.pending_bytes += arr.nbytes
            if stack.pending_bytes >= _KEY_FLUSH:
                self.flush(key, stack)
            if self.pending_bytes >= _ALL_FLUSH:
                for k, s in self.stacks.items():
                    self.flush(k, s)

    def flush(self, key: str, stack: _Stack) -> None:
        if not stack.pending:
            return
        data = _joined(stack)
        if stack.dataset is None:
            group = self.f.require_group("merged")
            dtype = np.dtype(stack.sig[2])
            row = stack.sig[3]
            kw = {"compression": self.writer.compression} if self.writer.compression else {}
            stack.dataset = group.create_dataset(
                escape_name(key),
                shape=(0, *row),
                maxshape=(None, *row),
                dtype=dtype,
                chunks=_chunks(row, dtype.itemsize),
                **kw,
            )
        start = stack.dataset.shape[0]
        stack.dataset.resize(start + len(data), axis=0)
        stack.dataset[start:] = data
        self.pending_bytes -= stack.pending_bytes
        stack.pending, stack.pending_bytes = [], 0

    def demote(self, key: str) -> None:
        """Stop stacking ``key``: write what was stacked into its session groups."""
        self.demoted.setdefault(key, [])
        stack = self.stacks.pop(key, None)
        if stack is None:
            return
        stored = 0 if stack.dataset is None else stack.dataset.shape[0]
        tail = _joined(stack) if stack.pending else None
        self.pending_bytes -= stack.pending_bytes
        kind, items = stack.sig[0], stack.sig[1] or "float"
        for session, start, stop in stack.rows:
            if stop <= stored:
                part = stack.dataset[start:stop]
            elif tail is not None and start >= stored:
                part = tail[start - stored : stop - stored]
            else:
                part = np.empty(0)
            value = part if kind == "ndarray" else items_from_array(part, items, kind)
            self.report.values -= 1  # counted again by write_value
            self.write_value(self.sessions[session], unescape_name(session), key, value)
            self.checkpoint()
        if stack.dataset is not None:
            del self.f["merged"][escape_name(key)]

    def finish_merged(self) -> None:
        import h5py

        group = self.f.require_group("merged")
        index_group = None
        indexes: dict[tuple[tuple[str, int, int], ...], str] = {}  # rows -> index name
        row_dtype = np.dtype([("session", h5py.string_dtype()), ("start", "<i8"), ("stop", "<i8")])
        for key, stack in self.stacks.items():
            name = escape_name(key)
            if stack.dataset is None:
                # All still in memory (under _KEY_FLUSH): one contiguous
                # dataset written in one call costs a third of a chunked one.
                row, dtype = stack.sig[3] or (), np.dtype(stack.sig[2] or "f8")
                data = _joined(stack) if stack.pending else np.empty((0, *row), dtype)
                self.writer.write(group, name, data)
                self.pending_bytes -= stack.pending_bytes
                stack.pending, stack.pending_bytes = [], 0
                stack.dataset = group[name]
            else:
                self.flush(key, stack)
            kind = stack.sig[0]
            if kind != "ndarray":
                stack.dataset.attrs[TYPE_ATTR] = "list"
                stack.dataset.attrs[ITEMS_ATTR] = stack.sig[1] or "float"
            if kind == "tuple":  # else implied: arrays slice to arrays, lists to lists
                stack.dataset.attrs[SESSION_TYPE_ATTR] = kind
            if index_group is None:
                index_group = self.f.create_group("merged_index", track_order=True)
            rows = tuple(stack.rows)
            if rows in indexes:
                # Keys held by the same sessions with the same lengths share
                # one table through a hard link, a tenth of a dataset's cost.
                index_group[name] = index_group[indexes[rows]]
            else:
                self.writer.plain_array(index_group, name, np.array(stack.rows, dtype=row_dtype))
                indexes[rows] = name
            self.report.merged.append(key)
            self.report.stacked.append(key)
            self.checkpoint()
        for key, sessions in self.demoted.items():
            self.merge_from_file(group, key, sessions)
            self.checkpoint()

    def merge_from_file(self, group: Any, key: str, sessions: list[str]) -> None:
        name = escape_name(key)
        held = [
            (unescape_name(s), self.sessions[s][name])
            for s in sessions
            if name in self.sessions[s]
        ]
        objs = [obj for _, obj in held]
        if not objs:
            return
        plain = all(
            TYPE_ATTR not in o.attrs
            and hasattr(o, "dtype")
            and o.ndim >= 1
            and o.shape[1:] == objs[0].shape[1:]
            for o in objs
        )
        if plain:
            # Every value is an array of one row shape: concatenate on disk,
            # one value in memory at a time, as get_merged would in memory,
            # and refusing the dtype mixes it refuses (numbers with strings).
            try:
                dtype = check_dtypes(key, held)
            except TypeError as exc:
                self.report.not_merged[key] = str(exc)
                return
            total = sum(o.shape[0] for o in objs)
            out = self._empty(group, name, total, objs[0].shape[1:], dtype)
            start = 0
            for o in objs:
                stop = start + o.shape[0]
                if stop > start:
                    out[start:stop] = o[()]
                start = stop
                self.checkpoint()
            self.report.merged.append(key)
            return
        try:
            if all(o.attrs.get(TYPE_ATTR) in PANDAS_TYPES for o in objs):
                value = self._merged_pandas(key, held)
            else:
                value = self.dm.get_merged(key)
        except (TypeError, ValueError) as exc:
            self.report.not_merged[key] = str(exc)
            return
        files = len(self.writer.files)
        try:
            self.writer.write(group, name, value)
        except Unsupported as exc:
            if name in group:
                del group[name]
            self.writer.drop_files(self.f, files)
            if self.on_unsupported == "error":
                raise UnsupportedValueError("<merged>", key, exc.type_name) from None
            self.report.skipped.append(("<merged>", key, exc.type_name))
            return
        self.report.merged.append(key)

    def _merged_pandas(self, key: str, held: list[tuple[str, Any]]) -> Any:
        """DataFrames (Series) of every session as one, as ``get_merged`` gives them.

        Read back from the export (*held*: ``(session, HDF5 object)``) rather
        than from the sessions: the values are there already.  The collator's
        own rule merges them, so that the table and its ``session`` level are
        the ones ``get_merged`` gives.
        """
        from .load import read

        return merge_values(key, [(session, read(obj)) for session, obj in held])

    def _empty(
        self, group: Any, name: str, total: int, row: tuple[int, ...], dtype: np.dtype
    ) -> Any:
        kw: dict[str, Any] = {}
        if self.writer.compression and total and all(row):
            kw["compression"] = self.writer.compression
        return group.create_dataset(name, shape=(total, *row), dtype=dtype, **kw)


class NpyFile:
    """A large array kept in a session side file (a plain ``.npy``), not yet read.

    :meth:`write` copies it into the HDF5 file without ever holding it whole
    in memory.
    """

    __slots__ = ("dtype", "offset", "path", "shape")

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
        self.path, self.shape, self.dtype, self.offset = path, shape, dtype, offset

    @classmethod
    def open(cls, path: str, size: int) -> NpyFile | None:
        """Read the header; None for anything unusual (the caller then loads normally)."""
        try:
            with open(path, "rb") as fh:
                header = read_npy_header(fh)
        except (OSError, ValueError):
            return None
        if header.fortran_order or not numeric(header.dtype) or not header.shape:
            return None
        if header.size != size:  # changed since the reader listed it
            return None
        return cls(path, header.shape, header.dtype, header.offset)

    def load(self) -> np.ndarray:
        return np.load(self.path, allow_pickle=False)

    def write(
        self, parent: Any, name: str, compression: str | None, checkpoint: Callable[[], None]
    ) -> None:
        """Copy the array into a new dataset ``parent[name]``, window by window.

        HDF5 writes straight from a read-only mapping of the file, so the data
        is copied once (page cache to page cache) instead of being read into
        a buffer first; MAP_POPULATE maps each window in one call rather than
        one page fault per page.  Memory stays near one window.
        ``checkpoint`` runs after each window, so that Ctrl-C stops even the
        copy of a large array promptly.
        """
        from h5py import h5s

        kw = {"compression": compression} if compression and all(self.shape) else {}
        ds = parent.create_dataset(name, shape=self.shape, dtype=self.dtype, **kw)
        row = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        if not row or not self.shape[0]:
            return
        rows = max(1, _WINDOW // row)
        fspace = ds.id.get_space()
        with open(self.path, "rb") as fh:
            for start in range(0, self.shape[0], rows):
                n = min(rows, self.shape[0] - start)
                first = self.offset + start * row
                base = first - first % mmap.ALLOCATIONGRANULARITY
                try:
                    view = mmap.mmap(fh.fileno(), first - base + n * row, offset=base, **_MAP)
                except ValueError:  # the file is shorter than its header says
                    raise OSError(f"side file {self.path} changed during the export") from None
                count = n * row // self.dtype.itemsize
                part = np.frombuffer(view, self.dtype, count, first - base)
                part = part.reshape((n, *self.shape[1:]))
                fspace.select_hyperslab((start, *(0,) * (part.ndim - 1)), part.shape)
                ds.id.write(h5s.create_simple(part.shape), fspace, part)
                del part  # the mapping cannot close while an array uses it
                view.close()
                checkpoint()
