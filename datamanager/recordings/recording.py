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
