"""Keep the results of many simulation runs and collate them for analysis.

Each process writes into its own crash-safe session; an analysis script
collates the values across all sessions of a data directory.

>>> import tempfile
>>> from datamanager import DataManager
>>> dm = DataManager("sweep", tempfile.mkdtemp())
>>> dm.session()["rate"] = [12.5]
>>> dm.get_merged("rate")
[12.5]
"""

from __future__ import annotations

from .collate import SessionReader
from .errors import (
    CorruptSessionError,
    DataManagerError,
    DataManagerWarning,
    ExportError,
    InvalidNameError,
    RecordingFormatError,
    UnsafeValueError,
    UnstorableValueError,
    UnsupportedValueError,
)
from .locking import LockingSession
from .manager import DataManager, Problem
from .session import Session

__version__ = "0.1.0"

__all__ = [
    "CorruptSessionError",
    "DataManager",
    "DataManagerError",
    "DataManagerWarning",
    "ExportError",
    "InvalidNameError",
    "LockingSession",
    "Problem",
    "RecordingFormatError",
    "Session",
    "SessionReader",
    "UnsafeValueError",
    "UnstorableValueError",
    "UnsupportedValueError",
    "__version__",
]
