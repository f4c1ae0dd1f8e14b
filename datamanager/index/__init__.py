"""The index of a data directory: every session's metadata and keys in one file.

Without an index, every collation question ("which sessions hold key
``rare``?") opens every session.  :func:`build_index` writes one SQLite file
inside the data directory (:data:`~datamanager._format.INDEX_NAME`, a name no
session can take) with a row per session and a row per stored value; values
stored in at most :data:`CACHE_LIMIT` bytes are copied in.  Collation then
reads small values from the index and opens only the sessions that hold what
else it needs.

The index never gives a stale answer.  Each session row records the identity
of the session's files when they were read: inode, size and modification time
of the database, its ``-journal`` and its ``-wal``, and the change time of
the database (not of the others, which SQLite running as root sets on every
open, to read too).  Collation serves a session from the index only while all
of these are unchanged, and reads any other session directly, as it would
without an index.  A write always sets the modification time of a file it
changes, but a clock has ticks: a write in the same tick as the one before it
may leave the time as it was.  So a row is *settled*, and served, only if the
session's files were last modified before the build started, by the
filesystem's own clock (the modification time the build gives its own file):
any later write then carries a later time.  A session written during the
build is read again once the clock has moved on, or else left unsettled and
read directly.

Building never blocks or modifies a session: sessions are opened read-only,
the index is written under a temporary name and renamed into place, and a
reader holding the old index keeps reading it whole.  Collation never writes
the index; a stale or missing index only costs speed.
"""

from .build import CACHE_LIMIT, IndexSummary, build_index
from .tables import export_tables, index_tables
from .view import IndexedReader, IndexView, open_view

__all__ = [
    "CACHE_LIMIT",
    "IndexSummary",
    "IndexView",
    "IndexedReader",
    "build_index",
    "export_tables",
    "index_tables",
    "open_view",
]
