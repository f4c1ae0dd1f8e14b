"""Short HTML summaries that notebooks show for a Recording and a DataManager.

Everything a file or a directory says is escaped: a crafted header or
session name must show as text, never as markup.  The summaries are cheap:
a recording's is read from memory, a data directory's from its listing and
index, and it opens at most :data:`OPEN_LIMIT` sessions.  Nothing is written.
"""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from .collator import Collator
    from .recordings.recording import Recording

__all__ = ["datamanager_html", "human_size", "recording_html"]

#: Rows of a table shown at most; the rest are counted.
ROWS = 12
#: Characters of one header value shown at most.
TEXT = 120
#: Sessions the index does not serve that a summary opens at most.
OPEN_LIMIT = 50


def _text(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    text = text if len(text) <= TEXT else text[: TEXT - 3] + "..."
    return html.escape(text)


def _table(header: Iterable[str], rows: list[list[Any]], total: int) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_text(c)}</td>" for c in row) + "</tr>" for row in rows)
    more = f"<p>... and {total - len(rows)} more</p>" if total > len(rows) else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def human_size(nbytes: float) -> str:
    """``"812 B"``, ``"1.5 KiB"``, ... up to GiB."""
    if nbytes < 1024:
        return f"{nbytes:.0f} B"
    for unit in ("KiB", "MiB"):
        nbytes /= 1024
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1024:.1f} GiB"


def recording_html(rec: Recording) -> str:
    """Layout, length, columns with units, source, label and header records."""
    rows, cols = rec.shape
    time = rec.time_column
    lines = [
        f"<strong>Recording</strong> {_text(rec.layout or 'table')}: "
        f"{rows} rows &times; {cols} columns"
    ]
    if rec.label is not None:
        lines.append(f"label: {_text(rec.label)}")
    if rec.path is not None:
        lines.append(f"source: <code>{_text(rec.path)}</code>")
    columns = [
        [name + (" (time)" if j == time else ""), unit or ""]
        for j, (name, unit) in enumerate(zip(rec.columns[:ROWS], rec.units[:ROWS]))
    ]
    parts = ["<br>".join(lines), _table(["column", "unit"], columns, cols)]
    if rec.header:
        records = [[k, v] for k, v in list(rec.header.items())[:ROWS]]
        parts.append(
            f"<details><summary>header: {len(rec.header)} records</summary>"
            f"{_table(['record', 'value'], records, len(rec.header))}</details>"
        )
    return f"<div>{''.join(parts)}</div>"


def datamanager_html(dm: Collator) -> str:
    """Sessions, keys and size of a data directory, from its listing and index.

    Sessions the index serves are counted from it; the others are opened
    (read-only) only if there are at most :data:`OPEN_LIMIT`, else their
    keys and size are reported as not counted.
    """
    # Late imports: the command line imports this module for human_size alone.
    from .index import open_view
    from .legacy import find_sessions
    from .readers import list_directory

    title = f"<strong>DataManager</strong> {_text(dm.name)}: <code>{_text(dm.basepath)}</code>"
    if not os.path.isdir(dm.basepath):
        return f"<div>{title}<br>no data directory yet (nothing written)</div>"
    listing = list_directory(dm.basepath)
    entries = find_sessions(dm.basepath, warn=False, listing=listing)
    index = open_view(dm.basepath, entries, listing.names)
    keys: set[str] = set()
    nbytes = 0
    try:
        served = index.served if index is not None else {}
        if index is not None:
            keys.update(index.distinct_keys())
            nbytes = sum(index.nbytes(e, served[e.name]) for e in entries if e.name in served)
    finally:
        if index is not None:
            index.close()
    others = [e for e in entries if e.legacy or e.name not in served]
    unread = 0
    if len(others) <= OPEN_LIMIT:
        for entry in others:
            try:
                with entry.open(dm.safe) as reader:
                    keys.update(reader.keys())
                    nbytes += reader.nbytes
            except (OSError, ValueError):  # a corrupt session is verify()'s to report
                unread += 1
    counted = len(others) <= OPEN_LIMIT
    legacy = sum(e.legacy for e in entries)
    lines = [
        title,
        f"sessions: {len(entries)}" + (f" ({legacy} legacy shelves)" if legacy else ""),
        f"keys: {len(keys)}" if counted else f"keys: at least {len(keys)}",
        f"size: {human_size(nbytes)}" if counted else f"size: at least {human_size(nbytes)}",
    ]
    if not counted:
        lines.append(
            f"{len(others)} sessions not in the index were not opened (build_index() indexes them)"
        )
    if unread:
        lines.append(f"{unread} sessions could not be read (verify() says why)")
    names = [[e.name] for e in sorted(entries, key=lambda e: e.name)[:ROWS]]
    shown = [[k] for k in sorted(keys)[:ROWS]]
    tables = _table(["session"], names, len(entries)) + _table(["key"], shown, len(keys))
    return f"<div>{'<br>'.join(lines)}{tables}</div>"
