"""Quick-look pictures of recordings with matplotlib (the ``plot`` extra).

One axes per signal, stacked and sharing the time axis.  A signal is the ATF
``Signals=`` name of a column together with its unit (an episodic file
interleaves signal and sweep: ``Trace #1 (pA)``, ``Trace #1 (A)``,
``Trace #2 (pA)``, ...), or its unit alone where the header names none, so
two units never share a y axis.  Within an axes the k-th trace, which is the
k-th sweep of an episodic file, has the k-th colour, the same in every axes.

Long traces are drawn through a min/max envelope: the samples falling on one
pixel column are drawn as their minimum and maximum, in time order, so a
one-sample spike stays visible while a line never holds more than two points
per pixel.  Only the drawing is decimated; the recording is left as it is.

matplotlib is imported by the functions here, never by the module, so that
reading recordings does not need it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

from .recording import Recording

__all__ = ["figure_of", "plot_recording", "save_picture"]

Key = Union[int, str]

#: Picture size of ``datamanager plot``: inches wide, inches per axes, at most
#: this tall, at this many dots per inch.
WIDTH, AXES_HEIGHT, MAX_HEIGHT, DPI = 8.0, 2.2, 24.0, 100
#: Traces in an axes up to which the default colour cycle and a full legend
#: are used; beyond, colours run along viridis and the legend names the
#: first and last trace.
FEW = 10


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            'plotting needs matplotlib: pip install "sim-datamanager[plot]"'
        ) from None
    return matplotlib


def _traces(rec: Recording, columns: Sequence[Key] | None) -> list[int]:
    """The indices of the columns to draw; every one but time by default."""
    time = rec.time_column
    if columns is None:
        picked = [j for j in range(rec.shape[1]) if j != time]
    else:
        if isinstance(columns, (str, int)):
            columns = [columns]
        picked = []
        for key in columns:
            picked.extend(j for j in _find(rec, key) if j not in picked)
        if time is not None and time in picked:
            raise ValueError(f"column {rec.titles[time]!r} is the time axis, not a trace")
    if not picked:
        raise ValueError(f"nothing to plot: {rec!r} has no trace column")
    text = [rec.titles[j] for j in picked if _is_text(rec.data[:, j])]
    if text:
        raise TypeError(
            f"cannot plot text columns {', '.join(map(repr, text))} of {rec!r} "
            "(a result sheet is a table: choose its numeric columns to plot)"
        )
    return picked


def _find(rec: Recording, key: Key) -> list[int]:
    if isinstance(key, (int, np.integer)):
        if -rec.shape[1] <= key < rec.shape[1]:
            return [int(key) % rec.shape[1]]
        found = []
    else:
        found = [j for j, (n, t) in enumerate(zip(rec.columns, rec.titles)) if key in (n, t)]
    if not found:
        raise KeyError(f"no column {key!r} in {rec!r}")
    return found


def _is_text(col: np.ndarray) -> bool:
    return col.dtype == object and any(isinstance(v, str) for v in col.tolist())


def _signals(rec: Recording, traces: list[int]) -> list[tuple[str, list[int]]]:
    """``(y label, columns)`` per signal, in the order the signals first appear."""
    names = rec.header.get("Signals")
    # Signals= names the columns after time, one each, when it is there.
    offset = 1 if rec.time_column is not None else 0
    if not (isinstance(names, list) and len(names) == rec.shape[1] - offset):
        names = None
    groups: dict[tuple[str | None, str | None], list[int]] = {}
    for j in traces:
        signal = names[j - offset] if names is not None and j >= offset else None
        groups.setdefault((signal, rec.units[j]), []).append(j)
    return [(_ylabel(rec, key, cols), cols) for key, cols in groups.items()]


def _ylabel(rec: Recording, key: tuple[str | None, str | None], cols: list[int]) -> str:
    signal, unit = key
    if signal is not None:
        return f"{signal} ({unit})" if unit else signal
    if len(cols) == 1:
        return rec.titles[cols[0]] or f"column {cols[0]}"
    return unit or "value (no unit recorded)"


def _xaxis(rec: Recording) -> tuple[np.ndarray, str]:
    time = rec.time_column
    if time is None:
        return np.arange(len(rec), dtype=np.float64), "sample index"
    x = np.asarray(rec.data[:, time], dtype=np.float64)
    name, unit = rec.columns[time], rec.time_unit
    return x, f"{name} ({unit})" if unit else name


def _envelope(y: np.ndarray, buckets: int) -> np.ndarray:
    """Indices of the samples to draw: each bucket's minimum and maximum, in order.

    The samples are cut into at most *buckets* runs of equal length (the
    last may be shorter); all of them are kept when there are at most two
    per bucket.  NaN is passed over, so a stray NaN blanks no pixel column,
    but a bucket holding only NaN draws one, so a gap as wide as a pixel
    stays a gap.
    """
    n = len(y)
    if n <= 2 * buckets:
        return np.arange(n)
    size = -(-n // buckets)  # ceil: every bucket but the last is full
    count = -(-n // size)
    # Padding with the last value adds no new minimum or maximum.
    rows = np.pad(y, (0, count * size - n), mode="edge").reshape(count, size)
    start = np.arange(count) * size
    # nanargmin refuses an all-NaN bucket: give it zeros, so that it draws
    # its first sample, a NaN.
    gap = np.isnan(rows).all(axis=1)
    rows[gap] = 0.0
    lo = start + np.nanargmin(rows, axis=1)
    hi = start + np.nanargmax(rows, axis=1)
    pairs = np.sort(np.stack([lo, hi], axis=1), axis=1)
    return np.minimum(pairs.ravel(), n - 1)


def _plain(text: str) -> str:
    """*text* shown as written: a ``$`` in a title must not start mathtext."""
    # Two dollars make matplotlib parse what lies between as TeX, and an
    # ill-formed formula fails only when the figure is drawn.
    return text.replace("$", r"\$")


def _colours(count: int) -> list[Any]:
    matplotlib = _matplotlib()
    if count <= FEW:
        cycle = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
        return [cycle[k % len(cycle)] for k in range(count)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(k / (count - 1)) for k in range(count)]


def _draw(
    rec: Recording, ax: Any, cols: list[int], ylabel: str, x: np.ndarray, loc: str = "upper right"
) -> None:
    buckets = max(1, int(ax.get_window_extent().width))
    colours = _colours(len(cols))
    for colour, j in zip(colours, cols):
        y = np.asarray(rec.data[:, j], dtype=np.float64)
        keep = _envelope(y, buckets)
        ax.plot(x[keep], y[keep], color=colour, linewidth=0.8, label=_plain(rec.titles[j]))
    ax.set_ylabel(_plain(ylabel))
    lines = ax.get_lines()
    if len(lines) > FEW:
        first, last = lines[0], lines[-1]
        title = f"{len(lines)} traces, first to last"
        ax.legend([first, last], [first.get_label(), last.get_label()], loc=loc, title=title)
    else:
        ax.legend(loc=loc)


def _plan(rec: Recording, columns: Sequence[Key] | None) -> list[tuple[str, list[int]]]:
    _matplotlib()  # the missing extra is named before anything else is said
    return _signals(rec, _traces(rec, columns))


def _fill(rec: Recording, target: Any, plan: list[tuple[str, list[int]]]) -> np.ndarray:
    """Draw *plan* into a new column of axes of *target* (a figure or subfigure)."""
    axes = target.subplots(len(plan), 1, sharex=True, squeeze=False)[:, 0]
    x, xlabel = _xaxis(rec)
    for ax, (ylabel, cols) in zip(axes, plan):
        _draw(rec, ax, cols, ylabel, x)
    axes[-1].set_xlabel(_plain(xlabel))
    return axes


def plot_recording(rec: Recording, ax: Any = None, columns: Sequence[Key] | None = None) -> Any:
    """:meth:`Recording.plot`: see there."""
    plan = _plan(rec, columns)
    if ax is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=_size([len(plan)]), layout="constrained")
        axes = _fill(rec, fig, plan)
        return axes[0] if len(axes) == 1 else axes
    if len(plan) > 2:
        raise ValueError(
            f"{len(plan)} signals ({', '.join(label for label, _ in plan)}) cannot share "
            "one axes: pass ax=None for one axes each, or pick columns="
        )
    x, xlabel = _xaxis(rec)
    axes = [ax] if len(plan) == 1 else [ax, ax.twinx()]
    # A twin's legend would cover the first one's: they take a corner each.
    for one, loc, (ylabel, cols) in zip(axes, ("upper left", "upper right"), plan):
        _draw(rec, one, cols, ylabel, x, loc)
    ax.set_xlabel(_plain(xlabel))
    return ax if len(axes) == 1 else np.array(axes, dtype=object)


def _size(per_block: list[int]) -> tuple[float, float]:
    height = 0.8 * len(per_block) + AXES_HEIGHT * sum(per_block)
    return WIDTH, min(height, MAX_HEIGHT)


def figure_of(recordings: Sequence[Recording], columns: Sequence[Key] | None = None) -> Any:
    """One matplotlib Figure, unknown to pyplot, drawing every recording.

    Parameters
    ----------
    recordings : sequence of Recording
        The recordings of one file.  Several (the blocks of a NEURON Graph
        file) are stacked as subfigures, each titled with its block number
        and label.
    columns : sequence of int or str, optional
        The traces of each recording, as for :meth:`Recording.plot`.

    Returns
    -------
    matplotlib.figure.Figure
        :data:`WIDTH` inches wide, :data:`AXES_HEIGHT` per axes (at most
        :data:`MAX_HEIGHT`), at :data:`DPI`, drawn by the Agg canvas.
    """
    plans = [_plan(rec, columns) for rec in recordings]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_size([len(p) for p in plans]), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if len(recordings) == 1:
        _fill(recordings[0], fig, plans[0])
        return fig
    subfigs = fig.subfigures(len(recordings), 1, height_ratios=[len(p) for p in plans])
    for n, (sub, rec, plan) in enumerate(zip(subfigs, recordings, plans)):
        title = f"block {n}" + (f": {rec.label}" if rec.label else "")
        sub.suptitle(_plain(title), fontsize="medium")
        _fill(rec, sub, plan)
    return fig


def save_picture(fig: Any, path: str) -> None:
    """Write *fig* as a PNG to *path* at :data:`DPI`, whole or not at all.

    The picture is written under a temporary name beside *path* and moved
    into place, so a reader never sees half of one.
    """
    import io

    from ._text import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write(os.fspath(path), buf.getvalue())
