"""Canonical item keys: a stable content hash of a parameter set.

:func:`run_tasks <datamanager.tasks.run_tasks>` stores each result under the
key of its item, so a resumed sweep recognises what an earlier run (another
process, another machine) already computed.  The key must therefore depend on
the item's content alone, never on ``hash()``, ``id()``, ``repr()`` or pickle
bytes, which vary between processes, runs and versions.
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import PurePath
from typing import Any

import numpy as np

from ..filestore import StoredFile, file_sha256

__all__ = ["item_key"]

# Bumped whenever the canonical encoding changes, so old and new keys never meet.
_KEY_VERSION = b"datamanager item key 1\0"
_SUPPORTED = (
    "None, bool, int, float, complex, str, bytes, and lists, tuples, dicts, sets "
    "of them, numpy arrays and scalars, pathlib.Path of files, StoredFile"
)


def item_key(item: Any) -> str:
    """Return the stable key of *item*: a hash of its canonical form.

    Equal items give equal keys in every process, run, Python hash seed and
    platform: dicts and sets are ordered by content, numpy scalars count as the
    Python numbers they equal, -0.0 as 0.0, every NaN as one NaN, numpy arrays
    by dtype, shape and (little-endian) bytes.  Values of different kinds stay
    apart even when Python calls them equal (``1``, ``1.0`` and ``True``; a list
    and a tuple; a list and an array).

    A file in the item counts by its content and base name: a
    :class:`pathlib.Path` to a file and a
    :class:`~datamanager.filestore.StoredFile` of the same content and name
    give the same key, wherever the files are.  Editing the file changes the
    key; touching it, moving it or storing it does not.

    Parameters
    ----------
    item : object
        None, bool, int, float, complex, str, bytes, numpy arrays (not of
        dtype object) and scalars, :class:`pathlib.Path` objects naming files
        (read once to hash them), StoredFiles, and lists, tuples, dicts and
        sets of these.

    Returns
    -------
    str
        32 hexadecimal digits.

    Raises
    ------
    TypeError
        For any other value, naming where in the item it was found.
    OSError
        For a Path whose file cannot be read (FileNotFoundError if missing).

    Examples
    --------
    >>> item_key({"tau": 0.01, "I": 2}) == item_key({"I": 2, "tau": 0.01})
    True
    >>> item_key(1) == item_key(1.0)
    False
    >>> item_key([open])
    Traceback (most recent call last):
    ...
    TypeError: item[0]: cannot derive a stable key from a value of type ...
    """
    return digest(item, "item")


def digest(item: Any, path: str) -> str:
    """Return :func:`item_key` of *item*; errors name it as *path* (``items[3]``)."""
    return hashlib.blake2b(_KEY_VERSION + _encode(item, path, set()), digest_size=16).hexdigest()


def _tlv(tag: bytes, payload: bytes) -> bytes:
    # Tag and length make every encoding self-delimiting, so concatenations
    # of different items can never coincide.
    return tag + len(payload).to_bytes(8, "little") + payload


def _float(x: float) -> bytes:
    return b"nan" if math.isnan(x) else (x + 0.0).hex().encode()  # + 0.0 turns -0.0 into 0.0


def _encode(obj: Any, path: str, active: set[int]) -> bytes:
    if obj is None:
        return b"N"
    if isinstance(obj, (bool, np.bool_)):
        return b"T" if obj else b"F"
    if isinstance(obj, (int, np.integer)):
        return _tlv(b"i", str(int(obj)).encode())
    if isinstance(obj, (float, np.floating)) and np.asarray(obj).itemsize <= 8:
        return _tlv(b"f", _float(float(obj)))
    if isinstance(obj, (complex, np.complexfloating)) and np.asarray(obj).itemsize <= 16:
        z = complex(obj)
        return _tlv(b"c", _float(z.real) + b"," + _float(z.imag))
    if isinstance(obj, str):
        return _tlv(b"s", obj.encode("utf-8", "surrogatepass"))
    if isinstance(obj, (bytes, bytearray)):
        return _tlv(b"b", bytes(obj))
    if isinstance(obj, (PurePath, StoredFile)):
        sha256 = obj.sha256 if isinstance(obj, StoredFile) else file_sha256(obj)[0]
        return _tlv(b"p", sha256.encode() + b"/" + obj.name.encode("utf-8", "surrogatepass"))
    if isinstance(obj, np.generic):  # long double and friends: exact, as a 0-d array
        return _encode_array(np.asarray(obj), path)
    if isinstance(obj, np.ndarray) and not isinstance(obj, np.ma.MaskedArray):
        return _encode_array(obj, path)
    if isinstance(obj, (list, tuple, dict, set, frozenset)):
        if id(obj) in active:
            raise TypeError(f"{path}: a container that contains itself has no stable key")
        active.add(id(obj))
        try:
            if isinstance(obj, dict):
                pairs = sorted(
                    _encode(k, f"{path} key {k!r}", active) + _encode(v, f"{path}[{k!r}]", active)
                    for k, v in obj.items()
                )
                return _tlv(b"d", b"".join(pairs))
            if isinstance(obj, (set, frozenset)):
                parts = sorted(_encode(v, f"{path} element {v!r}", active) for v in obj)
                return _tlv(b"S", b"".join(parts))
            tag = b"l" if isinstance(obj, list) else b"t"
            return _tlv(
                tag, b"".join(_encode(v, f"{path}[{i}]", active) for i, v in enumerate(obj))
            )
        finally:
            active.discard(id(obj))
    raise TypeError(
        f"{path}: cannot derive a stable key from a value of type {type(obj).__qualname__}; "
        f"items may hold {_SUPPORTED} (or pass key= to run_tasks)"
    )


def _encode_array(a: np.ndarray, path: str) -> bytes:
    if a.dtype.hasobject:
        raise TypeError(f"{path}: a numpy array of dtype {a.dtype} has no stable key")
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.astype(a.dtype.newbyteorder("<"))
    header = repr(a.dtype.descr if a.dtype.fields else a.dtype.str) + repr(a.shape)
    data = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    return _tlv(b"a", header.encode() + hashlib.blake2b(data, digest_size=16).digest())
