"""Readers and writers for NEURON ``.dat`` and Axon ``.atf`` recordings.

Every reader returns the same :class:`Recording` type; ``read_neuron_dat``
and ``read_atf`` keep Brian's meaning (every column as rows, and
``(times, values)``).  Bringing folders
of recordings into a data directory is :mod:`datamanager.importer`.
"""

from __future__ import annotations

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
