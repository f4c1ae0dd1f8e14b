"""Parameter files in items: stored once by content, passed to tasks as the stored copies.

:func:`~datamanager.tasks.run_tasks` replaces each :class:`pathlib.Path` in
an item by the :class:`~datamanager.filestore.StoredFile` of that file in
the data directory's store, before keying the item: the key covers the
file's content and name (as :func:`~datamanager.tasks.item_key` of the Path
would), the stored item refers to the stored copy, and the task reads the
content that was keyed, even if the original changes while the sweep runs.
"""

from __future__ import annotations

import copy
import os
from pathlib import PurePath
from typing import Any, Callable

from .. import _format as fmt
from ..filestore import StoredFile, file_sha256, store_file

__all__ = ["ItemFiles", "bind_files", "map_files"]

_LEAVES = frozenset({int, float, str, bool, bytes, complex, type(None)})


def map_files(value: Any, convert: Callable[[Any], Any]) -> Any:
    """*value* with each Path and StoredFile in it replaced by ``convert(leaf)``.

    Lists, tuples (named ones too), dicts (keys and values) and sets are
    searched, as :func:`~datamanager.tasks.item_key` searches them; a
    container holding no file is returned itself, not copied, so an item
    without files costs one walk and no allocation.
    """
    if type(value) in _LEAVES:  # most of a sweep's parameters: nothing to enter
        return value
    if isinstance(value, (PurePath, StoredFile)):
        return convert(value)
    if isinstance(value, dict):
        pairs = [(map_files(k, convert), map_files(v, convert)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(pairs, value.items())):
            return value
        # A copy keeps the dict's type and settings (a defaultdict's factory).
        changed = copy.copy(value)
        changed.clear()
        changed.update(pairs)
        return changed
    if isinstance(value, (list, tuple, set, frozenset)):
        parts = [map_files(v, convert) for v in value]
        if all(p is v for p, v in zip(parts, value)):
            return value
        if isinstance(value, tuple) and hasattr(value, "_make"):
            return value._make(parts)  # a named tuple takes its fields one by one
        return type(value)(parts)
    return value


def bind_files(item: Any, basepath: str) -> Any:
    """*item* with each StoredFile in it bound to the store of the data directory *basepath*.

    A StoredFile's pickle leaves out where its copy is, so one that reaches
    a worker process inside an item has no path until bound here.
    """
    return map_files(item, lambda f: f.at(basepath) if isinstance(f, StoredFile) else f)


class ItemFiles:
    """Stores the files of a sweep's items, each distinct path hashed once per run.

    Parameters
    ----------
    basepath : str
        The data directory whose store receives the files.
    """

    def __init__(self, basepath: str) -> None:
        self.basepath = os.path.abspath(basepath)
        self._stored: dict[str, StoredFile] = {}

    def __call__(self, item: Any) -> Any:
        """*item* with each Path in it replaced by the StoredFile of its file."""
        return map_files(item, self._store)

    def _store(self, leaf: Any) -> Any:
        if isinstance(leaf, StoredFile):
            # Stored already, maybe in another data directory (a rerun
            # writing elsewhere): make sure this one holds the content.
            if os.path.exists(fmt.stored_path(self.basepath, leaf.sha256)):
                return leaf.at(self.basepath)
            return store_file(self.basepath, leaf)
        source = os.path.abspath(os.fspath(leaf))
        stored = self._stored.get(source)
        if stored is None:
            stored = self._stored[source] = self._first(source)
        return stored

    def _first(self, source: str) -> StoredFile:
        """Store *source*; content already in the store is only read, never written again.

        A resumed sweep finds its files stored: hashing alone then spares
        writing a copy only to delete it.
        """
        sha256, size = file_sha256(source)
        if os.path.exists(fmt.stored_path(self.basepath, sha256)):
            return StoredFile(os.path.basename(source), size, sha256, source).at(self.basepath)
        # Read again to copy: what is stored and keyed is what store_file
        # read, even if the file changed since it was hashed.
        return store_file(self.basepath, source)
