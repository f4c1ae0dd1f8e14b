"""The header of a ``.npy`` file (a session's side file), read without trusting it.

One parser for every reader of side files, so that they agree on what a
valid file is: format versions 1.0, 2.0 and 3.0 (numpy's ``.npy`` format:
magic string, version, header length, then a Python literal dict giving
``descr``, ``fortran_order`` and ``shape``), arrays without Python objects
only, and a data size that follows from the header.
"""

from __future__ import annotations

import ast
import math
import struct
from typing import IO, NamedTuple

import numpy as np

__all__ = ["NpyHeader", "read_npy_data", "read_npy_header"]

_MAGIC = b"\x93NUMPY"
# Version -> (struct format of the header length, encoding of the header).
_VERSIONS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
# numpy refuses longer headers too: literal_eval is slow on big inputs.
_MAX_HEADER = 10_000


class NpyHeader(NamedTuple):
    """What a ``.npy`` header says: the array's layout and where its data starts."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    offset: int  #: the data's first byte
    nbytes: int  #: the data's length

    @property
    def size(self) -> int:
        """The length of a whole file with this header."""
        return self.offset + self.nbytes


def read_npy_header(f: IO[bytes]) -> NpyHeader:
    """Read the header at the start of the open file *f*.

    Raises
    ------
    ValueError
        If the header is damaged, of an unknown version, or describes an
        array holding Python objects.
    """
    start = f.read(8)
    if len(start) < 8 or start[:6] != _MAGIC:
        raise ValueError("not a .npy file (no magic string)")
    version = (start[6], start[7])
    if version not in _VERSIONS:
        raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
    length_format, encoding = _VERSIONS[version]
    raw = f.read(struct.calcsize(length_format))
    if len(raw) < struct.calcsize(length_format):
        raise ValueError("the header is cut short")
    (length,) = struct.unpack(length_format, raw)
    if length > _MAX_HEADER:
        raise ValueError(f"a header of {length} bytes (at most {_MAX_HEADER} expected)")
    text = f.read(length)
    if len(text) < length:
        raise ValueError("the header is cut short")
    try:
        fields = ast.literal_eval(text.decode(encoding))
        if type(fields) is not dict or set(fields) != {"descr", "fortran_order", "shape"}:
            raise ValueError(f"a header of {fields!r:.80}")
        dtype = np.lib.format.descr_to_dtype(fields["descr"])
    except Exception as exc:  # literal_eval and descr_to_dtype raise many types
        raise ValueError(f"unreadable header ({type(exc).__name__}: {exc})") from None
    shape, fortran_order = fields["shape"], fields["fortran_order"]
    if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"shape {shape!r:.80} in the header")
    if type(fortran_order) is not bool:
        raise ValueError(f"fortran_order {fortran_order!r:.20} in the header")
    if dtype.hasobject:
        raise ValueError(f"an array of {dtype} (it holds Python objects)")
    count = math.prod(shape)
    # numpy writes no such file (it stores zero-width strings as width 1),
    # and the data size of 0 bytes it implies would not bound the memory
    # numpy allocates for that many elements.
    if dtype.itemsize == 0 and count:
        raise ValueError(f"{count} elements of the zero-width {dtype} in the header")
    return NpyHeader(shape, fortran_order, dtype, 8 + len(raw) + length, count * dtype.itemsize)


def read_npy_data(f: IO[bytes], header: NpyHeader) -> np.ndarray:
    """Read the data that follows *header* in the open file *f* into a new array.

    Read straight into the array's memory: ``np.fromfile`` goes through
    stdio and runs several times slower on large files.

    Raises
    ------
    ValueError
        If the file ends before the data does.
    """
    order = "F" if header.fortran_order else "C"
    if not header.nbytes:
        return np.empty(header.shape, header.dtype, order=order)
    # The buffer is sized by the header's byte count, which the caller has
    # checked against the file, never by the element count alone.
    raw = np.empty(header.nbytes, np.uint8)
    buffer = memoryview(raw)
    done = 0
    while done < len(buffer):
        n = f.readinto(buffer[done:])
        if not n:
            raise ValueError(f"{done} of {len(buffer)} bytes of data could be read")
        done += n
    return raw.view(header.dtype).reshape(header.shape, order=order)
