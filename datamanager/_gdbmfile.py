"""A read-only reader of GNU dbm files, needing neither libgdbm nor ``dbm.gnu``.

Fedora/RHEL's python3, and Debian's with ``python3-gdbm``, write ``shelve``
files in this format; a Python built without ``dbm.gnu`` cannot open them.
Layout (gdbm's ``gdbmdefs.h``, C structs in the writer's byte order and
alignment): a header (magic, block size, directory address and size, bucket
size and capacity, then free-space tables), a directory of bucket addresses
(extendible hashing: several entries may name one bucket), and buckets whose
slots hold a hash value (-1 when unused), the first key bytes, the address
of the key record (the value follows the key) and both sizes.  Free space
and records no slot names (overwritten or deleted values) are ignored.  The
file is opened read-only and never written.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

__all__ = ["GdbmFile", "is_gdbm"]

# Magic numbers, as read in the writer's byte order; the value says whether
# file offsets are 32 or 64 bits wide (None: the original format, whose width
# is whatever off_t was on the writer, found from the bucket geometry).
_MAGICS = {
    0x13579ACE: None,  # original
    0x13579ACD: 4,
    0x13579ACF: 8,
    0x13579AD0: 4,  # "numsync" formats (gdbm >= 1.21): same layout, a sync counter
    0x13579AD1: 8,
}
_SLOTS_IN_BUCKET = 6  # the small free-space table at the start of each bucket
_UNUSED = -1  # the hash value of an empty bucket slot


def is_gdbm(path: str) -> bool:
    """Whether *path* is a file starting with a GNU dbm magic number, in either byte order."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:  # a directory, a missing or unreadable file
        return False
    return len(head) == 4 and any(struct.unpack(order + "I", head)[0] in _MAGICS for order in "<>")


class _Layout:
    """Struct formats of one byte order and offset width, with C alignment."""

    def __init__(self, order: str, width: int) -> None:
        off = "q" if width == 8 else "i"
        pad = "4x" if width == 8 else ""  # an int before an 8-byte offset is padded
        self.width = width
        self.header = struct.Struct(f"{order}ii{off}iiii{off}")
        self.directory = (order, off)
        avail = f"i{pad}{off}"
        self.bucket_head = struct.Struct(f"{order}i{pad}{avail * _SLOTS_IN_BUCKET}ii")
        self.element = struct.Struct(f"{order}i4s{off}ii")

    def capacity(self, bucket_size: int) -> int:
        """The slots in a bucket of *bucket_size* bytes, as gdbm computes them."""
        return (bucket_size - self.bucket_head.size) // self.element.size


class GdbmFile:
    """The keys and values of a GNU dbm file, read without writing a byte.

    Parameters
    ----------
    path : str
        The file, as ``dbm.gnu`` was given it (no suffix).

    Raises
    ------
    ValueError
        If the file is not GNU dbm, or its header, directory or buckets point
        outside the file or hold impossible sizes (a damaged or crafted file).
    OSError
        If the file cannot be read.
    """

    def __init__(self, path: str) -> None:
        self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self._size = os.fstat(self._file.fileno()).st_size
            self._index = self._read_index()
        except BaseException:
            self._file.close()
            raise

    def keys(self) -> list[bytes]:
        """Every key, in the order of the buckets."""
        return list(self._index)

    def __getitem__(self, key: bytes) -> bytes:
        start, size = self._index[key]
        return self._read(start, size)

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def _read(self, start: int, size: int) -> bytes:
        if start < 0 or size < 0 or start + size > self._size:
            raise ValueError(f"{size} bytes at {start} lie outside the file ({self._size} bytes)")
        self._file.seek(start)
        data = self._file.read(size)
        if len(data) != size:
            raise ValueError(f"the file ended inside {size} bytes at {start}")
        return data

    def _layout(self) -> tuple[_Layout, tuple[int, ...]]:
        """The layout of this file, and its header fields after the magic number."""
        head = self._read(0, 4) if self._size >= 4 else b""
        for order in "<>":
            if head and struct.unpack(order + "I", head)[0] in _MAGICS:
                break
        else:
            raise ValueError("not a GNU dbm file (no magic number)")
        width = _MAGICS[struct.unpack(order + "I", head)[0]]
        # The header records how many slots a bucket has: only the right
        # offset width gives that number from the bucket size.
        for w in (width,) if width else (8, 4):
            layout = _Layout(order, w)
            if self._size < layout.header.size:
                raise ValueError(f"truncated GNU dbm header ({self._size} bytes)")
            fields = layout.header.unpack(self._read(0, layout.header.size))[1:]
            bucket_size, slots = fields[4], fields[5]
            if 0 < slots == layout.capacity(bucket_size):
                return layout, fields
        raise ValueError("damaged GNU dbm header (bucket size and slot count disagree)")

    def _read_index(self) -> dict[bytes, tuple[int, int]]:
        layout, fields = self._layout()
        _block, dir_at, dir_size, dir_bits, bucket_size, slots, _next = fields
        if not 0 <= dir_bits <= 31 or dir_size != layout.width << dir_bits:
            raise ValueError(
                f"damaged GNU dbm directory: {dir_size} bytes for {dir_bits} address bits"
            )
        directory = self._read(dir_at, dir_size)
        order, off = layout.directory
        buckets = dict.fromkeys(struct.unpack(f"{order}{1 << dir_bits}{off}", directory))
        # Buckets and records each take their own bytes of the file: checked,
        # so that a crafted file cannot make the work grow faster than its size.
        if len(buckets) * bucket_size > self._size:
            raise ValueError(f"damaged GNU dbm directory: {len(buckets)} buckets do not fit")
        self._claimed = 0
        index: dict[bytes, tuple[int, int]] = {}
        for address in buckets:  # each distinct bucket once, in directory order
            self._read_bucket(layout, self._read(address, bucket_size), slots, index)
        return index

    def _read_bucket(
        self, layout: _Layout, bucket: bytes, slots: int, index: dict[bytes, tuple[int, int]]
    ) -> None:
        """Add the records of the used slots of *bucket* to *index*: key -> (address, size)."""
        count = layout.bucket_head.unpack_from(bucket)[-1]
        if not 0 <= count <= slots:
            raise ValueError(f"damaged GNU dbm bucket: {count} records in {slots} slots")
        found = 0
        for n in range(slots):
            offset = layout.bucket_head.size + n * layout.element.size
            hash_value, start, address, key_size, data_size = layout.element.unpack_from(
                bucket, offset
            )
            if hash_value == _UNUSED:
                continue
            self._claimed += max(key_size, 0) + max(data_size, 0)
            if self._claimed > self._size:
                raise ValueError("damaged GNU dbm buckets: records larger than the file")
            key = self._read(address, key_size)
            if not key.startswith(start[: min(key_size, 4)]) or key in index:
                raise ValueError(f"damaged GNU dbm record at {address}")
            if data_size < 0 or address + key_size + data_size > self._size:
                raise ValueError(f"damaged GNU dbm record at {address}: {data_size} bytes")
            index[key] = (address + key_size, data_size)
            found += 1
        if found != count:
            raise ValueError(f"damaged GNU dbm bucket: {found} records where {count} are counted")
