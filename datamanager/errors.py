"""The exception hierarchy of datamanager.

Every error the library raises on purpose derives from :class:`DataManagerError`
and also from the builtin exception a caller would already catch for the same
kind of problem (``ValueError``, ``OSError``, ...), so existing ``except``
clauses keep working.  Each exception keeps its details as attributes that are
also its constructor arguments, so it pickles across processes unchanged.  A
missing key stays a plain :class:`KeyError`.  Warnings go through
:func:`warn_caller`, which attributes them to the user's code.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import warnings
from typing import Any

__all__ = [
    "CorruptSessionError",
    "DataManagerError",
    "DataManagerWarning",
    "ExportError",
    "ExportFormatError",
    "InvalidNameError",
    "RecordingFormatError",
    "TransactionAbortedError",
    "UnsafeValueError",
    "UnstorableValueError",
    "UnsupportedValueError",
]


class DataManagerError(Exception):
    """Base class of every error raised by datamanager on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the constructor arguments, not from the message, so that
        # the attributes survive a trip through pickle (e.g. out of a worker).
        return (type(self), self._args)

    def __init__(self, *args: Any) -> None:
        self._args = args
        super().__init__(*args)


class _FileError(DataManagerError, OSError):
    """A DataManagerError that is also an OSError about one file.

    OSError reads ``errno``, ``strerror`` and ``filename`` from its first three
    arguments, which are not the constructor arguments of these errors; so
    each subclass hands OSError those three fields itself, and keeps its own
    arguments as ``args`` for ``repr`` and pickling.
    """

    def __init__(self, args: tuple[Any, ...], code: int | None, reason: str, path: str) -> None:
        OSError.__init__(self, code, reason, path)
        self._args = self.args = args


class InvalidNameError(DataManagerError, ValueError):
    """A name that cannot name a session file, or a data directory (*what* says which)."""

    def __init__(self, name: Any, reason: str, what: str = "session name") -> None:
        super().__init__(name, reason, what)
        self.name = name
        self.reason = reason
        self.what = what

    def __str__(self) -> str:
        return f"invalid {self.what} {self.name!r}: {self.reason}"


class UnstorableValueError(DataManagerError, TypeError):
    """A value that cannot be pickled, so it was not stored."""

    def __init__(self, key: str, type_name: str, reason: str) -> None:
        super().__init__(key, type_name, reason)
        self.key = key
        self.type_name = type_name
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"cannot store key {self.key!r}: a value of type {self.type_name} "
            f"cannot be pickled ({self.reason}); the session is unchanged"
        )


class CorruptSessionError(_FileError):
    """A session (or one of its files) that cannot be read as stored.

    ``path`` (also ``filename``) is the session's file, ``reason`` (also
    ``strerror``) what is wrong with it; ``errno`` is None.
    """

    def __init__(self, path: str, reason: str, key: str | None = None) -> None:
        super().__init__((path, reason, key), None, reason, path)
        self.path = path
        self.reason = reason
        self.key = key

    def __str__(self) -> str:
        where = f" (key {self.key!r})" if self.key is not None else ""
        return f"corrupt session {self.path}{where}: {self.reason}"


class TransactionAbortedError(_FileError):
    """A transaction undone as a whole by a fault, such as a full disk.

    None of the block's writes were stored.  The block can write no more: each
    later write in it, and the end of the block, raise this error again, so
    that a block which catches it cannot store later values one by one as if
    they were still part of the transaction.  ``errno`` tells why
    (``errno.ENOSPC`` for a full disk), ``filename`` is the session's file.
    """

    def __init__(self, code: int | None, reason: str, path: str) -> None:
        super().__init__((code, reason, path), code, reason, path)
        self.reason = reason
        self.path = path

    def __str__(self) -> str:
        return (
            f"transaction on session {self.path} rolled back ({self.reason}): none of "
            "its writes were stored, and its block can write no more"
        )


class UnsafeValueError(DataManagerError, pickle.UnpicklingError):
    """A stored value that safe mode refuses to unpickle."""

    def __init__(self, session: str, key: str, class_name: str) -> None:
        super().__init__(session, key, class_name)
        self.session = session
        self.key = key
        self.class_name = class_name

    def __str__(self) -> str:
        return self.explain("open with safe=False to trust this data")

    def explain(self, hint: str) -> str:
        """Return the message, ending with *hint* on how to get past the refusal.

        Python's message names the ``safe`` argument; the command line passes
        a hint that names its ``--unsafe`` flag.
        """
        return (
            f"session {self.session!r}, key {self.key!r}: safe mode refuses to load "
            f"an object of class {self.class_name}; expected numpy arrays, numpy "
            f"scalars or builtin values ({hint})"
        )


class RecordingFormatError(DataManagerError, ValueError):
    """A recording file that does not follow its format."""

    def __init__(self, path: str, lineno: int | None, expected: str, found: str) -> None:
        super().__init__(path, lineno, expected, found)
        self.path = path
        self.lineno = lineno
        self.expected = expected
        self.found = found

    def __str__(self) -> str:
        where = f"{self.path}, line {self.lineno}" if self.lineno else str(self.path)
        return f"{where}: expected {self.expected}, found {self.found}"


class UnsupportedValueError(DataManagerError, TypeError):
    """A value that the HDF5 schema cannot represent."""

    def __init__(self, session: str, key: str, type_name: str) -> None:
        super().__init__(session, key, type_name)
        self.session = session
        self.key = key
        self.type_name = type_name

    def __str__(self) -> str:
        return self.explain("use on_unsupported='skip' or 'pickle'")

    def explain(self, hint: str) -> str:
        """Return the message, ending with *hint* on what to do about the value.

        Python's message names the ``on_unsupported`` argument; the command
        line passes a hint that names its ``--on-unsupported`` flag.
        """
        return (
            f"session {self.session!r}, key {self.key!r}: the HDF5 schema cannot hold "
            f"a value of type {self.type_name} ({hint})"
        )


class ExportError(_FileError):
    """An export that could not be completed; nothing was written at the target.

    ``errno`` is that of the failure where one applies (``errno.EEXIST`` for a
    target that exists), else None; ``filename`` is the target.
    """

    def __init__(self, path: str, reason: str, code: int | None = None) -> None:
        super().__init__((path, reason, code), code, reason, path)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot export to {self.path}: {self.reason}"


class ExportFormatError(_FileError):
    """An HDF5 file that :func:`~datamanager.load_hdf5` refuses: not as an export writes it.

    An ``OSError`` like h5py's own errors for files it cannot read, so one
    ``except OSError`` covers every file that does not load; ``filename`` is
    the file, ``strerror`` what was found where, ``errno`` None.
    """

    def __init__(self, path: str, h5path: str, expected: str, found: str) -> None:
        reason = f"at {h5path}, expected {expected}, found {found}"
        super().__init__((path, h5path, expected, found), None, reason, path)
        self.path = path
        self.h5path = h5path
        self.expected = expected
        self.found = found

    def __str__(self) -> str:
        return f"{self.path} is not a datamanager export: {self.strerror}"


class DataManagerWarning(UserWarning):
    """A file in a data directory that collation skipped (stray or corrupt)."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_caller(message: str) -> None:
    """Issue a :class:`DataManagerWarning` attributed to the caller of the library.

    A fixed ``stacklevel`` is right for one call path only, and the same
    warning is reached from many public methods and generators; so the frames
    of this package are skipped, and the warning names the user's line.
    """
    frame, level = sys._getframe(1), 2
    # The context managers of contextlib sit between our frames too.
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE)
        or frame.f_code.co_filename == contextlib.__file__
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DataManagerWarning, stacklevel=level)
