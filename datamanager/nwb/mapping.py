"""How a :class:`~datamanager.Recording` maps onto NWB, decided without pynwb.

Units to SI with a conversion factor, which column holds the times, whether
they are evenly spaced, which sweep and signal each column of a Clampex
export belongs to, and whether the file says current or voltage clamp.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from typing import Any, Mapping, Sequence

import numpy as np

from ..recordings.recording import Recording

__all__ = ["Column", "Plan", "plan_recording", "si_unit", "start_time", "uniform_rate"]

# SI prefixes as instruments and NEURON write them (both micro signs, and "u").
_PREFIX = {
    "": 1.0,
    "G": 1e9,
    "M": 1e6,
    "k": 1e3,
    "m": 1e-3,
    "u": 1e-6,
    "\u00b5": 1e-6,
    "\u03bc": 1e-6,
    "n": 1e-9,
    "p": 1e-12,
    "f": 1e-15,
}
# NWB names SI units in words ("volts"); longest symbols first so "Hz" is not "z".
_BASE = {
    "Ohm": "ohms",
    "ohm": "ohms",
    "Hz": "hertz",
    "\u03a9": "ohms",
    "V": "volts",
    "A": "amperes",
    "s": "seconds",
    "S": "siemens",
    "F": "farads",
}
_MINUTES_HOURS = {"min": 60.0, "h": 3600.0}
_SWEEP = re.compile(r"Trace #(\d+)$")
# A Clampex/Clampfit trace export names its signals; only these say a clamp mode.
_TRACE_KEYS = ("Signals", "SignalsExported")
# Evenly spaced within this fraction of a sample interval: the rounding of
# times written as decimal text, far below any real jitter of a clock.
UNIFORM_TOLERANCE = 1e-9


def si_unit(unit: str | None) -> tuple[str, float] | None:
    """``(NWB unit, conversion to it)`` for a unit symbol, None if unknown.

    >>> si_unit("pA"), si_unit("mV"), si_unit("ms"), si_unit("MOhm")
    (('amperes', 1e-12), ('volts', 0.001), ('seconds', 0.001), ('ohms', 1000000.0))
    >>> si_unit("mmHg") is None, si_unit(None) is None
    (True, True)
    """
    if unit is None:
        return None
    unit = unit.strip()
    if unit in _MINUTES_HOURS:  # times the plot and the time column accept too
        return "seconds", _MINUTES_HOURS[unit]
    for symbol, name in _BASE.items():
        if unit.endswith(symbol) and unit[: len(unit) - len(symbol)] in _PREFIX:
            return name, _PREFIX[unit[: len(unit) - len(symbol)]]
    return None


def uniform_rate(times: np.ndarray) -> float | None:
    """The sampling rate if *times* (seconds) are evenly spaced, else None.

    Evenly spaced means every time lies within ``UNIFORM_TOLERANCE`` of a
    sample interval of the line from the first to the last time.

    >>> uniform_rate(np.array([0.0, 0.5, 1.0])), uniform_rate(np.array([0.0, 0.5, 1.5]))
    (2.0, None)
    """
    n = len(times)
    if n < 2 or not np.all(np.isfinite(times)):
        return None
    step = (float(times[-1]) - float(times[0])) / (n - 1)
    if not step > 0:
        return None
    grid = float(times[0]) + np.arange(n) * step
    if float(np.max(np.abs(grid - times))) > UNIFORM_TOLERANCE * step:
        return None
    return 1.0 / step


@dataclasses.dataclass
class Column:
    """One trace column and where it goes.

    ``role`` is ``"response"`` (the clamp's recorded signal), ``"stimulus"``
    (the command it applies) or ``"series"`` (a plain TimeSeries).
    """

    index: int
    title: str
    unit: str | None
    si: tuple[str, float] | None
    role: str = "series"
    signal: str | None = None
    sweep: int | None = None
    offset: float = 0.0  # seconds added to the time column (the sweep's start)


@dataclasses.dataclass
class Plan:
    """How one recording is written: a table, or a time column and trace columns."""

    time_index: int | None
    time_scale: float  # seconds per unit of the time column
    time_unit: str | None
    columns: list[Column]
    clamp: str | None  # "current clamp", "voltage clamp" or None


def _column_units(
    rec: Recording, units: Mapping[str, str] | Sequence[str | None] | None
) -> list[str | None]:
    """The units stated by the file, completed (never overridden) by the caller's."""
    given: list[str | None] = list(rec.units)
    if units is None:
        return given
    if isinstance(units, Mapping):
        for j, (name, title) in enumerate(zip(rec.columns, rec.titles)):
            if given[j] is None:
                given[j] = units.get(name, units.get(title))
        return given
    units = list(units)
    if len(units) != len(given):
        raise ValueError(
            f"units= gives {len(units)} units for the {len(given)} columns of {rec.path or rec}"
        )
    return [g if g is not None else u for g, u in zip(given, units)]


def _sweep_starts(header: Mapping[str, Any]) -> list[float]:
    text = header.get("SweepStartTimesMS")
    if not isinstance(text, str):
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        return []


def plan_recording(
    rec: Recording,
    time_unit: str | None = None,
    units: Mapping[str, str] | Sequence[str | None] | None = None,
) -> Plan:
    """Decide the time column, the units and the NWB type of every column.

    Parameters
    ----------
    rec : Recording
    time_unit : str, optional
        The unit of the time column where the file names none; by default
        :attr:`Recording.time_unit <datamanager.Recording.time_unit>`
        (``"ms"`` for NEURON files).
    units : mapping or sequence, optional
        Units of columns the file gives none for, by column name or title,
        or one per column (None to keep the file's).

    Raises
    ------
    ValueError
        If ``time_unit`` is not a unit of time, or none is given where the
        time column's unit is unknown.
    """
    col_units = _column_units(rec, units)
    si = [si_unit(u) for u in col_units]
    time_index: int | None = None
    scale, t_unit = 1.0, None
    if rec.time_column is not None:  # the rule Recording.plot follows too
        t_unit = col_units[0] or time_unit or rec.time_unit
        if t_unit is None:
            # Guessing would silently scale every time by 1000 if wrong.
            raise ValueError(
                f"{rec.path or rec!r}: the time column {rec.columns[0]!r} names no unit: "
                "pass time_unit= (--time-unit on the command line)"
            )
        t_si = si_unit(t_unit)
        if t_si is None or t_si[0] != "seconds":
            raise ValueError(f"time_unit must be a unit of time (s, ms, ...), not {t_unit!r}")
        time_index, scale = 0, t_si[1]
    if time_index is None:
        return Plan(None, 1.0, None, [], None)
    signals = rec.header.get("Signals")
    ntrace = rec.shape[1] - 1
    if not (isinstance(signals, list) and signals and ntrace % len(signals) == 0):
        signals = None
    starts = _sweep_starts(rec.header)
    columns = []
    for j in range(1, rec.shape[1]):
        m = _SWEEP.match(rec.columns[j]) if rec.layout == "atf" else None
        sweep = int(m.group(1)) if m else None
        offset = 0.0
        if sweep is not None and 1 <= sweep <= len(starts):
            # The time column holds the first sweep's times; a later sweep
            # started this much later (its start minus the first's).
            offset = (starts[sweep - 1] - starts[0]) / 1000.0
        columns.append(
            Column(
                j,
                rec.titles[j] if rec.units[j] is not None else rec.columns[j],
                col_units[j],
                si[j],
                # Columns cycle through the signals, sweep after sweep.
                signal=signals[(j - 1) % len(signals)] if signals else None,
                sweep=sweep,
                offset=offset,
            )
        )
    clamp = _assign_clamp(rec, columns)
    return Plan(time_index, scale, t_unit, columns, clamp)


def _assign_clamp(rec: Recording, columns: list[Column]) -> str | None:
    """Current or voltage clamp from the first recorded signal's unit, roles set.

    A recorded current means the amplifier clamped the voltage, a recorded
    voltage that it clamped (injected) the current. Only a Clampex/Clampfit
    trace export says which signal was recorded, so only it gets one.
    """
    if rec.layout != "atf" or not any(k in rec.header for k in _TRACE_KEYS):
        return None
    first = columns[0]
    quantity = first.si[0] if first.si else None
    if quantity == "amperes":
        clamp, command = "voltage clamp", "volts"
    elif quantity == "volts":
        clamp, command = "current clamp", "amperes"
    else:
        return None
    for col in columns:
        same = col.signal == first.signal if first.signal is not None else True
        kind = col.si[0] if col.si else None
        if same and kind == quantity:
            col.role = "response"
        elif kind == command:
            col.role = "stimulus"
    return clamp


def start_time(rec: Recording) -> datetime.datetime | None:
    """The start the file records (a ``DateTime`` header record), else None.

    The record is ISO 8601 (``2019-05-02T10:31:07``, a space for the ``T``,
    an optional UTC offset or ``Z``).

    Raises
    ------
    ValueError
        If the record is there but is not such a date and time.
    """
    for key, value in rec.header.items():
        if key.replace(" ", "").lower() != "datetime" or not isinstance(value, str):
            continue
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            return datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{rec.path or 'the recording'}: header record {key}={value!r} is not an "
                "ISO 8601 date and time"
            ) from None
    return None
