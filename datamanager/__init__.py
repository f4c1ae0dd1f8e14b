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

from .errors import (
    CorruptSessionError,
    DataManagerError,
    DataManagerWarning,
    ExportError,
    ExportFormatError,
    InvalidNameError,
    RecordingFormatError,
    TransactionAbortedError,
    UnsafeValueError,
    UnstorableValueError,
    UnsupportedValueError,
)
from .filestore import StoredFile, hash_files
from .hdf5 import ExportReport, export_hdf5, load_hdf5
from .importer import ImportSummary
from .index import IndexSummary
from .locking import LockingSession
from .manager import DataManager, Problem
from .nwb import export_nwb
from .readers import SessionReader
from .recordings import (
    Recording,
    load_atf,
    load_neuron_dat,
    load_recording,
    read_atf,
    read_neuron_dat,
    write_atf,
    write_neuron_dat,
)
from .session import Session
from .tasks import (
    TaskFailure,
    TaskSummary,
    rerun_tasks,
    run_tasks,
    task_failures,
    task_results,
    task_sweeps,
    task_table,
)

__version__ = "0.1.0"

__all__ = [
    "CorruptSessionError",
    "DataManager",
    "DataManagerError",
    "DataManagerWarning",
    "ExportError",
    "ExportFormatError",
    "ExportReport",
    "ImportSummary",
    "IndexSummary",
    "InvalidNameError",
    "LockingSession",
    "Problem",
    "Recording",
    "RecordingFormatError",
    "Session",
    "SessionReader",
    "StoredFile",
    "TaskFailure",
    "TaskSummary",
    "TransactionAbortedError",
    "UnsafeValueError",
    "UnstorableValueError",
    "UnsupportedValueError",
    "__version__",
    "export_hdf5",
    "export_nwb",
    "hash_files",
    "load_atf",
    "load_hdf5",
    "load_neuron_dat",
    "load_recording",
    "read_atf",
    "read_neuron_dat",
    "rerun_tasks",
    "run_tasks",
    "task_failures",
    "task_results",
    "task_sweeps",
    "task_table",
    "write_atf",
    "write_neuron_dat",
]
