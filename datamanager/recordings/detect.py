"""Choosing a reader by content: the ATF signature, then NEURON's layouts."""

from __future__ import annotations

import os
from typing import Union

from ..errors import RecordingFormatError
from .atf import is_atf, load_atf
from .neuron import is_neuron, load_neuron_dat
from .recording import Recording

__all__ = ["load_recording", "sniff"]

PathLike = Union[str, "os.PathLike[str]"]


def sniff(path: PathLike) -> str | None:
    """``"atf"``, ``"neuron"`` or None (not a recording), from the first 64 KiB.

    Never raises for content; an unreadable file raises OSError.
    """
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if is_atf(head):
        return "atf"
    if is_neuron(head):
        return "neuron"
    return None


def load_recording(path: PathLike) -> list[Recording]:
    """Read a recording file of any supported format, chosen by content.

    Parameters
    ----------
    path : str or os.PathLike
        An ATF file (recognised by its ``ATF`` signature) or a NEURON file
        (any of the layouts :func:`load_neuron_dat` reads), whatever its name.

    Returns
    -------
    list of Recording
        One per block: a single Recording for ATF and most NEURON files.

    Raises
    ------
    RecordingFormatError
        If the content is neither, or is malformed, or *path* is a directory.
    FileNotFoundError
        If *path* does not exist.
    """
    if os.path.isdir(path):
        raise RecordingFormatError(
            os.fspath(path),
            None,
            "a recording file",
            "a directory (import_recordings reads folders)",
        )
    kind = sniff(path)
    if kind == "atf":
        return [load_atf(path)]
    if kind == "neuron":
        return load_neuron_dat(path)
    with open(path, "rb") as fh:
        head = fh.read(40)
    raise RecordingFormatError(
        os.fspath(path),
        1,
        "an ATF signature or a NEURON layout",
        "an empty file" if not head else repr(head)[1:],
    )
