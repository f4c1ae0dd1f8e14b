"""Axon Text Format (ATF): the text export of Axon/Molecular Devices software.

Layout, as Clampex, Clampfit and GenePix write it::

    ATF<TAB or space>1.0
    <n header records><TAB><n columns>     (often with trailing spaces)
    "Key=Value"                            (n header records; "Signals=" holds
    "Signals="<TAB>"IN 0"<TAB>"IN 1"        several quoted fields)
    "Time (s)"<TAB>"Trace #1 (pA)"         (one title per column)
    0<TAB>-10.498                          (rows, tab- or comma-separated)

Files are recognised by the ``ATF`` signature, never by extension (``.atf``
names unrelated formats too; GenePix ``.gal`` files are ATF). A tab-separated
file splits on tabs only, because unquoted text fields contain commas.
"""

from __future__ import annotations

import csv
import os
import re
from typing import Any, BinaryIO, Union

import numpy as np

from ..errors import RecordingFormatError
from ._text import (
    LineReader,
    atomic_write,
    content_end,
    decode,
    file_size,
    format_rows,
    parse_numeric,
    show,
    split_fields,
    to_float,
    two_columns,
)
from .recording import Recording

__all__ = ["is_atf", "load_atf", "read_atf", "write_atf"]

PathLike = Union[str, "os.PathLike[str]"]
# Clampfit writes Windows-1252 (a "µA" unit); try UTF-8 first.
_ENCODINGS = ("utf-8", "cp1252")
# One space before the unit, as Clampfit writes "Trace #1 (pA)": a name that
# itself ends in spaces keeps them through a round trip.
_UNIT = re.compile(r"^(.*?) ?\(([^()]*)\)$")
_FIRST = re.compile(r"ATF[\t ]+(\S+)[\t ]*")
# Header records that mark a Clampex/Clampfit trace export: every column of
# such a file is numeric, so a text cell there is an error, not a text column.
_TRACE_KEYS = ("Signals", "SignalsExported", "AcquisitionMode")


def is_atf(head: bytes) -> bool:
    """Whether the first bytes of a file carry the ATF signature.

    >>> is_atf(b"ATF\\t1.0\\n8\\t7\\n"), is_atf(b"ATF 1.0\\n"), is_atf(b"ATFX")
    (True, True, False)
    """
    return head[:3] == b"ATF" and head[3:4] in (b"\t", b" ")


def _unquote(field: str) -> str:
    s = field.strip(" \r\n")
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return s[1:-1]
    return s


def _split_title(text: str) -> tuple[list[str], str]:
    if "\t" in text:
        return [_unquote(f) for f in text.split("\t")], "\t"
    if "," in text:
        # Comma-separated titles are quoted and may hold commas themselves.
        return [f.strip() for f in next(csv.reader([text.strip()]))], ","
    return [_unquote(text)], "\t"


def _split_unit(title: str) -> tuple[str, str | None]:
    m = _UNIT.match(title)
    if m:
        return m.group(1), m.group(2)
    return title, None


def _record(text: str, path: str, lineno: int) -> tuple[str, Union[str, list[str]]]:
    fields = [_unquote(f) for f in text.split("\t")]
    key, eq, value = fields[0].partition("=")
    if not eq or not key.strip():
        raise RecordingFormatError(path, lineno, 'a header record "Key=Value"', show(text))
    if len(fields) == 1:
        return key, value
    return key, ([value] if value else []) + fields[1:]


def _read_header(
    fh: BinaryIO, path: str
) -> tuple[str, int, dict[str, Any], list[str], str, LineReader]:
    lines = LineReader(fh, path)
    raw = lines.readline()
    if raw is None or not raw.strip():
        found = "an empty file" if raw is None else "an empty first line"
        raise RecordingFormatError(path, 1, "'ATF' then a tab or space and the version", found)
    first = decode(raw, path, 1, _ENCODINGS)
    m = _FIRST.fullmatch(first)
    if not m:
        raise RecordingFormatError(
            path, 1, "'ATF' then a tab or space and the version", show(first)
        )
    version = m.group(1)
    try:
        float(version)
    except ValueError:
        raise RecordingFormatError(
            path, 1, "a version number after 'ATF'", show(version)
        ) from None
    raw = lines.readline()
    counts = None if raw is None else decode(raw, path, 2, _ENCODINGS).split()
    if counts is None or len(counts) != 2 or not all(c.isdigit() for c in counts):
        found = "the end of the file" if counts is None else show(raw)
        raise RecordingFormatError(
            path, 2, "'<number of header records> <number of columns>'", found
        )
    nrec, ncols = int(counts[0]), int(counts[1])
    if ncols < 1:
        raise RecordingFormatError(path, 2, "at least 1 column", "0 columns")
    header: dict[str, Any] = {}
    for i in range(nrec):
        raw = lines.readline()
        if raw is None:
            raise RecordingFormatError(
                path,
                lines.lineno + 1,
                f"{nrec} header records (the count on line 2)",
                f"the end of the file after {i}",
            )
        key, value = _record(decode(raw, path, lines.lineno, _ENCODINGS), path, lines.lineno)
        header[key] = value
    raw = lines.readline()
    if raw is None:
        raise RecordingFormatError(
            path, lines.lineno + 1, "a line of column titles", "the end of the file"
        )
    titles, sep = _split_title(decode(raw, path, lines.lineno, _ENCODINGS))
    if len(titles) != ncols:
        raise RecordingFormatError(
            path,
            lines.lineno,
            f"{ncols} column titles (the count on line 2)",
            f"{len(titles)} in {show(raw)}",
        )
    return version, ncols, header, titles, sep, lines


def _data_separator(fh: BinaryIO, start: int, end: int, title_sep: str) -> str:
    fh.seek(start)
    head = fh.read(min(end - start, 1 << 16))
    first = re.split(rb"\r\n|\r|\n", head.lstrip(b"\r\n"), maxsplit=1)[0]
    if b"\t" in first:
        return "\t"
    if b"," in first:
        return ","
    return title_sep


def _mixed_table(
    fh: BinaryIO,
    path: str,
    start: int,
    end: int,
    first_lineno: int,
    ncols: int,
    sep: str,
    declared: list[bool],
) -> np.ndarray:
    """A table with text columns: every column numeric if it can be, else str."""
    fh.seek(start)
    lines = LineReader(fh, path, start, end, first_lineno - 1)
    cols: list[list[str]] = [[] for _ in range(ncols)]
    linenos: list[int] = []
    while True:
        raw = lines.readline(limit=1 << 30)
        if raw is None:
            break
        if not raw.strip(b" "):
            continue
        text = decode(raw, path, lines.lineno, _ENCODINGS)
        cells = split_fields(text, sep)
        if len(cells) != ncols:
            raise RecordingFormatError(
                path, lines.lineno, f"{ncols} fields", f"{len(cells)} in {show(text)}"
            )
        for j, cell in enumerate(cells):
            cols[j].append(cell)
        linenos.append(lines.lineno)
    out = np.empty((len(linenos), ncols), dtype=object)
    for j, col in enumerate(cols):
        try:
            out[:, j] = [to_float(c) for c in col]
        except ValueError:
            if declared[j]:
                bad = next(i for i, c in enumerate(col) if not _is_number(c))
                raise RecordingFormatError(
                    path, linenos[bad], f"a number in column {j + 1}", show(col[bad])
                ) from None
            out[:, j] = col
    if all(isinstance(v, float) for v in out.ravel().tolist()):
        return out.astype(np.float64)
    return out


def _is_number(cell: str) -> bool:
    try:
        to_float(cell)
    except ValueError:
        return False
    return True


def load_atf(path: PathLike) -> Recording:
    """Read an Axon Text Format file.

    Parameters
    ----------
    path : str or os.PathLike
        The file; it must start with the ``ATF`` signature.

    Returns
    -------
    Recording
        ``layout="atf"``; ``columns``/``units`` from the titles (``"Trace #1
        (pA)"`` gives ``"Trace #1"`` and ``"pA"``); ``header`` holds the
        header records in order; ``attrs`` the ATF version and separator.
        All-numeric files give a float64 table; files with text columns
        (Clampfit result sheets, GenePix array lists) an object table.

    Raises
    ------
    RecordingFormatError
        For any malformed file, naming the line and what was expected there.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "cell.atf")
    >>> rec = Recording(np.array([[0.0, -10.5], [1e-4, -11.25]]), ["Time", "Trace #1"],
    ...                 ["s", "pA"], {"AcquisitionMode": "Gap Free"})
    >>> write_atf(path, rec)
    >>> back = load_atf(path)
    >>> back.columns, back.units, back.header
    (['Time', 'Trace #1'], ['s', 'pA'], {'AcquisitionMode': 'Gap Free'})
    >>> back.data.tolist()
    [[0.0, -10.5], [0.0001, -11.25]]
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        version, ncols, header, titles, title_sep, lines = _read_header(fh, path)
        start, first = lines.offset, lines.lineno + 1
        end = content_end(fh, file_size(fh))
        sep = _data_separator(fh, start, end, title_sep) if end > start else title_sep
        names, units = zip(*(_split_unit(t) for t in titles))
        trace = any(k in header for k in _TRACE_KEYS)
        try:
            data = parse_numeric(fh, path, start, end, first, ncols, sep)
        except RecordingFormatError as exc:
            if trace or exc.expected.endswith("fields") or "NUL" in exc.found:
                raise
            declared = [u is not None for u in units]
            data = _mixed_table(fh, path, start, end, first, ncols, sep, declared)
    attrs = {"version": version, "separator": sep}
    return Recording(data, list(names), list(units), header, path=path, layout="atf", attrs=attrs)


def read_atf(name: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Brian's ``read_atf``: the first two columns of an ATF file.

    Returns
    -------
    times, values : numpy.ndarray
        1-D float arrays (as written: no unit conversion).

    Raises
    ------
    RecordingFormatError
        For a malformed file, or one with fewer than two numeric columns.
    """
    rec = load_atf(name)
    return two_columns(rec.data, rec.path)


def _check_text(what: str, text: str, forbidden: str) -> None:
    bad = [c for c in forbidden if c in text]
    if bad:
        raise ValueError(f"cannot write {what} {text!r} to an ATF file: it contains {bad[0]!r}")


def write_atf(
    path: PathLike,
    recording: Union[Recording, Any],
    columns: list[str] | None = None,
    units: list[str | None] | None = None,
    header: dict[str, Any] | None = None,
    *,
    version: str = "1.0",
) -> None:
    """Write a Recording (or a 2-D array) as a tab-separated ATF file.

    Parameters
    ----------
    path : str or os.PathLike
        The target; written under a temporary name, then moved into place.
    recording : Recording or array_like
        The table. For a plain array, ``columns`` (default ``col1``, ...),
        ``units`` and ``header`` describe it; for a Recording they override
        its own when given.
    version : str
        The version written after the signature.

    Raises
    ------
    ValueError
        When a title, header record or text cell cannot be written in ATF
        (a tab, line ending or double quote in it).
    """
    if isinstance(recording, Recording):
        data = recording.data
        columns = recording.columns if columns is None else columns
        units = recording.units if units is None else units
        header = recording.header if header is None else header
    else:
        data = np.asarray(recording)
        if data.ndim == 1:
            data = data[:, None]
        if columns is None:
            columns = [f"col{j + 1}" for j in range(data.shape[1])]
    rec = Recording(data, columns, units, header)
    lines = [f"ATF\t{version}", f"{len(rec.header)}\t{rec.shape[1]}"]
    for key, value in rec.header.items():
        for part in [key, *(value if isinstance(value, list) else [value])]:
            _check_text("header record", str(part), '"\t\r\n')
        _check_text("header key", key, "=")
        if isinstance(value, list):
            lines.append("\t".join([f'"{key}="', *(f'"{v}"' for v in value)]))
        else:
            lines.append(f'"{key}={value}"')
    for title in rec.titles:
        _check_text("column title", title, '"\t\r\n')
    lines.append("\t".join(f'"{t}"' for t in rec.titles))
    if rec.data.dtype == object:
        for cell in rec.data.ravel().tolist():
            if isinstance(cell, str):
                _check_text("text cell", cell, "\t\r\n")
    elif rec.data.dtype.kind not in "fiub":
        raise ValueError(f"cannot write a table of dtype {rec.data.dtype} to an ATF file")
    data = rec.data if rec.data.dtype.kind in "fO" else rec.data.astype(np.float64)
    atomic_write(os.fspath(path), [("\n".join(lines) + "\n"), *format_rows(data, "\t")])
