"""The one type every recording reader returns.

A :class:`Recording` is a 2-D table of samples (one row per sample, one
column per signal) with the column names, their units, the file's header
records, the block label, the source path and the layout the reader detected.
It pickles to builtins and numpy arrays only, so a session opened in safe
mode can load it back: it registers itself with the safe unpickler.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np

from .._format import same_array
from ..safepickle import register_safe_type

__all__ = ["Recording"]

#: Units that make a first column the time axis.
TIME_UNITS = frozenset({"s", "ms", "us", "\u00b5s", "\u03bcs", "ns", "min", "h"})
#: Names that make a unitless first column the time axis: NEURON's clipboard
#: and Graph files call it ``x``.
TIME_NAMES = frozenset({"t", "time", "x"})
#: NEURON writes no units; its time unit is the millisecond.
NEURON_TIME_UNIT = "ms"


@register_safe_type
class Recording:
    """A table of samples read from (or to be written to) a recording file.

    Parameters
    ----------
    data : array_like
        2-D array, one row per sample and one column per signal. Numeric
        tables are float64; tables with text columns (Clampfit result sheets,
        GenePix array lists) are object arrays holding ``float`` and ``str``.
    columns : sequence of str
        The name of each column, without its unit (``"Trace #1"`` for the ATF
        title ``"Trace #1 (pA)"``).
    units : sequence of str or None, optional
        The unit of each column, None where the title names none.
    header : mapping, optional
        The header records in file order: ``"Key=Value"`` records give
        ``{Key: Value}``; a record holding several quoted fields gives a list.
    label : str, optional
        The block's label (a NEURON ``label:`` line, a Graph line name, ...).
    path : str, optional
        The file the recording was read from.
    layout : str, optional
        The layout the reader detected (``"atf"``, ``"clipboard"``,
        ``"graph-addvar"``, ``"polylines-matrix"``, ``"polylines-manifest"``,
        ``"vector-printf"``, ``"columns"``, ``"vwrite"``).
    attrs : mapping, optional
        Anything else worth keeping, JSON-like (e.g. the block index, or the
        ``sha256`` of the source file set by the importer).

    Examples
    --------
    >>> import numpy as np
    >>> rec = Recording(np.array([[0.0, -65.0], [0.025, -64.9]]), ["t", "v"], ["ms", "mV"])
    >>> rec.shape
    (2, 2)
    >>> rec.titles
    ['t (ms)', 'v (mV)']
    >>> rec.column("v").tolist()
    [-65.0, -64.9]
    """

    __slots__ = ("attrs", "columns", "data", "header", "label", "layout", "path", "units")

    def __init__(
        self,
        data: Any,
        columns: Sequence[str],
        units: Sequence[str | None] | None = None,
        header: dict[str, Union[str, list[str]]] | None = None,
        label: str | None = None,
        path: str | None = None,
        layout: str | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        arr = np.asarray(data)
        if arr.ndim != 2:
            raise ValueError(f"Recording data must be 2-D, got shape {arr.shape}")
        columns = [str(c) for c in columns]
        if arr.shape[1] != len(columns):
            raise ValueError(
                f"Recording has {arr.shape[1]} data columns but {len(columns)} column names"
            )
        if units is None:
            units = [None] * len(columns)
        units = [None if u is None else str(u) for u in units]
        if len(units) != len(columns):
            raise ValueError(f"Recording has {len(columns)} columns but {len(units)} units")
        self.data: np.ndarray = arr
        self.columns: list[str] = columns
        self.units: list[str | None] = units
        self.header: dict[str, Union[str, list[str]]] = dict(header or {})
        self.label = label
        self.path = None if path is None else str(path)
        self.layout = layout
        self.attrs: dict[str, Any] = dict(attrs or {})

    # -- views -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the data."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def titles(self) -> list[str]:
        """Column titles as an ATF file writes them: ``"name (unit)"``."""
        out = []
        for name, unit in zip(self.columns, self.units):
            if unit is None:
                out.append(name)
            elif name:
                out.append(f"{name} ({unit})")
            else:
                out.append(f"({unit})")
        return out

    @property
    def time_column(self) -> int | None:
        """Index of the time column (always 0), or None if the recording has none.

        Only a numeric recording of two or more columns has one. Its first
        column is time when its unit is a time unit (``s``, ``ms``, ``us``,
        ``ns``, ``min``, ``h``), or when it has no unit and is named ``t``,
        ``time`` or ``x`` (case aside), or comes from a NEURON file (any
        layout but ``"atf"``): NEURON writes the independent variable of its
        graphs and vector pairs first, with no unit (:attr:`time_unit` says
        in which unit). The NWB export and :meth:`plot` both follow this rule.

        Examples
        --------
        >>> Recording(np.zeros((2, 2)), ["Time", "Trace #1"], ["s", "pA"]).time_column
        0
        >>> print(Recording(np.zeros((2, 2)), ["col1", "col2"]).time_column)
        None
        """
        if self.data.shape[1] < 2 or self.data.dtype == object:
            return None
        name, unit = self.columns[0], self.units[0]
        if unit in TIME_UNITS:
            return 0
        if unit is None and (
            name.strip().lower() in TIME_NAMES or self.layout not in (None, "atf")
        ):
            return 0
        return None

    @property
    def time_unit(self) -> str | None:
        """The unit of the time column, or None when it has none or it is unknown.

        The unit the file names if it names one; else ``"ms"`` for a NEURON
        file (any layout but ``"atf"`` and None), since NEURON writes no
        units and its time unit is the millisecond; else None: a unitless
        ``Time`` column of an ATF file or of a recording made in memory could
        be in any unit. :meth:`plot` labels its x axis with this unit and
        :func:`~datamanager.export_nwb` converts times from it.

        Examples
        --------
        >>> Recording(np.zeros((2, 2)), ["Time", "Trace #1"], ["s", "pA"]).time_unit
        's'
        >>> Recording(np.zeros((2, 2)), ["x", "v(.5)"], layout="clipboard").time_unit
        'ms'
        >>> print(Recording(np.zeros((2, 2)), ["t", "v"]).time_unit)
        None
        """
        time = self.time_column
        if time is None:
            return None
        unit = self.units[time]
        if unit is None and self.layout not in (None, "atf"):
            return NEURON_TIME_UNIT
        return unit

    def column(self, key: Union[int, str]) -> np.ndarray:
        """One column as a 1-D array, chosen by index, name or title.

        Raises
        ------
        KeyError
            If no column has that name or title.
        """
        if isinstance(key, (int, np.integer)):
            return self.data[:, int(key)]
        for names in (self.columns, self.titles):
            if key in names:
                return self.data[:, names.index(key)]
        raise KeyError(key)

    def to_dataframe(self) -> Any:
        """The data as a :class:`pandas.DataFrame` named by :attr:`titles`.

        Numeric columns become float64 columns and text columns object
        columns of ``str``. Duplicate titles get a ``.1``, ``.2`` suffix.
        """
        import pandas as pd  # late import: writers and simulations never pay for pandas

        seen: dict[str, int] = {}
        names = []
        for t in self.titles:
            k = seen.get(t, 0)
            seen[t] = k + 1
            names.append(t if k == 0 else f"{t}.{k}")
        cols = {}
        for j, name in enumerate(names):
            col = self.data[:, j]
            if col.dtype == object and all(isinstance(v, float) for v in col.tolist()):
                col = col.astype(np.float64)
            cols[name] = col
        return pd.DataFrame(cols, columns=names)

    def plot(self, ax: Any = None, columns: Sequence[Union[int, str]] | None = None) -> Any:
        """Draw the traces against time with matplotlib (the ``plot`` extra).

        Time (see :attr:`time_column`) is on x with its unit (see
        :attr:`time_unit`; none shown where it is unknown), or the sample
        index where there is no time column.  Each signal gets its own axes,
        stacked and sharing x: a signal is a column's ATF ``Signals=`` name
        with its unit (an episodic file interleaves signal and sweep), or its
        unit alone, so traces of different units never share a y axis.  In
        each axes every trace is a line labelled with its title, and the
        k-th trace (the k-th sweep) has the same colour in every axes.  Long
        traces are drawn through a min/max envelope per pixel column, so
        spikes stay visible; the data are not changed.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Draw into this axes (a second signal goes on a twin y axis;
            more are refused).  By default a new figure of pyplot.
        columns : sequence of int or str, optional
            The traces to draw, by index, name (every column of that name)
            or title; default every column but time.

        Returns
        -------
        matplotlib.axes.Axes or numpy.ndarray of Axes
            The axes, when one holds every trace; else an array of them,
            one per signal from top to bottom (with *ax*: ``[ax, twin]``).

        Raises
        ------
        ImportError
            If matplotlib is not installed (``pip install "sim-datamanager[plot]"``).
        TypeError
            If a trace holds text (a Clampfit result sheet is a table).
        KeyError
            If *columns* names no column.
        ValueError
            If *columns* picks the time column or nothing, or *ax* is given
            for more than two signals.
        """
        from .plot import plot_recording  # late import: matplotlib only when drawing

        return plot_recording(self, ax, columns)

    def _repr_html_(self) -> str:
        """A short HTML summary for notebooks: columns, units, length, source."""
        from .._html import recording_html

        return recording_html(self)

    # -- protocol ----------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        # Builtins and numpy arrays only: what register_safe_type requires
        # for the safe unpickler to rebuild this class.
        return (
            Recording,
            (
                self.data,
                list(self.columns),
                list(self.units),
                dict(self.header),
                self.label,
                self.path,
                self.layout,
                dict(self.attrs),
            ),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recording):
            return NotImplemented
        return (
            self.columns == other.columns
            and self.units == other.units
            and self.header == other.header
            and self.label == other.label
            and self.path == other.path
            and self.layout == other.layout
            and self.attrs == other.attrs
            and same_array(self.data, other.data)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        rows, cols = self.shape
        titles = self.titles
        shown = ", ".join(repr(t) for t in titles[:4]) + (", ..." if cols > 4 else "")
        where = f" from {self.path!r}" if self.path else ""
        label = f" label={self.label!r}" if self.label is not None else ""
        return (
            f"<Recording {self.layout or 'table'}{label} {rows} rows x {cols} columns "
            f"[{shown}]{where}>"
        )
