"""Berkeley DB hash files, read without libdb.

Python 2's ``dbhash`` (what ``anydbm`` chose first) and the ``dbm.ndbm`` of
Debian's python3 (linked against Berkeley DB) store shelves in the hash
access method of Berkeley DB.  A Python without that library cannot open
them, so this module reads the on-disk format itself, read-only:

- page 0 is the metadata page: the hash magic ``0x061561`` at byte 12, in
  the byte order of the machine that wrote the file (so the magic tells the
  order), the page size at byte 20;
- every page starts with a 26-byte header (its number at byte 8, the next
  page of its chain at 16, its item count at 20, a length at 22, its type at
  25) followed by 2-byte offsets of its items, which fill the page from the
  end;
- bucket pages (types ``P_HASH_UNSORTED`` and ``P_HASH``) hold key and data
  items in turn; an item is inline bytes (``H_KEYDATA``) or, when larger
  than a page allows, a reference (``H_OFFPAGE``: first page and total
  length) to a chain of overflow pages, each holding the length at byte 22
  of its data after the header.

The hash function is not needed: every bucket page is read, in page order,
which also covers the overflow pages that continue a full bucket.  Deleted
items are removed from their page by Berkeley DB, and freed pages get type
``P_INVALID``, so neither is seen.  Duplicate data items, encrypted and
checksummed files are refused: ``shelve`` never writes them.
"""

from __future__ import annotations

import os
import struct

__all__ = ["BdbHash", "locate"]

_HASH_MAGIC = 0x061561
_HEADER = 26  # bytes of every page header
_VERSIONS = range(7, 10)  # from the oldest Berkeley DB 4 and 5 open (7) to their own (9)
_P_INVALID, _P_HASH_UNSORTED, _P_OVERFLOW, _P_HASH = 0, 2, 7, 13
_H_KEYDATA, _H_DUPLICATE, _H_OFFPAGE, _H_OFFDUP = 1, 2, 3, 4
_HOFFPAGE_SIZE = 12  # type, 3 unused bytes, first page, total length


def _byte_order(head: bytes) -> str | None:
    """``'<'`` or ``'>'`` for the metadata page start *head* of a hash file, else None."""
    for order in "<>":
        if len(head) >= 16 and struct.unpack_from(order + "I", head, 12)[0] == _HASH_MAGIC:
            return order
    return None


def locate(path: str) -> str | None:
    """The Berkeley DB hash file of the shelf *path*, or None if it has none.

    Python 2's ``dbhash`` named the file like the shelf; ``dbm.ndbm`` on
    Berkeley DB adds ``.db``.
    """
    for candidate in (path, path + ".db"):
        try:
            with open(candidate, "rb") as f:
                if _byte_order(f.read(16)):
                    return candidate
        except OSError:  # missing, a directory, unreadable
            continue
    return None


class BdbHash:
    """The key/value pairs of a Berkeley DB hash file, read without writing a byte.

    Keys are indexed when the file is opened; values are read when asked for.

    Parameters
    ----------
    path : str
        The file itself (see :func:`locate`).

    Raises
    ------
    ValueError
        If the file is damaged or uses a feature ``shelve`` never writes; the
        message names the file and the page.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self._read_metadata()
            self._index = self._scan()
        except BaseException:
            self._file.close()
            raise

    def _fail(self, pgno: int, what: str) -> ValueError:
        return ValueError(f"Berkeley DB hash file {self.path}, page {pgno}: {what}")

    def _read_metadata(self) -> None:
        head = self._file.read(72)
        order = _byte_order(head)
        if order is None or len(head) < 72:
            raise self._fail(0, "no hash metadata page")
        version, pagesize, encrypted, _, metaflags = struct.unpack_from(order + "IIBBB", head, 16)
        if version not in _VERSIONS:
            raise self._fail(0, f"hash format version {version} is not supported")
        if pagesize < 512 or pagesize > 65536 or pagesize & (pagesize - 1):
            raise self._fail(0, f"page size {pagesize} is not a power of two in 512..65536")
        if encrypted or metaflags & 1:
            raise self._fail(0, "encrypted or checksummed pages are not supported")
        self._order, self._pagesize = order, pagesize
        size = os.fstat(self._file.fileno()).st_size
        # Berkeley DB extends the file to its last page when it allocates
        # pages, so a shorter file, or a part page, lost data at its end.
        last = struct.unpack_from(order + "I", head, 32)[0]
        if size % pagesize or size < (last + 1) * pagesize:
            raise self._fail(0, f"file cut short ({size} bytes, pages 0..{last} expected)")
        self._npages = size // pagesize

    def _page(self, pgno: int, types: tuple[int, ...]) -> tuple[bytes, int, int, int]:
        """Page *pgno*, its next page, item count, and header length field.

        Raises if it lies outside the file, is not of one of *types*, or
        names another page number in its header.
        """
        if not 0 < pgno < self._npages:
            raise self._fail(pgno, f"out of range (the file has {self._npages} pages)")
        self._file.seek(pgno * self._pagesize)
        page = self._file.read(self._pagesize)
        if len(page) < self._pagesize:
            raise self._fail(pgno, "cut short by the end of the file")
        number, _, nxt, entries, length = struct.unpack_from(self._order + "IIIHH", page, 8)
        if page[25] not in types:
            raise self._fail(pgno, f"type {page[25]}, expected one of {types}")
        if number != pgno:
            raise self._fail(pgno, f"its header says page {number}")
        return page, nxt, entries, length

    def _item(self, page: bytes, pgno: int, entries: int, i: int) -> tuple[int, int, int]:
        """Type, start and end of item *i* of a bucket page."""
        start = struct.unpack_from(self._order + "H", page, _HEADER + 2 * i)[0]
        end = (
            self._pagesize
            if i == 0
            else struct.unpack_from(self._order + "H", page, _HEADER + 2 * i - 2)[0]
        )
        if not _HEADER + 2 * entries <= start < end <= self._pagesize:
            raise self._fail(pgno, f"item {i} spans bytes {start}..{end}, outside the page")
        kind = page[start]
        if kind in (_H_DUPLICATE, _H_OFFDUP):
            raise self._fail(pgno, "duplicate data items, which shelve never writes")
        if kind not in (_H_KEYDATA, _H_OFFPAGE):
            raise self._fail(pgno, f"item {i} has unknown type {kind}")
        return kind, start, end

    def _bytes(self, page: bytes, pgno: int, entries: int, i: int) -> bytes:
        """The bytes of item *i* of a bucket page, inline or on overflow pages."""
        kind, start, end = self._item(page, pgno, entries, i)
        if kind == _H_KEYDATA:
            return page[start + 1 : end]
        if end - start != _HOFFPAGE_SIZE:
            raise self._fail(pgno, f"item {i} is an overflow reference of {end - start} bytes")
        first, total = struct.unpack_from(self._order + "II", page, start + 4)
        return self._overflow(first, total, pgno)

    def _overflow(self, pgno: int, total: int, owner: int) -> bytes:
        """The *total* bytes on the overflow chain starting at *pgno*, referenced from *owner*."""
        parts, seen, size = [], set(), 0
        while pgno:  # page 0 (PGNO_INVALID) ends the chain
            if pgno in seen:
                raise self._fail(owner, f"its overflow chain loops back to page {pgno}")
            seen.add(pgno)
            page, nxt, _, length = self._page(pgno, (_P_OVERFLOW,))
            size += length
            if _HEADER + length > self._pagesize or size > total:
                raise self._fail(pgno, f"overflow data longer than the {total} bytes expected")
            parts.append(page[_HEADER : _HEADER + length])
            pgno = nxt
        if size != total:
            raise self._fail(owner, f"overflow chain holds {size} bytes, expected {total}")
        return b"".join(parts)

    def _scan(self) -> dict[bytes, tuple[int, int]]:
        """Map every key to the page and item index of its value."""
        index: dict[bytes, tuple[int, int]] = {}
        for pgno in range(1, self._npages):
            self._file.seek(pgno * self._pagesize + 25)
            if self._file.read(1) not in (bytes([_P_HASH_UNSORTED]), bytes([_P_HASH])):
                continue  # overflow, free, or never written (a hole of zeros)
            page, _, entries, _ = self._page(pgno, (_P_HASH_UNSORTED, _P_HASH))
            if entries % 2 or _HEADER + 2 * entries > self._pagesize:
                raise self._fail(pgno, f"{entries} items, not key/data pairs that fit the page")
            for i in range(0, entries, 2):
                key = self._bytes(page, pgno, entries, i)
                if key in index:
                    raise self._fail(pgno, f"key {key!r} also on page {index[key][0]}")
                self._item(page, pgno, entries, i + 1)  # a damaged value fails the open
                index[key] = (pgno, i + 1)
        return index

    def keys(self) -> list[bytes]:
        """Every key, in page order."""
        return list(self._index)

    def __getitem__(self, key: bytes) -> bytes:
        pgno, i = self._index[key]
        page, _, entries, _ = self._page(pgno, (_P_HASH_UNSORTED, _P_HASH))
        return self._bytes(page, pgno, entries, i)

    def close(self) -> None:
        """Close the file."""
        self._file.close()
