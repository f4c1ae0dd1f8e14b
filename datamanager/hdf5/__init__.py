"""Export collated results to one self-describing HDF5 file, and read it back.

The file needs neither datamanager nor pickle to be read: every value maps to
plain HDF5 datasets and groups (:mod:`~datamanager.hdf5.schema`).
:func:`load_hdf5` reverses it exactly (:mod:`~datamanager.hdf5.load`).

Layout of an export::

    /                        attrs: datamanager_version, datamanager_name, export_time, ...
    /sessions/<session>      group; attr ``metadata``: the session metadata as JSON
    /sessions/<session>/<key>
    /merged/<key>            with merged=True: the get_merged result
    /merged_index/<key>      (session, start, stop) rows when /merged/<key> also
                             holds the per-session values (they are then not
                             repeated under /sessions)
    /files/<sha256>          the bytes of each stored file the values refer to, once

:mod:`~datamanager.hdf5.export` handles the file (temporary name, atomic
publish) and :mod:`~datamanager.hdf5.merge` writes the values, stacking those
of one key across sessions.
"""

from __future__ import annotations

from .export import ExportReport, export_hdf5
from .files import load_file
from .load import load_hdf5
from .schema import SCHEMA_VERSION, PickledValue, escape_name, unescape_name

__all__ = [
    "SCHEMA_VERSION",
    "ExportReport",
    "PickledValue",
    "escape_name",
    "export_hdf5",
    "load_file",
    "load_hdf5",
    "unescape_name",
]
