"""Readers and writers for NEURON ``.dat`` and Axon ``.atf`` recordings.

Every reader returns the same :class:`Recording` type; ``read_neuron_dat``
and ``read_atf`` keep Brian's ``(times, values)`` meaning.  Bringing folders
of recordings into a data directory is :mod:`datamanager.importer`.
"""

from __future__ import annotations

from typing import Any

from .atf import load_atf, read_atf, write_atf
from .detect import load_recording
from .neuron import load_neuron_dat, read_neuron_dat, write_neuron_dat
from .recording import Recording

__all__ = [
    "Recording",
    "load_atf",
    "load_neuron_dat",
    "load_recording",
    "read_atf",
    "read_neuron_dat",
    "write_atf",
    "write_neuron_dat",
]


def __getattr__(name: str) -> Any:
    # ``from datamanager.recordings import import_recordings`` was the
    # documented spelling before the importer moved up beside the other
    # features; importing it only on request keeps this package free of
    # DataManager and of the importer.
    if name in ("ImportSummary", "import_recordings"):
        from .. import importer

        return getattr(importer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
