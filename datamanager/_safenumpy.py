"""numpy values rebuilt from untrusted pickles, for the safe unpickler.

numpy's own unpickling trusts the pickle: ``dtype.__setstate__`` copies the
flags, field offsets and item size it is given into the C structure, and
``ndarray.__setstate__`` then reads the raw bytes as that dtype says, so a
crafted object dtype turns stored bytes into object pointers (a crash, or
worse).  Safe mode therefore never calls either.  The stand-ins here take
the place of ``numpy.dtype``, ``_reconstruct``, ``_frombuffer`` and
``scalar``: they record what the pickle asks for, check it against what
numpy itself writes, and build the value with numpy's ordinary
constructors: ``np.dtype`` from a description, ``np.frombuffer`` over plain
bytes for arrays without objects, and element by element from a list for
object arrays.  Raw bytes never become an array that holds objects.
"""

from __future__ import annotations

import math
import pickle
import re
import reprlib
import sys
from typing import Any, Callable

import numpy as np

__all__ = [
    "NDARRAY",
    "DtypeStandIn",
    "Malformed",
    "StandIn",
    "frombuffer",
    "reconstruct",
    "release_all",
    "resolve_all",
    "scalar",
    "short",
]

# What numpy's dtype pickles name as their base type: a kind and a size.
_TYPESTR = re.compile(r"[biufcOSUVMm][0-9]{1,10}")
_TIME_UNITS = frozenset(
    ["Y", "M", "W", "D", "h", "m", "s", "ms", "us", "μs", "ns", "ps", "fs", "as", "generic"]
)
_SWAPPED = ">" if sys.byteorder == "little" else "<"
_ALIGNED_STRUCT = 0x80  # NPY_ALIGNED_STRUCT in a dtype pickle's flags
_UNSET = object()


class Malformed(pickle.UnpicklingError):
    """A pickle that asks for a numpy value numpy itself never writes."""


def short(value: Any) -> str:
    """A repr cut to a few dozen characters, for messages about untrusted data."""
    return reprlib.repr(value)


class StandIn:
    """A value a pickle makes in two steps: a call (REDUCE), then a state (BUILD).

    The real value is made by :meth:`resolve`, at the first use after the
    state arrived; a state arriving later, or twice, is refused.
    """

    __slots__ = ("_args", "_state", "_value")
    what = "value"

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._state: Any = _UNSET
        self._value: Any = _UNSET

    def __setstate__(self, state: Any) -> None:
        if self._state is not _UNSET or self._value is not _UNSET:
            raise Malformed(f"a numpy {self.what} is given a state after it was used")
        self._state = state

    def resolve(self) -> Any:
        if self._value is _UNSET:
            self._value = self._build(None if self._state is _UNSET else self._state)
            self.release()
        return self._value

    def release(self) -> None:
        """Drop the pickled arguments: they may hold other stand-ins."""
        self._args = self._state = None

    def _build(self, state: Any) -> Any:
        raise NotImplementedError


def release_all(stand_ins: list[StandIn]) -> None:
    """Release each of *stand_ins* (a function, so no loop variable outlives it)."""
    for stand_in in stand_ins:
        stand_in.release()


class DtypeStandIn(StandIn):
    """``numpy.dtype(typestr, align, copy)`` followed by its pickled state."""

    __slots__ = ()
    what = "dtype"

    def _build(self, state: Any) -> np.dtype:
        args = self._args
        if not 1 <= len(args) <= 3 or type(args[0]) is not str or not _TYPESTR.fullmatch(args[0]):
            raise Malformed(f"numpy dtype of unknown type {short(args)}")
        base = np.dtype(args[0])
        if state is None:
            return base
        if type(state) is not tuple or len(state) not in (8, 9):
            raise Malformed(f"numpy dtype state of unknown layout {short(state)}")
        _, endian, subarray, names, fields, elsize, _, flags, *rest = state
        metadata = rest[0] if rest else None
        if endian not in ("<", ">", "|", "=") or type(flags) is not int:
            raise Malformed(f"numpy dtype state {short(state)}")
        if names is not None or fields is not None:
            aligned = bool(flags & _ALIGNED_STRUCT) or bool(args[1:2] and args[1])
            result = _structured(base, names, fields, elsize, aligned)
        elif subarray is not None:
            result = _subarray(base, subarray, elsize)
        else:
            if base.kind in "SUV" and elsize != base.itemsize:
                raise Malformed(f"numpy dtype {base} with an item size of {short(elsize)}")
            if base.kind in "Mm" and metadata is not None:
                base, metadata = _datetime(base, metadata)
            swapped = endian == _SWAPPED  # numpy reads '<' on little-endian as native
            result = base.newbyteorder(endian) if swapped else base
        if metadata is not None:
            if type(metadata) is not dict:
                raise Malformed(f"numpy dtype metadata {short(metadata)}")
            result = np.dtype(result, metadata=metadata)
        return result


def _structured(base: np.dtype, names: Any, fields: Any, elsize: Any, aligned: bool) -> np.dtype:
    if base.kind != "V" or type(names) is not tuple or type(fields) is not dict:
        raise Malformed(f"numpy structured dtype with names {short(names)}")
    if elsize != base.itemsize:
        raise Malformed(f"numpy structured dtype {base} with an item size of {short(elsize)}")
    formats, offsets, titles = [], [], []
    for name in names:
        entry = fields.get(name) if type(name) is str else None
        if type(entry) is not tuple or len(entry) not in (2, 3) or type(entry[1]) is not int:
            raise Malformed(f"numpy structured dtype field {short(name)}: {short(entry)}")
        formats.append(dtype_of(entry[0]))
        offsets.append(entry[1])
        titles.append(entry[2] if len(entry) == 3 else None)
    spec = {"names": list(names), "formats": formats, "offsets": offsets, "itemsize": elsize}
    if any(title is not None for title in titles):
        spec["titles"] = titles
    return np.dtype(spec, align=aligned)


def _subarray(base: np.dtype, subarray: Any, elsize: Any) -> np.dtype:
    if base.kind != "V" or type(subarray) is not tuple or len(subarray) != 2:
        raise Malformed(f"numpy subarray dtype {short(subarray)}")
    item, shape = subarray
    result = np.dtype((dtype_of(item), _shape((shape,) if type(shape) is int else shape)))
    if result.itemsize != elsize:
        raise Malformed(f"numpy subarray dtype {result} with an item size of {short(elsize)}")
    return result


def _datetime(base: np.dtype, metadata: Any) -> tuple[np.dtype, Any]:
    """The unit of a datetime64/timedelta64 dtype: ``(user metadata, (unit, n, 1, 1))``."""
    unit = metadata[1] if type(metadata) is tuple and len(metadata) == 2 else None
    if type(unit) is not tuple or len(unit) not in (2, 4) or unit[2:] not in ((), (1, 1)):
        raise Malformed(f"numpy {base} dtype with unit {short(metadata)}")
    name, count = unit[0], unit[1]
    if type(name) is bytes:
        name = name.decode("ascii")
    if name not in _TIME_UNITS or type(count) is not int or count < 1:
        raise Malformed(f"numpy {base} dtype with unit {short(unit)}")
    code = base.str[1:]  # 'M8' or 'm8'
    return np.dtype(code if name == "generic" else f"{code}[{count}{name}]"), metadata[0]


def dtype_of(value: Any) -> np.dtype:
    """The dtype a pickle built for *value*, refusing anything else in its place."""
    if not isinstance(value, DtypeStandIn):
        raise Malformed(f"expected a numpy dtype, found {type(value).__name__}")
    return value.resolve()


def _shape(value: Any) -> tuple[int, ...]:
    if type(value) is not tuple or not all(type(n) is int and n >= 0 for n in value):
        raise Malformed(f"numpy shape {short(value)}")
    return value


def _from_bytes(
    data: Any, dtype: np.dtype, shape: Any, order: str, copy: bool = False
) -> np.ndarray:
    """*data* as an array (a view, or over a copy); only for dtypes without objects."""
    shape = _shape(shape)
    if dtype.hasobject:
        raise Malformed(f"numpy {dtype} value made from raw bytes (it holds Python objects)")
    if dtype.subdtype is not None:
        raise Malformed(f"numpy value of subarray dtype {dtype}")
    if type(data) is str:  # a Python 2 byte string, loaded as latin-1 text
        data = bytearray(data, "latin-1")
    elif type(data) not in (bytes, bytearray):
        raise Malformed(f"numpy data of type {type(data).__name__}")
    count = math.prod(shape)
    if len(data) != count * dtype.itemsize:
        raise Malformed(f"numpy {dtype} data of shape {shape} in {len(data)} bytes")
    if copy and type(data) is bytes:
        data = bytearray(data)
    if count == 0 or dtype.itemsize == 0:  # nothing to read (frombuffer refuses)
        return np.empty(shape, dtype, order)
    return np.frombuffer(data, dtype, count).reshape(shape, order=order)


class _ArrayStandIn(StandIn):
    """``_reconstruct(ndarray, ...)`` followed by the array's pickled state."""

    __slots__ = ()
    what = "array"

    def _build(self, state: Any) -> np.ndarray:
        if type(state) is tuple and len(state) == 5 and state[0] == 1:
            state = state[1:]  # (version, shape, dtype, is_fortran, data)
        if type(state) is not tuple or len(state) != 4 or type(state[2]) not in (bool, int):
            raise Malformed(f"numpy array state {short(state)}")
        shape, dtype, fortran, data = state
        dtype = dtype_of(dtype)
        order = "F" if fortran else "C"
        if not dtype.hasobject:
            if dtype.byteorder in "<>":  # swapped: numpy's own unpickling makes it native
                array = _from_bytes(data, dtype, shape, order)
                return array.astype(dtype.newbyteorder("="), order="K")
            # A writable copy, padding bytes included (ndarray.copy skips those).
            return _from_bytes(data, dtype, shape, order, copy=True)
        # numpy pickles the items of an object array as a list, in C order.
        shape = _shape(shape)
        if type(data) is not list or len(data) != math.prod(shape) or dtype.subdtype:
            raise Malformed(f"numpy {dtype} array of shape {shape} from {type(data).__name__}")
        array = np.empty(shape, dtype, order)
        for index, item in zip(np.ndindex(*shape), resolve_all(data)):
            array[index] = item
        return array


class _ClassName(StandIn):
    """``numpy.ndarray`` as a name: calling it could make arrays over any memory."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise Malformed("numpy.ndarray given a state")

    def _build(self, state: Any) -> Any:
        return np.ndarray


NDARRAY = _ClassName()


def reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> StandIn:
    """Stand-in of numpy's ``_reconstruct``: an array whose state comes next."""
    if cls is not NDARRAY:
        raise Malformed(f"numpy _reconstruct of {type(cls).__name__}")
    return _ArrayStandIn()


def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Stand-in of numpy's ``_frombuffer`` (protocol 5): an array over the pickled bytes."""
    if order not in ("C", "F"):
        raise Malformed(f"numpy array order {short(order)}")
    return _from_bytes(buffer, dtype_of(dtype), shape, order)


def scalar(dtype: Any, data: Any) -> np.generic:
    """Stand-in of numpy's ``scalar``: one item from its bytes."""
    return _from_bytes(data, dtype_of(dtype), (), "C")[()]


def _resolve(obj: Any) -> Any:
    return obj.resolve() if isinstance(obj, StandIn) else obj


def resolve_all(value: Any, leaf: Callable[[Any], Any] = _resolve) -> Any:
    """*value* with *leaf* applied to everything inside it but builtin containers.

    By default every stand-in is replaced by its real value.  Lists, dicts
    and sets are changed in place, so that values shared or recursive in the
    pickle stay so; tuples and frozensets are rebuilt, once each.
    """
    done: dict[int, tuple[Any, Any]] = {}  # id -> (original, replacement)

    def visit(obj: Any) -> Any:
        kind = type(obj)
        if kind not in (list, dict, set, tuple, frozenset):
            return leaf(obj)
        seen = done.get(id(obj))
        if seen is not None:
            return seen[1]
        # The original stays referenced here, so that no id is reused meanwhile.
        done[id(obj)] = (obj, obj)
        if kind is list:
            obj[:] = [visit(item) for item in obj]
        elif kind is dict:
            pairs = [(visit(k), visit(v)) for k, v in obj.items()]
            obj.clear()
            obj.update(pairs)
        elif kind is set:
            items = [visit(item) for item in obj]
            obj.clear()
            obj.update(items)
        else:
            items = [visit(item) for item in obj]
            if any(new is not old for new, old in zip(items, obj)):
                done[id(obj)] = (obj, kind(items))
        return done[id(obj)][1]

    try:
        return visit(value)
    finally:
        done.clear()  # visit() refers to itself: free the originals now, not at gc
