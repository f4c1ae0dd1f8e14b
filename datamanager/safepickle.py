"""Pickling values for the store, and unpickling them with or without trust.

Safe mode exists because a pickle can run any code when it is loaded: a data
directory received from somebody else must be readable without that risk.  In
safe mode a pickle may name only the globals below, which is enough for
builtin values, numpy arrays, dtypes and scalars, and the classes that
register themselves with :func:`register_safe_type` (the library's own
:class:`~datamanager.Recording` does, so the store needs no knowledge of
recordings).  None of them is numpy's own unpickling code, which trusts what
it is given: numpy values are rebuilt by the checked stand-ins of
:mod:`datamanager._safenumpy`.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
from typing import Any, Callable, TypeVar

from . import _safenumpy as sn
from .errors import UnsafeValueError, UnstorableValueError

__all__ = ["PROTOCOL", "dumps", "loads", "malformed", "py2_text", "register_safe_type"]

PROTOCOL = 5
T = TypeVar("T")

# numpy 1.x pickles name numpy.core, numpy 2.x numpy._core.
_NUMPY_CORE = (
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core.numeric",
    "numpy._core.numeric",
)


def _items(kind: type) -> Callable[..., Any]:
    def make(items: Any = ()) -> Any:
        # Only materialised items: set(range(10**12)) would never finish.
        if type(items) not in (list, tuple):
            raise sn.Malformed(f"{kind.__name__} of {type(items).__name__}")
        return kind(items)

    return make


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    # bytearray(10**12) would fill memory: only pickled contents (protocol 2
    # writes them as latin-1 text).
    if type(data) is bytes and encoding is None:
        return bytearray(data)
    if type(data) is str and encoding in ("latin-1", "latin1"):
        return bytearray(data, "latin-1")
    raise sn.Malformed(f"bytearray of {type(data).__name__}")


def _encode(text: Any, encoding: Any) -> bytes:
    # How protocol 2 pickles written by Python 3 hold bytes.
    if type(text) is not str or encoding not in ("latin-1", "latin1"):
        raise sn.Malformed(f"_codecs.encode of {type(text).__name__}, {sn.short(encoding)}")
    return text.encode("latin-1")


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "range"): range,
    ("builtins", "set"): _items(set),
    ("builtins", "frozenset"): _items(frozenset),
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "bytes"): lambda: b"",  # how protocol 2 writes b""
    ("_codecs", "encode"): _encode,
    ("numpy", "ndarray"): sn.NDARRAY,
    ("numpy", "dtype"): sn.DtypeStandIn,
    **{(module, "_reconstruct"): sn.reconstruct for module in _NUMPY_CORE},
    **{(module, "_frombuffer"): sn.frombuffer for module in _NUMPY_CORE},
    **{(module, "scalar"): sn.scalar for module in _NUMPY_CORE},
}


def register_safe_type(cls: type[T], *old_names: str) -> type[T]:
    """Let safe mode unpickle instances of *cls*; returns *cls* (a class decorator).

    Only for a class whose ``__reduce__`` returns ``(cls, args)`` with args of
    builtin values and numpy arrays, which safe mode rebuilds and checks
    before *cls* sees them.  A pickle names the class by module and name:
    *old_names* (``"module.Name"``) keep values stored before the class moved
    loading.
    """

    def make(*args: Any) -> T:
        return cls(*sn.resolve_all(args))  # an argument may be an array stand-in

    for name in (f"{cls.__module__}.{cls.__qualname__}", *old_names):
        module, _, qualname = name.rpartition(".")
        _SAFE_GLOBALS[(module, qualname)] = make
    return cls


class _UnsafeGlobal(pickle.UnpicklingError):
    def __init__(self, class_name: str) -> None:
        super().__init__(class_name)
        self.class_name = class_name


def py2_text(data: bytes) -> str:
    """A Python 2 byte string as text: UTF-8 when it is valid UTF-8, else latin-1.

    The one rule for Python 2 ``str`` keys and values of legacy data: text
    that Python 2 code wrote (UTF-8 in practice) reads back as written, and
    any other bytes still load, one character per byte.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class _SafeGlobals:
    """The ``find_class`` of safe mode, for either unpickler implementation."""

    made: list[sn.StandIn]  # every stand-in this load created

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy" and name.startswith("dtype["):
            name = "dtype"  # numpy >= 2 may name a dtype's class numpy.dtype[float64]
        elif module == "__builtin__":  # Python 2's name, also in protocol 2 pickles
            module, name = "builtins", "range" if name == "xrange" else name
        found = _SAFE_GLOBALS.get((module, name))
        if found is None:
            raise _UnsafeGlobal(f"{module}.{name}")
        if found is not sn.DtypeStandIn and found is not sn.reconstruct:
            return found

        def track(*args: Any) -> Any:
            made = found(*args)
            self.made.append(made)
            return made

        return track


class _SafeUnpickler(_SafeGlobals, pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.made = []


class _Py2Unpickler(pickle._Unpickler):
    """Unpickles protocol 0-2 pickles, remembering the strings of Python 2 ``str`` opcodes.

    Those strings are decoded as latin-1 while loading, because numpy
    rebuilds arrays and dtypes from them and needs every byte back; the ones
    left in the value are decoded again by :func:`py2_text` afterwards.
    Only the pure-Python unpickler has a hook for those opcodes
    (``_decode_string``), and Python 3 never writes them, so native values
    keep the C unpickler.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.made = []
        self.py2_strings: list[str] = []  # held, so that their ids stay unique

    def _decode_string(self, value: bytes) -> str:
        text = value.decode("latin-1")
        self.py2_strings.append(text)
        return text


class _SafePy2Unpickler(_SafeGlobals, _Py2Unpickler):
    pass


def _referenced(objects: list[Any]) -> bool:
    """Whether anything besides the list *objects* holds one of its items.

    A probe that only the list holds gives the baseline, measured the same
    way, so the interpreter's own reference-counting conventions cancel out.
    """
    objects.append(object())
    counts = [sys.getrefcount(item) for item in objects]
    objects.pop()
    return max(counts) > counts[-1]


def dumps(key: str, value: Any) -> bytes:
    """Pickle *value* with protocol 5, or raise :class:`UnstorableValueError`."""
    try:
        return pickle.dumps(value, protocol=PROTOCOL)
    except Exception as exc:  # pickling can fail with almost any exception type
        reason = f"{type(exc).__name__}: {exc}"
        raise UnstorableValueError(key, type(value).__qualname__, reason) from exc


def loads(data: bytes, *, safe: bool, session: str, key: str) -> Any:
    """Unpickle *data*; with *safe* only builtin and numpy values are allowed.

    Pickles of protocol 0 to 2 may come from Python 2 (legacy Brian data):
    numpy arrays load exact, and each Python 2 ``str`` left in the value
    (inside builtin containers too) is decoded by :func:`py2_text`; Python 3
    never writes those, so its values do not change.

    Raises
    ------
    UnsafeValueError
        In safe mode, for a pickle that names any other class or function.
    Exception
        Whatever damaged data makes the unpickler raise; in safe mode that
        includes ``pickle.UnpicklingError`` for numpy values numpy never writes.
    """
    # Python 2 strings need the slower pure-Python unpickler: only a pickle
    # of protocol 0-2 holding a byte of their opcodes (STRING, BINSTRING,
    # SHORT_BINSTRING) may contain one.
    py2 = not data.startswith((b"\x80\x03", b"\x80\x04", b"\x80\x05")) and any(
        op in data for op in (b"S", b"T", b"U")
    )
    if py2:
        unpickler: Any = (_SafePy2Unpickler if safe else _Py2Unpickler)(data)
    elif not safe:
        return pickle.loads(data, encoding="latin1")
    else:
        unpickler = _SafeUnpickler(data)
    try:
        value = unpickler.load()
    except _UnsafeGlobal as exc:
        raise UnsafeValueError(session, key, exc.class_name) from None
    finally:
        unpickler.memo.clear()
    if py2 and unpickler.py2_strings:
        ids = {id(text) for text in unpickler.py2_strings}
        value = sn.resolve_all(
            value, lambda obj: py2_text(obj.encode("latin-1")) if id(obj) in ids else obj
        )
    if not safe:
        return value
    made = unpickler.made
    del unpickler
    # Stand-ins that numpy values consumed are gone; those still held are
    # inside the value (a dtype stored as a value, an array of an old
    # pickle) and are replaced by walking it.  Only then is it known whether
    # one was used before the pickle gave it its state: it is still held.
    if _referenced(made):
        value = sn.resolve_all(value)
    sn.release_all(made)  # unresolved ones may hold others in their arguments
    if _referenced(made):
        raise sn.Malformed("a numpy value is used before it is complete")
    return value


_PUTS = frozenset(["PUT", "BINPUT", "LONG_BINPUT"])


def malformed(data: bytes) -> str | None:
    """Why *data* is not a well-formed pickle, or None; parsed, never executed."""
    try:
        for opcode, arg, _ in pickletools.genops(data):
            # A memo index beyond the pickle's length names no earlier item;
            # the unpickler would allocate a memo that large.
            if opcode.name in _PUTS and arg > len(data):
                return f"memo index {arg} in a pickle of {len(data)} bytes"
    except Exception as exc:  # genops raises ValueError and others on damage
        return str(exc) or type(exc).__name__
    return None
