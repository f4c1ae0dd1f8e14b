"""Shared machinery of the text readers: header lines, numeric blocks, errors.

The readers parse a header with Python, line by line, and hand the numeric
body to pandas' C parser on the exact byte range it occupies, so that the
readers keep up with ``pandas.read_csv``. pandas reports a bad cell
without its line, so when it refuses a block a slow Python scan of the same
bytes finds the first bad line and says what was expected there.

One ``read_csv`` call peaks at about three times the table it returns. A body
too large for that to fit comfortably in the free memory is parsed in blocks
on threads instead (pandas releases the GIL while it parses), each block
appended to the one table returned: that peaks at about 1.3x the table, at
about two thirds of the speed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Iterable, Iterator, Sequence

import numpy as np

from .._format import RECORDING_TEMP_PREFIX
from ..errors import RecordingFormatError

# Line endings as pandas' tokenizer sees them: CRLF, LF or a lone CR.
_EOL = re.compile(rb"\r\n|\r|\n")
# Bounds of the blocks the block-wise parser cuts: smaller blocks in flight
# cost less memory, larger ones less time (pandas' fixed cost per call).
BLOCK_BYTES = (1 << 18, 1 << 21)
# Bodies of at least this many bytes are parsed block-wise; None means: when
# one read_csv call (about 4x the body at its peak) would take more than half
# of free_memory().
BLOCKWISE_BYTES: int | None = None
# A header line longer than this is not a header: binary garbage, most likely.
MAX_HEADER_LINE = 1 << 20
# The spellings of not-a-number that C's printf (NEURON) and Clampfit write.
NAN_STRINGS = ["nan", "NaN", "NAN", "-nan", "-NaN", "-NAN", "+nan", "nan(ind)", "-nan(ind)"]
_NUMBER = re.compile(
    r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf|infinity)", re.IGNORECASE
)


def show(raw: object, limit: int = 40) -> str:
    """A short printable rendering of a bad cell or line for an error message."""
    text = repr(raw)
    if isinstance(raw, bytes):
        text = text[1:]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_float(cell: str) -> float:
    """``float(cell)`` with the syntax pandas' C parser accepts, else ValueError."""
    s = cell.strip(" \t\x0b\x0c")
    if s in NAN_STRINGS:
        return math.nan
    if not _NUMBER.fullmatch(s):
        raise ValueError(cell)
    return float(s)


def decode(raw: bytes, path: str, lineno: int, encodings: Sequence[str] = ("utf-8",)) -> str:
    """Decode one line of text, raising RecordingFormatError on bad bytes."""
    if b"\x00" in raw:
        raise RecordingFormatError(path, lineno, "a line of text", "a NUL byte (binary data)")
    err: UnicodeDecodeError | None = None
    for enc in encodings:
        try:
            return raw.decode(enc)
        except UnicodeDecodeError as exc:
            err = exc if err is None else err
    assert err is not None
    bad = raw[err.start : err.start + 1]
    raise RecordingFormatError(
        path,
        lineno,
        f"{'/'.join(encodings)} text",
        f"undecodable byte {show(bad)} at column {err.start + 1}",
    )


class LineReader:
    """The lines of a binary file, read lazily, with their byte offsets.

    Parameters
    ----------
    fh : binary file
        Positioned at ``start``.
    path : str
        For error messages.
    start, end : int
        The byte range to read; ``end`` None means to the end of the file.
    lineno : int
        The line number of the first line read (minus one).
    """

    def __init__(
        self, fh: BinaryIO, path: str, start: int = 0, end: int | None = None, lineno: int = 0
    ) -> None:
        self.fh = fh
        self.path = path
        self.end = end
        self.buf = b""
        self.base = start  # file offset of buf[0]
        self.pos = 0
        self.lineno = lineno
        self.eof = False

    @property
    def offset(self) -> int:
        """File offset just after the last line returned (and its EOL)."""
        return self.base + self.pos

    def _fill(self, size: int = 1 << 16) -> None:
        if self.end is not None:
            size = min(size, self.end - (self.base + len(self.buf)))
        chunk = self.fh.read(size) if size > 0 else b""
        if not chunk:
            self.eof = True
        self.buf = self.buf[self.pos :] + chunk
        self.base += self.pos
        self.pos = 0

    def readline(self, limit: int = MAX_HEADER_LINE) -> bytes | None:
        """The next line without its EOL, or None at the end."""
        while True:
            m = _EOL.search(self.buf, self.pos)
            # A CR at the very end of the buffer may be half of a CRLF.
            if m and (self.eof or m.end() < len(self.buf)):
                line = self.buf[self.pos : m.start()]
                self.pos = m.end()
                self.lineno += 1
                return line
            if self.eof:
                if self.pos < len(self.buf):
                    line = self.buf[self.pos :]
                    self.pos = len(self.buf)
                    self.lineno += 1
                    return line
                return None
            if len(self.buf) - self.pos > limit:
                raise RecordingFormatError(
                    self.path,
                    self.lineno + 1,
                    "a line of text",
                    f"more than {limit} bytes without a line ending (binary data?)",
                )
            self._fill()


def content_end(fh: BinaryIO, size: int) -> int:
    """Offset just past the last byte that is not whitespace.

    Trailing whitespace-only lines (a last line holding one space, as some
    GenePix files end) carry no data and must not reach the numeric parser.
    """
    end = size
    while end > 0:
        step = min(end, 1 << 16)
        fh.seek(end - step)
        chunk = fh.read(step)
        stripped = chunk.rstrip(b" \t\r\n\x0b\x0c")
        if stripped:
            return end - step + len(stripped)
        end -= step
    return 0


class _Window(io.RawIOBase):
    """A read-only view of ``fh[start:end]`` that also watches for NUL bytes.

    pandas reads it in large blocks; the ``mode`` attribute tells pandas it
    is binary so it does not wrap it in a (slow) text decoder.
    """

    mode = "rb"

    def __init__(self, fh: BinaryIO, start: int, end: int) -> None:
        super().__init__()
        self.fh = fh
        self.end = end
        self.nul = False
        fh.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        left = self.end - self.fh.tell()
        if left <= 0 or self.nul:
            return 0
        view = memoryview(b)[: min(len(b), left)]
        n = self.fh.readinto(view)  # type: ignore[attr-defined]
        # Binary garbage shows up as NUL bytes; stop there and let the caller
        # report the line rather than trust how a C parser treats them.
        if n and view[:n].tobytes().find(b"\x00") >= 0:
            self.nul = True
        return n or 0


def split_fields(line: str, sep: str | None) -> list[str]:
    return line.split() if sep is None else line.split(sep)


def _blank(line: bytes, sep: str | None) -> bool:
    # pandas skips lines that are empty or hold only spaces (any whitespace
    # when the separator is whitespace).
    return not (line.strip() if sep is None else line.strip(b" "))


def diagnose(
    fh: BinaryIO,
    path: str,
    start: int,
    end: int,
    first_lineno: int,
    ncols: int,
    sep: str | None,
    numeric: Sequence[bool] | None = None,
    encodings: Sequence[str] = ("utf-8",),
) -> RecordingFormatError | None:
    """Find the first line of ``fh[start:end]`` that breaks the table's rules."""
    numeric = [True] * ncols if numeric is None else list(numeric)
    fh.seek(start)
    lines = LineReader(fh, path, start, end, first_lineno - 1)
    while True:
        raw = lines.readline(limit=1 << 30)
        if raw is None:
            return None
        if _blank(raw, sep):
            continue
        try:
            text = decode(raw, path, lines.lineno, encodings)
        except RecordingFormatError as exc:
            return exc
        cells = split_fields(text, sep)
        if len(cells) != ncols:
            return RecordingFormatError(
                path, lines.lineno, f"{ncols} fields", f"{len(cells)} in {show(text)}"
            )
        for j, cell in enumerate(cells):
            if numeric[j]:
                try:
                    to_float(cell)
                except ValueError:
                    return RecordingFormatError(
                        path, lines.lineno, f"a number in column {j + 1}", show(cell)
                    )


def parse_numeric(
    fh: BinaryIO,
    path: str,
    start: int,
    end: int,
    first_lineno: int,
    ncols: int,
    sep: str | None,
    expected_rows: int | None = None,
    count_lineno: int | None = None,
) -> np.ndarray:
    """Parse ``fh[start:end]`` as a table of ``ncols`` numbers a row.

    Returns a C-contiguous float64 array ``(rows, ncols)``.
    """
    if end <= start:
        data = np.empty((0, ncols))
    else:
        if _blockwise(end - start):
            data = _parse_blocks(fh, path, start, end, ncols, sep)
        else:
            data = _parse_whole(fh, path, start, end, first_lineno, ncols, sep)
        if data is None:
            exc = diagnose(fh, path, start, end, first_lineno, ncols, sep)
            raise exc or RecordingFormatError(
                path, None, f"a table of {ncols} numeric columns", "data the C parser refused"
            )
    if expected_rows is not None and data.shape[0] != expected_rows:
        found = data.shape[0]
        where = count_lineno if count_lineno else first_lineno
        raise RecordingFormatError(
            path,
            first_lineno + found if found < expected_rows else where,
            f"{expected_rows} data rows (the count on line {where})",
            f"{found} rows" + (" (truncated file?)" if found < expected_rows else ""),
        )
    return data


def _blockwise(nbytes: int) -> bool:
    if BLOCKWISE_BYTES is not None:
        return nbytes >= BLOCKWISE_BYTES
    if nbytes < 1 << 26:
        return False  # a peak of 256 MiB at most: not worth a look at free memory
    return 4 * nbytes > free_memory() // 2


def free_memory() -> int:
    """Bytes this process can still use: ``MemAvailable``, capped by its cgroup.

    A SLURM job or a container sees the whole machine in ``/proc/meminfo``
    but is killed at its cgroup's limit (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``). 4 GiB when nothing can be read.
    """
    found = []
    try:
        with open("/proc/meminfo", "rb") as f:
            found += [
                int(line.split()[1]) * 1024 for line in f if line.startswith(b"MemAvailable:")
            ]
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        lines = []
    for _, controllers, where in (x for x in lines if len(x) == 3):
        if controllers == "":
            root, files = "/sys/fs/cgroup", ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            root, files = (
                "/sys/fs/cgroup/memory",
                ("memory.limit_in_bytes", "memory.usage_in_bytes"),
            )
        else:
            continue
        # Inside a cgroup namespace the mount's root is the process's own group.
        for folder in {root + where.rstrip("/"), root}:
            try:
                with open(os.path.join(folder, files[0])) as f:
                    limit = f.read().strip()
                with open(os.path.join(folder, files[1])) as f:
                    used = int(f.read())
            except (OSError, ValueError):
                continue
            if limit.isdigit() and int(limit) < 1 << 60:
                found.append(max(0, int(limit) - used))
    return min(found) if found else 4 << 30


def _read_csv(source: object, sep: str | None, **kwargs: object) -> np.ndarray | None:
    """One ``pandas.read_csv`` call on numeric text; None if pandas refuses it."""
    import pandas as pd  # late import: only readers pay for pandas

    if _old_pandas():
        kwargs["float_precision"] = "round_trip"
    try:
        frame = pd.read_csv(
            source,
            sep=r"\s+" if sep is None else sep,
            header=None,
            engine="c",
            dtype=np.float64,
            keep_default_na=False,
            na_values=NAN_STRINGS,
            quoting=3,  # csv.QUOTE_NONE: a quote is a bad cell, never a field delimiter
            encoding="utf-8",
            **kwargs,
        )
    except pd.errors.EmptyDataError:
        return np.empty((0, 0))  # only blank lines
    except MemoryError:
        raise  # not the file's fault: no scan of it for a bad line
    except Exception:  # any refusal is reported by diagnose, with its line
        return None
    # One float block: to_numpy gives a Fortran-ordered view of it, no copy.
    return frame.to_numpy(dtype=np.float64)


def _parse_whole(
    fh: BinaryIO, path: str, start: int, end: int, first_lineno: int, ncols: int, sep: str | None
) -> np.ndarray | None:
    """One read_csv call on the whole range: fastest (pandas reads on all cores)."""
    fh.seek(end)
    tail = fh.read()
    # read_csv on the file itself, so pandas can read it in parallel.
    # Trailing whitespace is harmless to pandas (it skips lines of spaces)
    # unless it holds a tab, which makes an empty row: then read through a
    # window that stops at ``end``.
    if b"\t" in tail and sep is not None:
        window = _Window(fh, start, end)
        out = _read_csv(window, sep)
        if window.nul:
            return None
    else:
        if _old_pandas() and _has_nul(fh, start, end):
            return None
        out = _read_csv(path, sep, skiprows=first_lineno - 1)
    if out is None or out.shape[1] != ncols:
        return None if out is None or out.size else np.empty((0, ncols))
    return np.ascontiguousarray(out)


@functools.cache
def _old_pandas() -> bool:
    """pandas before 3.0, which needs two workarounds to read exactly.

    Its C parser ends a number at a NUL byte ("3\x00\x01" reads as 3), so
    binary garbage would pass as data: the body is scanned for NUL first
    (pandas 3 refuses every NUL; the fuzz tests check it). And its default
    float conversion can be one ulp off: ``float_precision="round_trip"``
    (deprecated in pandas 3, whose default is exact).
    """
    import pandas as pd

    return int(pd.__version__.split(".")[0]) < 3


def _has_nul(fh: BinaryIO, start: int, end: int) -> bool:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    fh.seek(start)
    while start < end:
        n = fh.readinto(view[: min(len(buf), end - start)])  # type: ignore[attr-defined]
        if not n:
            return False
        if buf.find(b"\x00", 0, n) >= 0:
            return True
        start += n
    return False


def _parse_blocks(
    fh: BinaryIO, path: str, start: int, end: int, ncols: int, sep: str | None
) -> np.ndarray | None:
    """read_csv on blocks of the range, on threads, appended to one table.

    Blocks are parsed ahead on as many threads as there are CPUs (at most 4)
    and appended in order; the table grows in place (``ndarray.resize``
    reallocates, and large reallocations move pages rather than copy them),
    so the peak is the table plus the blocks in flight.
    """
    fd = fh.fileno()
    workers = min(
        4,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
    )
    # workers + 1 blocks in flight, each costing pandas about 5x its bytes:
    # a twelfth of the body in flight keeps that near 0.4x the body.
    size = min(max((end - start) // (12 * (workers + 1)), BLOCK_BYTES[0]), BLOCK_BYTES[1])
    cuts = _cut_at_lines(fd, start, end, size)
    blocks = iter(zip(cuts[:-1], cuts[1:]))
    out = np.empty((0, ncols))
    rows = 0
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[np.ndarray | None]] = deque()

        def submit() -> None:
            block = next(blocks, None)
            if block is not None:
                pending.append(pool.submit(_parse_block, fd, path, *block, sep))

        for _ in range(workers + 1):
            submit()
        while pending:
            block = pending.popleft().result()
            submit()
            if block is None or (block.size and block.shape[1] != ncols):
                for f in pending:
                    f.cancel()
                return None
            if block.size:  # else only blank lines
                out.resize((rows + len(block), ncols), refcheck=False)
                for j in range(ncols):
                    out[rows:, j] = block[:, j]  # columns: long contiguous copies
                rows += len(block)
    return out


def _parse_block(fd: int, path: str, start: int, end: int, sep: str | None) -> np.ndarray | None:
    raw = os.pread(fd, end - start, start)
    if len(raw) < end - start:  # never a silently shorter table
        raise RecordingFormatError(
            path,
            None,
            f"{end - start} bytes at byte {start}",
            f"{len(raw)}: the file shrank while it was read",
        )
    # Binary garbage shows up as NUL bytes: let diagnose report the line
    # rather than trust how a C parser treats them.
    if b"\x00" in raw:
        return None
    return _read_csv(io.BytesIO(raw), sep, low_memory=False)


def _cut_at_lines(fd: int, start: int, end: int, size: int) -> list[int]:
    """Offsets cutting ``start..end`` into pieces of about ``size`` bytes at line starts."""
    cuts = [start]
    pos = start + size
    while pos < end:
        buf = b""
        while True:
            more = os.pread(fd, min(1 << 16, end - pos - len(buf)), pos + len(buf))
            buf += more
            m = _EOL.search(buf)
            # A CR at the very end of what was read may be half of a CRLF.
            if m and (m.end() < len(buf) or not more or pos + len(buf) >= end):
                pos += m.end()
                break
            if not more or pos + len(buf) >= end:
                pos = end
                break
        if pos >= end:
            break
        cuts.append(pos)
        pos += size
    cuts.append(end)
    return cuts


def parse_lines(
    lines: Sequence[str], path: str, first_lineno: int, ncols: int, sep: str | None
) -> np.ndarray:
    """Parse already-split lines (small multi-block files) into a float table."""
    out = np.empty((len(lines), ncols))
    for i, line in enumerate(lines):
        cells = split_fields(line, sep)
        if len(cells) != ncols:
            raise RecordingFormatError(
                path, first_lineno + i, f"{ncols} fields", f"{len(cells)} in {show(line)}"
            )
        for j, cell in enumerate(cells):
            try:
                out[i, j] = to_float(cell)
            except ValueError:
                raise RecordingFormatError(
                    path, first_lineno + i, f"a number in column {j + 1}", show(cell)
                ) from None
    return out


def file_size(fh: BinaryIO) -> int:
    return os.fstat(fh.fileno()).st_size


def format_rows(data: np.ndarray, sep: str, rows_per_part: int = 1 << 16) -> Iterator[str]:
    """Rows of a table as text parts; floats as ``repr`` (the shortest exact text).

    Text cells are written as they are; the caller checks they hold no
    separator or line ending.
    """
    for lo in range(0, data.shape[0], rows_per_part):
        rows = data[lo : lo + rows_per_part].tolist()
        if data.dtype.kind == "f":
            # float.__repr__ round-trips exactly and is the fastest exact formatter.
            yield "".join(sep.join(map(repr, row)) + "\n" for row in rows)
        else:
            yield "".join(
                sep.join(c if isinstance(c, str) else repr(float(c)) for c in row) + "\n"
                for row in rows
            )


def atomic_write(path: str, parts: Iterable[str] | bytes) -> None:
    """Write the text ``parts`` (or the bytes) to ``path`` whole or not at all.

    The file is written under a temporary name in the target folder and moved
    into place with os.replace, so a reader never sees half a file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=RECORDING_TEMP_PREFIX, dir=folder)
    try:
        if isinstance(parts, bytes):
            with os.fdopen(fd, "wb") as raw:
                raw.write(parts)
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                for part in parts:
                    out.write(part)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a recording is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def numeric_columns(data: np.ndarray, path: str | None, count: int | None = None) -> np.ndarray:
    """The first *count* columns of *data* (all by default) as rows of floats.

    Raises RecordingFormatError for a text cell (Clampfit result sheets hold
    some) or where the table has fewer than *count* columns.
    """
    if count is not None and data.shape[1] < count:
        raise RecordingFormatError(
            path or "", None, f"at least {count} columns (times, values)", f"{data.shape[1]}"
        )
    rows = data.T[:count]
    if rows.dtype == object:
        for j, row in enumerate(rows):
            bad = next((v for v in row.tolist() if isinstance(v, str)), None)
            if bad is not None:
                raise RecordingFormatError(
                    path or "", None, f"numbers in column {j + 1}", show(bad)
                )
    return rows.astype(np.float64)


def two_columns(data: np.ndarray, path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Brian's ``(times, values)``: the first two columns as 1-D float arrays."""
    times, values = numeric_columns(data, path, 2)
    return times, values
