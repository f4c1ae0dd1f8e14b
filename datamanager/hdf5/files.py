"""Stored files in an export: each distinct file once, under ``/files/<sha256>``.

A :class:`~datamanager.filestore.StoredFile` value becomes a small dataset
naming the file's sha256 (:class:`~datamanager.hdf5.schema.Writer`); its
bytes are copied once per export, whatever the number of values referring
to them, into a 1-D uint8 dataset that any HDF5 reader turns back into the
file (``f["files"][sha256][()].tobytes()`` with plain h5py).
:func:`load_file` reads them back, checked against their hash.

h5py is imported inside the functions, as in :mod:`datamanager.hdf5.schema`.
"""

from __future__ import annotations

import errno
import hashlib
import os
from typing import Any, Callable, Union

import numpy as np

from .. import _format as fmt
from ..errors import ExportFormatError
from ..filestore import StoredFile, store_file

__all__ = ["FILES_GROUP", "copy_file", "extract_files", "load_file"]

#: The root group holding the bytes of each stored file, by sha256.
FILES_GROUP = "files"
#: Bytes copied at a time: the memory an export of a large file needs.
_WINDOW = 64 << 20


def copy_file(
    root: Any, stored: StoredFile, compression: str | None, checkpoint: Callable[[], None]
) -> bool:
    """Copy the bytes of *stored* to ``/files/<sha256>`` of the open file *root*, once.

    Returns whether it was copied now (False: the export holds it already).

    Read from the stored copy (its path must be bound) in windows of
    :data:`_WINDOW` bytes and checked against its sha256 on the way: a
    damaged copy in the store is refused rather than exported as if whole.

    Raises
    ------
    OSError
        The stored copy is missing or unreadable (FileNotFoundError), or its
        content does not match its sha256 (EIO).
    """
    files = root.require_group(FILES_GROUP)
    if stored.sha256 in files:
        return False
    kw = {"compression": compression} if compression and stored.size else {}
    data = files.create_dataset(stored.sha256, shape=(stored.size,), dtype="u1", **kw)
    data.attrs["sha256"] = stored.sha256
    data.attrs["size"] = stored.size
    digest, start = hashlib.sha256(), 0
    try:
        with open(stored, "rb") as f:
            while start < stored.size:
                chunk = f.read(min(_WINDOW, stored.size - start))
                if not chunk:
                    break
                digest.update(chunk)
                data[start : start + len(chunk)] = np.frombuffer(chunk, dtype="u1")
                start += len(chunk)
                checkpoint()
            extra = f.read(1)
        if start != stored.size or extra or digest.hexdigest() != stored.sha256:
            raise OSError(
                errno.EIO,
                f"stored copy of {stored.name} (sha256 {stored.sha256[:12]}...) does not "
                "match its hash; run verify() on the data directory",
                os.fspath(stored),
            )
    except BaseException:
        del files[stored.sha256]  # never a partial file under its hash
        raise
    return True


def load_file(path: Union[str, os.PathLike], file: Union[StoredFile, str]) -> bytes:
    """The bytes of a stored file in an export, checked against its sha256.

    Parameters
    ----------
    path : str or path-like
        The ``.h5`` file written by :func:`~datamanager.hdf5.export_hdf5`.
    file : StoredFile or str
        A StoredFile value that :func:`~datamanager.hdf5.load_hdf5` returned
        from it, or the sha256 of the file.

    Returns
    -------
    bytes

    Raises
    ------
    KeyError
        The export holds no file of that sha256.
    ExportFormatError
        The bytes stored there do not match the sha256 (a damaged file).

    Examples
    --------
    >>> import os, tempfile
    >>> from datamanager import DataManager
    >>> from datamanager.hdf5 import export_hdf5, load_hdf5
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "model.param"), "w") as f:
    ...     _ = f.write("tau = 10 ms\\n")
    >>> dm = DataManager("files-demo", folder)
    >>> with dm.session() as s:
    ...     s["model"] = dm.store_file(os.path.join(folder, "model.param"))
    >>> _ = export_hdf5(dm, os.path.join(folder, "out.h5"))
    >>> (values,) = load_hdf5(os.path.join(folder, "out.h5"))["sessions"].values()
    >>> values["model"].name, values["model"].path
    ('model.param', None)
    >>> load_file(os.path.join(folder, "out.h5"), values["model"])
    b'tau = 10 ms\\n'
    """
    import h5py

    from .load import member

    sha256 = file.sha256 if isinstance(file, StoredFile) else file
    with h5py.File(path, "r") as f:
        files = member(f, FILES_GROUP, h5py.Group)
        data = None if files is None else member(files, sha256, h5py.Dataset)
        if data is None:
            raise KeyError(f"no stored file of sha256 {sha256} in {os.fspath(path)}")
        raw = data[()].tobytes()
        if hashlib.sha256(raw).hexdigest() != sha256:
            raise ExportFormatError(
                f.filename, data.name, f"bytes of sha256 {sha256}", "other bytes"
            )
    return raw


def extract_files(h5: Any, basepath: Union[str, os.PathLike]) -> int:
    """Store each file of the open export *h5* in the file store of the data directory *basepath*.

    Content the store holds already is left alone.  Each file goes through
    a temporary file in the store, :data:`_WINDOW` bytes at a time, and is
    stored as :func:`~datamanager.filestore.store_file` stores any file,
    checked against its sha256.  Returns the number of files newly stored.

    Raises
    ------
    ExportFormatError
        A file's bytes do not match its sha256 (a damaged export); nothing is
        stored under that hash.
    """
    import h5py

    from .load import member, members

    basepath = os.path.abspath(basepath)
    files = member(h5, FILES_GROUP, h5py.Group)
    added = 0
    for sha256, data in [] if files is None else members(files, h5py.Dataset):
        if not fmt.is_sha256(sha256):  # a crafted name must not become a path
            raise ExportFormatError(h5.filename, data.name, "a sha256 as name", repr(sha256))
        if os.path.exists(fmt.stored_path(basepath, sha256)):
            continue
        store = os.path.join(basepath, fmt.STORE_DIR)
        os.makedirs(store, exist_ok=True)
        # A store-like temporary name: one left by a kill is what verify()
        # reports as an interrupted store.
        temp = os.path.join(store, fmt.new_store_temp_name())
        try:
            with open(temp, "xb") as out:
                for start in range(0, data.shape[0], _WINDOW):
                    out.write(data[start : start + _WINDOW].tobytes())
            stored = store_file(basepath, temp)
        finally:
            os.unlink(temp)
        if stored.sha256 != sha256:
            # Stored under its true hash, which no value names: harmless,
            # but the export is damaged and says so.
            raise ExportFormatError(
                h5.filename, data.name, f"bytes of sha256 {sha256}", "other bytes"
            )
        added += 1
    return added
