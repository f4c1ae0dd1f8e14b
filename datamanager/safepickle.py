"""Pickling values for the store, and unpickling them with or without trust.

Safe mode exists because a pickle can run any code when it is loaded: a data
directory received from somebody else must be readable without that risk.  In
safe mode only the globals below may be looked up while unpickling, which is
enough for builtin values, numpy arrays and scalars, and the library's own
:class:`~datamanager.recordings.recording.Recording`.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from .errors import UnsafeValueError, UnstorableValueError

__all__ = ["PROTOCOL", "dumps", "loads"]

PROTOCOL = 5

_SAFE_GLOBALS = frozenset(
    [("builtins", name) for name in ("complex", "set", "frozenset", "bytearray", "slice", "range")]
    + [
        (module, name)
        # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core.
        for module in (
            "numpy.core.multiarray",
            "numpy._core.multiarray",
            "numpy.core.numeric",
            "numpy._core.numeric",
        )
        for name in ("_reconstruct", "scalar", "_frombuffer")
    ]
    + [
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("datamanager.recordings.recording", "Recording"),
    ]
)


class _UnsafeGlobal(pickle.UnpicklingError):
    def __init__(self, class_name: str) -> None:
        super().__init__(class_name)
        self.class_name = class_name


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS or (
            # numpy dtypes pickle as numpy.dtype[float64] etc. in numpy >= 2.
            module == "numpy" and name.startswith("dtype[")
        ):
            return super().find_class(module, name)
        raise _UnsafeGlobal(f"{module}.{name}")


def dumps(key: str, value: Any) -> bytes:
    """Pickle *value* with protocol 5, or raise :class:`UnstorableValueError`."""
    try:
        return pickle.dumps(value, protocol=PROTOCOL)
    except Exception as exc:  # pickling can fail with almost any exception type
        reason = f"{type(exc).__name__}: {exc}"
        raise UnstorableValueError(key, type(value).__qualname__, reason) from exc


def loads(data: bytes, *, safe: bool, session: str, key: str) -> Any:
    """Unpickle *data*; with *safe* only builtin and numpy values are allowed.

    ``encoding='latin1'`` lets pickles written by Python 2 (legacy Brian data)
    load, numpy arrays included; it does not change Python 3 pickles.
    """
    if not safe:
        return pickle.loads(data, encoding="latin1")
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _UnsafeGlobal as exc:
        raise UnsafeValueError(session, key, exc.class_name) from None
