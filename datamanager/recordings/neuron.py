"""The files the NEURON simulator writes, read by content, not by name.

Layouts (facts from NEURON's own source):

``clipboard``
    "Vector > Save to File" (stdlib.hoc ``clipboard_save``): ``label:NAME``,
    a count line, then ``x<TAB>y`` rows. The label line may be missing; a
    look-alike writes ``N 2`` (rows, columns) on the count line.
``graph-addvar``
    "Print to File > Ascii" of a Graph with addvar lines
    (``Graph::ascii_save``): ``Graph addvar/addexpr lines``, ``<nlines>
    <npts>``, the names, the rows, then ``<n> unlabeled lines`` and ``n``
    count-prefixed blocks of ``x<TAB>y`` rows. One Recording per block.
``polylines-matrix`` / ``polylines-manifest``
    The same for a Graph without addvar lines: ``PolyLines``, then either a
    names line and ``<N> rows, <C> columns`` and the rows, or ``Line
    Manifest:`` ... ``End of Line Manifest`` and count-prefixed blocks whose
    count line may carry a family label (``501  amp=0.5``).
``vector-printf``
    ``Vector.printf(File)``: one value a line, then an empty line (several
    vectors give several blocks).
``columns``
    Plain whitespace-separated numbers with no header (hoc ``File.printf``
    spike rasters, fixed-width files written by other tools).
``vwrite``
    The binary ``Vector.vwrite``: int32 count, int32 type code, data (4
    float64, 3 float32, 5 int32, 2 uint16 and 1 int8 after a float64 scale
    and minimum), either byte order, one or several vectors in a row.
"""

from __future__ import annotations

import os
import re
import struct
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
    numeric_columns,
    parse_lines,
    parse_numeric,
    show,
    split_fields,
    to_float,
)
from .recording import Recording

__all__ = ["is_neuron", "load_neuron_dat", "read_neuron_dat", "write_neuron_dat"]

PathLike = Union[str, "os.PathLike[str]"]
GRAPH = "Graph addvar/addexpr lines"
POLYLINES = "PolyLines"
_COUNT = re.compile(r"\s*(\d+)(?:\s+(\d+))?\s*")
_MATRIX = re.compile(r"\s*(\d+) rows, (\d+) columns\s*")
_ADDVAR = re.compile(r"(.*?)(\d+ addvar/addexpr lines:.*)")
_UNLABELED = re.compile(r"\s*(\d+) unlabeled lines\s*")
_BLOCK_COUNT = re.compile(r"\s*(\d+)(?:\s+(.*?))?\s*")
# vwrite type code -> (numpy type, whether a float64 scale and minimum precede the data)
_VTYPES = {4: ("f8", False), 3: ("f4", False), 5: ("i4", False), 2: ("u2", True), 1: ("i1", True)}
_WHAT = (
    "a NEURON layout (label:, a count line, 'Graph addvar/addexpr lines', "
    "'PolyLines', rows of numbers, or Vector.vwrite binary)"
)


# -- binary Vector.vwrite -------------------------------------------------------------
def _vwrite_order(head: bytes) -> str | None:
    """The byte order whose header makes sense, if any (vread's own test)."""
    if len(head) < 8:
        return None
    for order in ("<", ">"):
        n, code = struct.unpack(order + "ii", head[:8])
        if code in _VTYPES and n >= 0:
            return order
    return None


def _read_vwrite(fh: BinaryIO, path: str, size: int, order: str) -> list[np.ndarray]:
    vectors = []
    off = 0
    while off < size:
        fh.seek(off)
        head = fh.read(8)
        if len(head) < 8:
            raise RecordingFormatError(
                path, None, f"a vwrite header (8 bytes) at byte {off}", f"{len(head)} bytes"
            )
        n, code = struct.unpack(order + "ii", head)
        if code not in _VTYPES or n < 0:
            raise RecordingFormatError(
                path,
                None,
                f"a vwrite header (count, type 1-5) at byte {off}",
                f"count {n}, type {code}",
            )
        kind, scaled = _VTYPES[code]
        dtype = np.dtype(order + kind)
        need = 8 + (16 if scaled else 0) + n * dtype.itemsize
        if off + need > size:
            raise RecordingFormatError(
                path,
                None,
                f"{need} bytes for a vwrite vector of {n} values at byte {off}",
                f"{size - off} (truncated file)",
            )
        scale, low = struct.unpack(order + "dd", fh.read(16)) if scaled else (1.0, 0.0)
        raw = np.fromfile(fh, dtype=dtype, count=n)
        if code in (4, 3, 5):
            values = raw.astype(np.float64)
        elif code == 2:
            values = raw / scale + low
        else:
            values = (raw.astype(np.float64) + 128.0) / scale + low
        vectors.append(values)
        off += need
    return vectors


def _vwrite_recordings(vectors: list[np.ndarray], path: str, order: str) -> list[Recording]:
    attrs = {"byteorder": "little" if order == "<" else "big"}
    if len({len(v) for v in vectors}) == 1:
        names = [f"col{j + 1}" for j in range(len(vectors))]
        data = np.column_stack(vectors)
        return [Recording(data, names, path=path, layout="vwrite", attrs=attrs)]
    return [
        Recording(v[:, None], ["col1"], path=path, layout="vwrite", attrs={**attrs, "block": i})
        for i, v in enumerate(vectors)
    ]


# -- text layouts -----------------------------------------------------------------------
def _numbers(text: str) -> list[float] | None:
    cells = text.split()
    try:
        return [to_float(c) for c in cells] if cells else None
    except ValueError:
        return None


def _sep_of(line: str) -> str | None:
    return "\t" if "\t" in line else None


class _Text:
    """All remaining lines of a small multi-block file, with a cursor."""

    def __init__(self, lines: LineReader, path: str) -> None:
        self.path = path
        self.items: list[tuple[int, str]] = []
        while True:
            raw = lines.readline()
            if raw is None:
                break
            self.items.append((lines.lineno, decode(raw, path, lines.lineno)))
        # Whitespace-only lines at the very end carry nothing.
        while self.items and not self.items[-1][1].strip():
            self.items.pop()
        self.i = 0
        self.last = lines.lineno

    def done(self) -> bool:
        return self.i >= len(self.items)

    def next(self, expected: str) -> tuple[int, str]:
        if self.done():
            raise RecordingFormatError(self.path, self.last + 1, expected, "the end of the file")
        item = self.items[self.i]
        self.i += 1
        return item

    def match(self, pattern: re.Pattern[str], expected: str) -> tuple[int, re.Match[str]]:
        lineno, text = self.next(expected)
        m = pattern.fullmatch(text)
        if not m:
            raise RecordingFormatError(self.path, lineno, expected, show(text))
        return lineno, m

    def rows(self, n: int, ncols: int, what: str) -> np.ndarray:
        if self.i + n > len(self.items):
            have = len(self.items) - self.i
            raise RecordingFormatError(
                self.path, self.last + 1, f"{n} rows of {what}", f"{have} (truncated file?)"
            )
        chunk = self.items[self.i : self.i + n]
        self.i += n
        first = chunk[0][0] if chunk else self.last
        sep = _sep_of(chunk[0][1]) if chunk else None
        return parse_lines([t for _, t in chunk], self.path, first, ncols, sep)

    def end(self) -> None:
        if not self.done():
            lineno, text = self.items[self.i]
            raise RecordingFormatError(self.path, lineno, "the end of the file", show(text))


def _names(text: str, count: int) -> list[str]:
    names = text.split(" ")
    if len(names) == count:
        return names
    # A name with a space in it: keep the x name and number the others.
    return [names[0] or "x", *(f"y{j}" for j in range(1, count))]


def _graph(t: _Text, path: str) -> list[Recording]:
    lineno, m = t.match(_COUNT, "'<number of lines> <number of points>'")
    if m.group(2) is None:
        raise RecordingFormatError(
            path, lineno, "'<number of lines> <number of points>'", show(m.group(0))
        )
    nlines, npts = int(m.group(1)), int(m.group(2))
    _, names_line = t.next("a line of names")
    names = _names(names_line, nlines + 1)
    data = t.rows(npts, nlines + 1, "x and the addvar lines")
    header, label = {"names": names_line}, " ".join(names[1:])
    out = [Recording(data, names, None, header, label, path, "graph-addvar", {"block": 0})]
    _, m = t.match(_UNLABELED, "'<n> unlabeled lines'")
    for k in range(int(m.group(1))):
        _, cm = t.match(_COUNT, "the point count of an unlabeled line")
        if cm.group(2) is not None:
            raise RecordingFormatError(
                path, t.items[t.i - 1][0], "one point count", show(cm.group(0))
            )
        data = t.rows(int(cm.group(1)), 2, "x y")
        attrs = {"block": k + 1}
        out.append(Recording(data, ["x", "y"], path=path, layout="graph-addvar", attrs=attrs))
    t.end()
    return out


def _polylines(t: _Text, path: str) -> list[Recording]:
    header: dict[str, Any] = {}
    _, text = t.next("'Line Manifest:' or a line of names")
    # "x expression: NAME" is written without a line ending of its own, so it
    # prefixes whatever line follows (ivoc/graph.cpp, Graph::ascii_save).
    if text.startswith("x expression: "):
        text = text[len("x expression: ") :]
        m = _ADDVAR.fullmatch(text)
        if m:
            header["x expression"], text = m.group(1), m.group(2)
        elif text.endswith("Line Manifest:"):
            header["x expression"] = text[: -len("Line Manifest:")]
        else:
            header["x expression"] = ""
    if _ADDVAR.fullmatch(text):
        header["addvar lines"] = text
        _, text = t.next("'Line Manifest:' or a line of names")
    if text.endswith("Line Manifest:"):
        return _manifest(t, path, header)
    names_line = text
    _, m = t.match(_MATRIX, "'<N> rows, <C> columns'")
    nrows, ncols = int(m.group(1)), int(m.group(2))
    names = _names(names_line, ncols)
    if "x expression" in header and len(names[0]) % 2 == 0:
        half = len(names[0]) // 2
        if names[0][:half] == names[0][half:]:  # "x expression: t" then "t v(.5)"
            names[0] = names[0][:half]
    data = t.rows(nrows, ncols, "x and the labeled lines")
    t.end()
    header, label = {**header, "names": names_line}, " ".join(names[1:])
    return [Recording(data, names, None, header, label, path, "polylines-matrix", {"block": 0})]


def _manifest(t: _Text, path: str, header: dict[str, Any]) -> list[Recording]:
    manifest = []
    while True:
        lineno, text = t.next("'End of Line Manifest'")
        if text.strip() == "End of Line Manifest":
            break
        m = _BLOCK_COUNT.fullmatch(text)
        if not m:
            raise RecordingFormatError(
                path, lineno, "a point count (and label) or 'End of Line Manifest'", show(text)
            )
        manifest.append((int(m.group(1)), m.group(2) or None))
    out = []
    for k, (count, label) in enumerate(manifest):
        lineno, m = t.match(_BLOCK_COUNT, f"the point count of line {k + 1}")
        if int(m.group(1)) != count or (m.group(2) or None) != label:
            raise RecordingFormatError(
                path, lineno, f"'{count}' as in the manifest", show(m.group(0))
            )
        data, names = t.rows(count, 2, "x y"), ["x", label or "y"]
        layout = "polylines-manifest"
        out.append(Recording(data, names, None, header, label, path, layout, {"block": k}))
    t.end()
    return out


def _printf_blocks(t: _Text, path: str) -> list[Recording]:
    """One value a line; an empty line ends a vector (Vector.printf to a File)."""
    blocks: list[list[tuple[int, str]]] = [[]]
    for lineno, text in t.items:
        if text.strip():
            blocks[-1].append((lineno, text))
        elif blocks[-1]:
            blocks.append([])
    blocks = [b for b in blocks if b]
    layout = (
        "vector-printf"
        if len(blocks) > 1 or t.last > (t.items[-1][0] if t.items else 0)
        else "columns"
    )
    out = []
    for k, block in enumerate(blocks):
        data = parse_lines([x for _, x in block], path, block[0][0], 1, None)
        attrs = {"block": k} if layout == "vector-printf" else {}
        out.append(Recording(data, ["col1"], path=path, layout=layout, attrs=attrs))
    return out


def load_neuron_dat(path: PathLike) -> list[Recording]:
    """Read a file written by NEURON (text layouts or ``Vector.vwrite`` binary).

    Parameters
    ----------
    path : str or os.PathLike
        The file; its layout is detected from its content.

    Returns
    -------
    list of Recording
        One per block, in file order, each with its ``label`` (None for an
        unlabeled block) and ``layout``.

    Raises
    ------
    RecordingFormatError
        For an empty, truncated, ragged, non-numeric, binary-garbage or
        undecodable file, naming the line and what was expected there.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "v.dat")
    >>> write_neuron_dat(path, [0.0, 0.025, 0.05], [-65.0, -64.5, -63.75], label="v(.5)")
    >>> with open(path) as f:
    ...     f.read().splitlines()[:3]
    ['label:v(.5)', '3', '0.0\\t-65.0']
    >>> [rec] = load_neuron_dat(path)
    >>> rec.label, rec.layout, rec.columns, rec.data[:, 1].tolist()
    ('v(.5)', 'clipboard', ['x', 'v(.5)'], [-65.0, -64.5, -63.75])
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        size = file_size(fh)
        if size == 0:
            raise RecordingFormatError(path, 1, _WHAT, "an empty file")
        head = fh.read(min(size, 1 << 16))
        order = _vwrite_order(head)
        if order is not None:
            return _vwrite_recordings(_read_vwrite(fh, path, size, order), path, order)
        fh.seek(0)
        lines = LineReader(fh, path)
        raw = lines.readline()
        assert raw is not None
        first = decode(raw, path, 1)
        if first.startswith("label:"):
            return _clipboard(fh, lines, path, size, first[len("label:") :])
        if first.strip() == GRAPH:
            return _graph(_Text(lines, path), path)
        if first.strip() == POLYLINES:
            return _polylines(_Text(lines, path), path)
        count = _COUNT.fullmatch(first)
        if count:
            second = _peek(fh, lines, path)
            cells = None if second is None else _numbers(second)
            fits = (
                cells is not None and len(cells) >= 2 and count.group(2) in (None, str(len(cells)))
            )
            # "0" alone: an empty clipboard vector written without a label.
            empty = second is None and int(count.group(1)) == 0
            if fits or empty:
                return _clipboard(fh, lines, path, size, None, count, 1)
        if _numbers(first) is None:
            raise RecordingFormatError(path, 1, _WHAT, show(first))
        ncols = len(split_fields(first, _sep_of(first)))
        if ncols == 1:
            fh.seek(0)
            return _printf_blocks(_Text(LineReader(fh, path), path), path)
        end = content_end(fh, size)
        data = parse_numeric(fh, path, 0, end, 1, ncols, _sep_of(first))
        names = [f"col{j + 1}" for j in range(ncols)]
        return [Recording(data, names, path=path, layout="columns")]


def _peek(fh: BinaryIO, lines: LineReader, path: str) -> str | None:
    pos = (lines.buf, lines.base, lines.pos, lines.lineno, lines.eof)
    raw = lines.readline()
    text = None if raw is None else decode(raw, path, lines.lineno)
    lines.buf, lines.base, lines.pos, lines.lineno, lines.eof = pos
    return text


def _clipboard(
    fh: BinaryIO,
    lines: LineReader,
    path: str,
    size: int,
    label: str | None,
    count: re.Match[str] | None = None,
    count_lineno: int = 2,
) -> list[Recording]:
    if count is None:
        raw = lines.readline()
        text = None if raw is None else decode(raw, path, lines.lineno)
        count = None if text is None else _COUNT.fullmatch(text)
        if count is None:
            raise RecordingFormatError(
                path,
                count_lineno,
                "a count line ('<rows>' or '<rows> <columns>')",
                "the end of the file" if text is None else show(text),
            )
    nrows = int(count.group(1))
    ncols = int(count.group(2)) if count.group(2) is not None else 2
    if ncols < 1:
        raise RecordingFormatError(path, count_lineno, "at least 1 column", "0")
    start, first = lines.offset, lines.lineno + 1
    end = content_end(fh, size)
    second = _peek(fh, lines, path) or ""
    data = parse_numeric(
        fh,
        path,
        start,
        max(end, start),
        first,
        ncols,
        _sep_of(second),
        expected_rows=nrows,
        count_lineno=count_lineno,
    )
    names = ["x", label if label else "y"] if ncols == 2 else [f"col{j + 1}" for j in range(ncols)]
    header = {} if label is None else {"label": label}
    return [Recording(data, names, None, header, label, path, "clipboard")]


def is_neuron(head: bytes) -> bool:
    """Whether the first bytes of a file look like one of NEURON's layouts.

    A cheap test on at most the first 64 KiB, for finding recordings in a
    folder; :func:`load_neuron_dat` does the full check.

    >>> is_neuron(b"label:v(.5)\\n2\\n0\\t-65\\n"), is_neuron(b"%PDF-1.4\\n")
    (True, False)
    """
    if not head:
        return False
    if _vwrite_order(head) is not None:
        return True
    if b"\x00" in head:
        return False
    text_lines = re.split(rb"\r\n|\r|\n", head, maxsplit=2)
    try:
        first = text_lines[0].decode("utf-8")
        second = text_lines[1].decode("utf-8") if len(text_lines) > 1 else ""
    except UnicodeDecodeError:
        return False
    if first.startswith("label:") or first.strip() in (GRAPH, POLYLINES):
        return True
    if _numbers(first) is None:
        return False
    return not second.strip() or _numbers(second) is not None


def read_neuron_dat(name: PathLike) -> np.ndarray:
    """Brian's ``read_neuron_dat``: every column of the first block, one row each.

    Brian 1.4 returned ``numpy.loadtxt(...).T`` after skipping two lines, so
    ``t, v = read_neuron_dat(f)`` reads a two-column file and ``t, x, y =``
    a three-column one; a one-column file (``Vector.printf``) gives a 1-D
    array.  Unlike Brian, a file without NEURON's two header lines keeps its
    first two rows, a file of several blocks reads its first block (see
    :func:`load_neuron_dat` for all of them), and a table of one row keeps
    its columns apart.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(columns, rows)``, or ``(rows,)`` for one column.

    Raises
    ------
    RecordingFormatError
        For a malformed file, or a cell of text.
    """
    rec = load_neuron_dat(name)[0]
    rows = numeric_columns(rec.data, rec.path)
    return rows[0] if len(rows) == 1 else rows


def write_neuron_dat(
    path: PathLike,
    times: Union[Recording, Any],
    values: Any = None,
    *,
    label: str | None = None,
) -> None:
    """Write two columns in NEURON's clipboard layout (``label:``, count, rows).

    Parameters
    ----------
    path : str or os.PathLike
        The target; written under a temporary name, then moved into place.
    times : Recording or array_like
        A two-column Recording (its label is used unless ``label`` is given),
        a ``(n, 2)`` array, or the x values when ``values`` is given.
    values : array_like, optional
        The y values, as long as ``times``.
    label : str, optional
        Written as ``label:NAME``; with no label the line is left out, as
        NEURON's ``clipboard_retrieve`` allows.

    Raises
    ------
    ValueError
        For data that is not two equal columns, or a label with a line ending
        or a NUL character (NEURON's reader, and ours, stop at either).
    """
    if isinstance(times, Recording):
        data = times.data
        label = times.label if label is None else label
    elif values is not None:
        x = np.asarray(times, dtype=np.float64)
        y = np.asarray(values, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(f"times and values must be 1-D and equal, got {x.shape}, {y.shape}")
        data = np.column_stack([x, y])
    else:
        data = np.asarray(times)
    if data.ndim != 2 or data.shape[1] != 2:
        raise ValueError(f"the clipboard layout holds two columns, got shape {data.shape}")
    data = data.astype(np.float64)
    if label is not None and any(c in label for c in "\n\r\0"):
        raise ValueError(f"a label cannot hold a line ending or NUL: {label!r}")
    head = ("" if label is None else f"label:{label}\n") + f"{data.shape[0]}\n"
    atomic_write(os.fspath(path), [head, *format_rows(data, "\t")])
