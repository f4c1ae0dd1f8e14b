"""Files stored once by content in a data directory: parameter files, inputs, configurations.

A data directory keeps the files its values refer to in its store,
``<data>/.files/``: the file of sha256 ``h`` is ``.files/<h[:2]>/<h[2:]>``.  A
file is copied and hashed in one pass under a temporary name in the store
(``.files/tmp-<32 hex digits>``), made read-only and moved into place with
:func:`os.replace`, so a stored name always holds the whole file, whatever
process is killed when.  Storing content that is already there writes
nothing under its name: the same parameter file stored by 10,000 items, or
by many processes at once, is one file.  Stored files are never modified.

A value refers to a stored file through a :class:`StoredFile`, which a
session stores like any value (``s[key] = dm.store_file(path)``).  Its
pickle holds the file's name, size, sha256 and original path, never where
the store is: reading it binds :attr:`StoredFile.path` to the store of the
directory it was read from, so a data directory moved or copied elsewhere
keeps working.

Code that handles values recognises a stored file with
``isinstance(value, StoredFile)`` (:func:`stored_files` finds those nested in
lists, tuples, dicts and sets) and reads its bytes with ``open(value, "rb")``:
it is :class:`os.PathLike`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, BinaryIO

from . import _format as fmt
from .safepickle import register_safe_type

if TYPE_CHECKING:
    import pandas

    from .readers import SessionReader

__all__ = [
    "StoredFile",
    "bound_to",
    "file_sha256",
    "hash_files",
    "may_hold_stored",
    "store_file",
    "stored_files",
    "stored_in",
]

#: Bytes read at a time: large enough that the per-call cost of a read and of
#: the hash update vanish against the hashing itself, small enough for any cache.
CHUNK = 1 << 20
#: One read buffer per thread, reused: allocating a zeroed MiB for each of
#: many small files would cost more than hashing them.
_BUFFERS = threading.local()


@register_safe_type
@dataclass(frozen=True)
class StoredFile(os.PathLike):
    """A file kept in the file store of a data directory.

    Made by :meth:`DataManager.store_file <datamanager.DataManager.store_file>`
    (or :func:`store_file`) and stored as a value, or part of one.  It is a
    path-like object: ``open(f)``, ``np.loadtxt(f)`` and ``os.fspath(f)`` use
    the stored copy.  Two of them are equal when they describe the same
    stored content from the same original, wherever their stores are.

    Attributes
    ----------
    name : str
        The base name of the original file.
    size : int
        Its size in bytes.
    sha256 : str
        The sha256 of its content, 64 lowercase hexadecimal digits.
    original : str
        The absolute path it was stored from (which may have changed or gone
        since).
    path : str or None
        The absolute path of the stored copy, in the store of the data
        directory this value was read from (or stored in); None for one made
        or unpickled elsewhere (see :meth:`at`).

    Examples
    --------
    >>> import os, tempfile
    >>> from datamanager import DataManager
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "neuron.param"), "w") as f:
    ...     _ = f.write("tau = 10 ms\\n")
    >>> dm = DataManager("sweep", folder)
    >>> with dm.session() as s:
    ...     s["model"] = dm.store_file(os.path.join(folder, "neuron.param"))
    >>> (stored,) = dm.get("model").values()
    >>> stored.name, stored.size
    ('neuron.param', 12)
    >>> with open(stored) as f:
    ...     f.read()
    'tau = 10 ms\\n'
    """

    name: str
    size: int
    sha256: str
    original: str
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # A pickle from elsewhere may hold anything: only a sha256 can name a
        # file, so a value can never point outside its directory's store.
        if not fmt.is_sha256(self.sha256):
            raise ValueError(f"sha256 {self.sha256!r:.80} is not 64 lowercase hex digits")
        if type(self.name) is not str or type(self.original) is not str:
            raise TypeError("name and original of a StoredFile must be str")
        if type(self.size) is not int or self.size < 0:
            raise TypeError(f"size {self.size!r:.40} of a StoredFile is not a count of bytes")
        if self.path is None:
            basepath = fmt.reading_from()
            if basepath is not None:
                object.__setattr__(self, "path", fmt.stored_path(basepath, self.sha256))

    def __reduce__(self) -> tuple[Any, ...]:
        # Never the path of the stored copy: it is where the store was when
        # this was written, and the reader knows where it is now.
        return (StoredFile, (self.name, self.size, self.sha256, self.original))

    def __fspath__(self) -> str:
        if self.path is None:
            raise FileNotFoundError(
                f"{self.name} (sha256 {self.sha256[:12]}...) was not read from a data "
                "directory; bind it with .at(data_directory)"
            )
        return self.path

    def at(self, basepath: str | os.PathLike) -> StoredFile:
        """This file as stored in the data directory *basepath* (``DataManager.basepath``)."""
        return replace(self, path=fmt.stored_path(os.path.abspath(basepath), self.sha256))


@contextlib.contextmanager
def bound_to(basepath: str | os.PathLike) -> Iterator[None]:
    """Within the block, StoredFiles unpickled refer to the store of *basepath*.

    For code that unpickles values itself, such as a worker process that
    receives items holding StoredFiles.
    """
    token = fmt.set_reading(os.path.join(os.path.abspath(basepath), fmt.STORE_DIR))
    try:
        yield
    finally:
        fmt.reset_reading(token)


def stored_files(value: Any) -> Iterator[StoredFile]:
    """Yield the StoredFiles in *value*: itself, or inside its lists, tuples, dicts, sets.

    Dict keys and values are both searched; other objects are not entered.

    Examples
    --------
    >>> f = StoredFile("a.txt", 0, "e3b0c442" * 8, "/tmp/a.txt")
    >>> [s.name for s in stored_files({"params": [1, (f,)]})]
    ['a.txt']
    """
    stack, seen = [value], set()
    while stack:
        obj = stack.pop()
        if isinstance(obj, StoredFile):
            yield obj
        elif isinstance(obj, (list, tuple, dict, set, frozenset)) and id(obj) not in seen:
            seen.add(id(obj))  # a list that contains itself is searched once
            items = [*obj.keys(), *obj.values()] if isinstance(obj, dict) else list(obj)
            stack.extend(reversed(items))


def may_hold_stored(data: bytes) -> bool:
    """Whether the pickle *data* may hold a StoredFile: one that names none holds none.

    Lets a scan unpickle only the values that may refer to the store.
    """
    return b"StoredFile" in data


def stored_in(reader: SessionReader) -> list[dict[str, Any]]:
    """One row per StoredFile in the values and task records of the session *reader*.

    Each row names ``key`` (the value's key, or the task record's) and
    ``item`` (for a record of :func:`~datamanager.tasks.run_tasks`, the
    item's key; else None).  Only pickles that may hold a StoredFile are
    unpickled.
    """
    rows = []
    sources = [(key, None, data) for key, data in reader.raw_values()]
    for key, data in reader.raw_task_records():
        item = key.rpartition("/")[2] if "/" in key else None
        sources.append((key, item, data))
    for key, item, data in sources:
        if type(data) is not bytes or not may_hold_stored(data):
            continue
        value = fmt.decode(data, reader.path, reader.name, key, reader.safe)
        rows.extend(
            {
                "key": key,
                "item": item,
                "name": f.name,
                "original": f.original,
                "sha256": f.sha256,
                "size": f.size,
                "path": f.path,
            }
            for f in stored_files(value)
        )
    return rows


# -- hashing and storing --


def _stream(source: BinaryIO, copy: BinaryIO | None = None) -> tuple[str, int]:
    """sha256 and size of what *source* holds, read once in constant memory; copied to *copy*."""
    digest, size = hashlib.sha256(), 0
    view = getattr(_BUFFERS, "view", None)
    if view is None:
        view = _BUFFERS.view = memoryview(bytearray(CHUNK))
    while True:
        n = source.readinto(view)
        if not n:
            break
        chunk = view[:n]
        digest.update(chunk)
        if copy is not None:
            copy.write(chunk)
        size += n
    return digest.hexdigest(), size


def file_sha256(path: str | os.PathLike) -> tuple[str, int]:
    """The sha256 (hex) and size of the file at *path*, read once in constant memory.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     file_sha256(f.name)
    ('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 0)
    """
    with open(path, "rb", buffering=0) as f:
        return _stream(f)


def store_file(basepath: str | os.PathLike, path: str | os.PathLike) -> StoredFile:
    """Store the file at *path* in the file store of the data directory *basepath*.

    The file is read once, copied and hashed at the same time, under a
    temporary name in the store; once whole it is made read-only and moved
    to its name, unless that content is stored already (by any process):
    then nothing is written.  Safe to call from many processes at once.

    Parameters
    ----------
    basepath : str or os.PathLike
        The data directory (``DataManager.basepath``); created if missing.
    path : str or os.PathLike
        The file to store (a StoredFile too: its stored copy is read).

    Returns
    -------
    StoredFile
        Bound to the stored copy.

    Raises
    ------
    OSError
        If *path* cannot be read or the store cannot be written; nothing is
        left under a stored name.
    """
    basepath = os.path.abspath(basepath)
    source = os.path.abspath(path)
    original = path.original if isinstance(path, StoredFile) else source
    store = os.path.join(basepath, fmt.STORE_DIR)
    os.makedirs(store, exist_ok=True)
    temp = os.path.join(store, fmt.new_store_temp_name())
    try:
        with open(source, "rb", buffering=0) as src, open(temp, "xb") as out:
            sha256, size = _stream(src, out)
            out.flush()
            # The name must never hold less than the whole file, even after a
            # power cut: the data goes to disk before the rename does.
            os.fsync(out.fileno())
        os.chmod(temp, 0o444)
        final = fmt.stored_path(basepath, sha256)
        if os.path.exists(final):
            os.unlink(temp)  # stored already: the store never changes a file
        else:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            # Two processes storing the same content at once both get here;
            # either rename leaves the same whole bytes under the name.
            try:
                os.replace(temp, final)
            except PermissionError:
                # Where a read-only file cannot be replaced (Windows), the
                # other process's copy is in place: that is the stored file.
                if not os.path.exists(final):
                    raise
                os.unlink(temp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return StoredFile(os.path.basename(original), size, sha256, original, final)


def _hash_one(path: str) -> tuple[str, int]:
    return file_sha256(path)


def hash_files(
    paths: Iterable[str | os.PathLike], processes: int | None = None, client: Any = None
) -> pandas.DataFrame:
    """Hash many files in parallel: sha256 and size of each, in constant memory per file.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        The files, each read once.
    processes : int, optional
        Local worker processes (default: one per CPU); 1 hashes in this
        process.  Ignored with *client*.
    client : dask.distributed.Client, optional
        Hash on the workers of this Dask client instead (they must see the
        same paths).

    Returns
    -------
    pandas.DataFrame
        One row per path, in the order given: ``path`` (as given, as str),
        ``sha256`` (hex), ``size`` (bytes).

    Raises
    ------
    OSError
        The first error reading a file (FileNotFoundError for a missing one).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     hash_files([f.name], processes=1)["size"].tolist()
    [0]
    """
    import pandas

    names = [os.fspath(p) for p in paths]
    if client is not None:
        hashes = client.gather(client.map(_hash_one, names, pure=False))
    elif processes == 1 or len(names) <= 1:
        hashes = [_hash_one(p) for p in names]
    else:
        from concurrent.futures import ProcessPoolExecutor

        workers = min(processes or os.cpu_count() or 1, len(names))
        with ProcessPoolExecutor(workers) as pool:
            chunksize = max(1, len(names) // (4 * workers))
            hashes = list(pool.map(_hash_one, names, chunksize=chunksize))
    return pandas.DataFrame(
        {
            "path": pandas.Series(names, dtype=object),
            "sha256": pandas.Series([h for h, _ in hashes], dtype=object),
            "size": pandas.Series([n for _, n in hashes], dtype="int64"),
        }
    )
