"""Write recordings as one Neurodata Without Borders (NWB) file.

:mod:`datamanager.nwb.mapping` decides what each column is; this module
builds the pynwb objects and publishes the file atomically. pynwb is
imported inside :func:`export_nwb`: ``import datamanager`` stays cheap.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
import warnings
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from .._publish import publishing, target
from ..recordings.recording import Recording
from .mapping import Plan, plan_recording, start_time, uniform_rate

__all__ = ["export_nwb"]

PathLike = Union[str, "os.PathLike[str]"]
Units = Union[Mapping[str, str], Sequence[Union[str, None]], None]

_RESPONSE = {"voltage clamp": "VoltageClampSeries", "current clamp": "CurrentClampSeries"}
_STIMULUS = {
    "voltage clamp": "VoltageClampStimulusSeries",
    "current clamp": "CurrentClampStimulusSeries",
}


def _import_pynwb() -> Any:
    try:
        import pynwb
    except ImportError as exc:
        raise ImportError(
            "export_nwb needs pynwb: install the nwb extra, pip install 'sim-datamanager[nwb]'"
        ) from exc
    return pynwb


def _version() -> str:
    from .. import __version__  # the package imports this module: read at call time

    return __version__


def _sources(recordings: Any, keys: Any) -> list[tuple[str, Recording]]:
    """``(name, Recording)`` pairs from a Recording, a sequence or a DataManager."""
    if isinstance(recordings, Recording):
        found = [(None, recordings)]
    elif hasattr(recordings, "get_matching"):
        if isinstance(keys, (list, tuple, set, frozenset)):
            wanted = set(keys)
            keys = wanted.__contains__
        matched = recordings.get_matching("" if keys is None else keys)
        found = []
        for key, values in matched.items():
            for session, value in values.items():
                if not isinstance(value, Recording):
                    raise TypeError(
                        f"key {key!r} of session {session!r} holds a {type(value).__name__}, "
                        "not a Recording: choose the keys of recordings with keys="
                    )
                found.append((key if len(values) == 1 else f"{key} ({session})", value))
    else:
        if keys is not None:
            raise TypeError("keys= selects recordings of a DataManager only")
        found = [(None, rec) for rec in recordings]
        for _, rec in found:
            if not isinstance(rec, Recording):
                raise TypeError(
                    "export_nwb exports Recordings (read files with load_recording), "
                    f"not {type(rec).__name__}"
                )
    if not found:
        raise ValueError("no recordings to export")
    named = []
    taken: set[str] = set()
    for name, rec in found:
        if name is None:
            # Blocks of one file are told apart as the importer's keys are.
            name = os.path.basename(rec.path) if rec.path else "recording"
            if "block" in rec.attrs:
                name += f"#{rec.attrs['block']}"
        named.append((_unique(name, taken), rec))
    return named


def _unique(name: str, taken: set[str]) -> str:
    # "/" separates HDF5 groups, so it cannot be part of a name.
    name = name.replace("/", "_").strip() or "column"
    out = name
    for n in itertools.count(2):
        if out not in taken:
            break
        out = f"{name} ({n})"
    taken.add(out)
    return out


def _sha256(rec: Recording) -> str | None:
    if rec.attrs.get("sha256"):
        return str(rec.attrs["sha256"])
    if rec.path and os.path.isfile(rec.path):
        h = hashlib.sha256()
        with open(rec.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    return None


def _data_digest(rec: Recording) -> str:
    """A sha256 of what a recording holds: its columns, units, shape and samples."""
    meta = [rec.columns, rec.units, list(rec.shape), rec.data.dtype.str]
    h = hashlib.sha256(json.dumps(meta).encode())
    if rec.data.dtype == object:
        # An object array's bytes are pointers: hash the values it holds.
        h.update(json.dumps(rec.data.tolist(), default=repr).encode())
    else:
        h.update(np.ascontiguousarray(rec.data).tobytes())
    return h.hexdigest()


def _aware(when: datetime.datetime) -> tuple[datetime.datetime, bool]:
    """The time with its zone; a naive one is taken as local time (True)."""
    if when.tzinfo is None or when.utcoffset() is None:
        return when.astimezone(), True
    return when, False


def _session_start(
    sources: list[tuple[str, Recording]], given: Union[datetime.datetime, str, None]
) -> tuple[datetime.datetime, list[float], str]:
    """The session start, each recording's offset from it in seconds, and where it came from."""
    if isinstance(given, str):
        given = datetime.datetime.fromisoformat(given)
    recorded = [start_time(rec) for _, rec in sources]
    found = [_aware(t) for t in recorded if t is not None]
    if found:
        start = min(t for t, _ in found)
        how = "the DateTime header record of the file"
        if any(naive for _, naive in found):
            how += " (no UTC offset: local time of the exporting machine)"
        if given is not None and _aware(given)[0] != start:
            raise ValueError(
                f"session_start_time={given.isoformat()} disagrees with the start the "
                f"recordings record ({start.isoformat()})"
            )
        offsets = [0.0 if t is None else (_aware(t)[0] - start).total_seconds() for t in recorded]
        return start, offsets, how
    if given is None:
        names = ", ".join(name for name, _ in sources[:3]) + (", ..." if len(sources) > 3 else "")
        raise ValueError(
            f"NWB needs a session start time and none is recorded in {names}: give "
            "session_start_time= (--start-time on the command line), best with its time zone"
        )
    start, naive = _aware(given)
    how = "session_start_time given" + (
        " (no UTC offset: local time of the exporting machine)" if naive else ""
    )
    return start, [0.0] * len(sources), how


def _describe(name: str, rec: Recording, plan: Plan, sha: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "file": os.path.basename(rec.path) if rec.path else None,
        "path": rec.path,
        "sha256": sha,
        "layout": rec.layout,
        "label": rec.label,
        "shape": list(rec.shape),
        "columns": rec.columns,
        "units": rec.units,
        "header": rec.header,
        "attrs": rec.attrs,
        "time_unit": plan.time_unit,
        "clamp": plan.clamp,
    }


def _table(name: str, rec: Recording, source: str) -> Any:
    """A table whose columns are not signals over time (result sheets, array lists)."""
    from hdmf.common import DynamicTable, VectorData

    taken = {"id"}
    columns = []
    for j, title in enumerate(rec.titles):
        cells = rec.data[:, j].tolist()
        if all(isinstance(c, float) for c in cells):
            values: Any = np.asarray(cells, dtype=np.float64)
        else:
            values = [str(c) for c in cells]
        what = f"column {j + 1} of {source}: {title!r}"
        columns.append(VectorData(name=_unique(title, taken), description=what, data=values))
    with warnings.catch_warnings():
        # A column called "name" or "description" is read as table["name"],
        # not as an attribute: hdmf says so once, and that is all it means.
        warnings.filterwarnings("ignore", "An attribute .* already exists", UserWarning)
        return DynamicTable(
            name=name,
            description=f"the table of {source} as read (not signals over time)",
            columns=columns,
        )


class _Writer:
    """Adds one recording's series to an NWBFile."""

    def __init__(self, pynwb: Any, nwbfile: Any, taken: set[str]) -> None:
        self.pynwb = pynwb
        self.nwbfile = nwbfile
        self.taken = taken

    def timing(self, times: np.ndarray, rate: float | None, offset: float, first: Any) -> dict:
        if rate is not None:
            return {"starting_time": float(times[0]) + offset, "rate": rate}
        if first is not None:  # share the timestamps of an earlier series
            return {"timestamps": first}
        return {"timestamps": times + offset}

    def add(
        self, name: str, prefix: str, rec: Recording, plan: Plan, shift: float, source: str
    ) -> None:
        icephys = self.pynwb.icephys
        assert plan.time_index is not None
        times = rec.data[:, plan.time_index].astype(np.float64) * plan.time_scale
        rate = uniform_rate(times)
        electrode = None
        if plan.clamp is not None:
            device = self.nwbfile.create_device(
                name=_unique(f"{prefix}amplifier", self.taken),
                description=f"the amplifier that recorded {source}",
            )
            electrode = self.nwbfile.create_icephys_electrode(
                name=_unique(f"{prefix}electrode", self.taken),
                description=f"the electrode of {source} ({plan.clamp})",
                device=device,
            )
        by_offset: dict[float, Any] = {}
        sweeps: dict[int, tuple[list[Any], list[Any]]] = {}
        for col in plan.columns:
            offset = col.offset + shift
            kwargs = self.timing(times, rate, offset, by_offset.get(offset))
            title = col.title if col.signal is None else f"{col.signal} {col.title}"
            kwargs.update(
                name=_unique(prefix + title, self.taken),
                data=np.ascontiguousarray(rec.data[:, col.index]),
                conversion=col.si[1] if col.si else 1.0,
                description=f"column {col.index + 1} ({col.title!r}) of {source}",
                comments=json.dumps(
                    {
                        "recording": name,
                        "column": col.index,
                        "unit": col.unit,
                        "signal": col.signal,
                        "sweep": col.sweep,
                    }
                ),
            )
            if col.role == "series":
                unit = col.si[0] if col.si else (col.unit or "unknown")
                series = self.pynwb.TimeSeries(unit=unit, **kwargs)
                self.nwbfile.add_acquisition(series)
            else:
                kinds = _RESPONSE if col.role == "response" else _STIMULUS
                kind = getattr(icephys, kinds[plan.clamp])
                if col.sweep is not None:
                    kwargs["sweep_number"] = np.uint32(col.sweep)  # the schema says uint32
                series = kind(electrode=electrode, **kwargs)
                if col.role == "response":
                    self.nwbfile.add_acquisition(series)
                else:
                    self.nwbfile.add_stimulus(series)
                pair = sweeps.setdefault(0 if col.sweep is None else col.sweep, ([], []))
                pair[col.role == "stimulus"].append(series)
            if "timestamps" in kwargs and offset not in by_offset:
                by_offset[offset] = series
        if electrode is not None:
            self.tables(electrode, sweeps, rec)

    def tables(self, electrode: Any, sweeps: dict, rec: Recording) -> None:
        """One row per stimulus/response pair, one simultaneous row per sweep."""
        simultaneous = []
        for sweep in sorted(sweeps):
            responses, stimuli = sweeps[sweep]
            rows = [
                self.nwbfile.add_intracellular_recording(
                    electrode=electrode, response=response, stimulus=stimulus
                )
                for response, stimulus in itertools.zip_longest(responses, stimuli)
            ]
            simultaneous.append(self.nwbfile.add_icephys_simultaneous_recording(recordings=rows))
        mode = rec.header.get("AcquisitionMode")
        self.nwbfile.add_icephys_sequential_recording(
            simultaneous_recordings=simultaneous,
            stimulus_type=mode if isinstance(mode, str) and mode else "unknown",
        )


def export_nwb(
    recordings: Any,
    path: PathLike,
    *,
    keys: Union[str, Sequence[str], Callable[[str], bool], None] = None,
    session_description: str | None = None,
    session_start_time: Union[datetime.datetime, str, None] = None,
    identifier: str | None = None,
    overwrite: bool = False,
    time_unit: str | None = None,
    units: Units = None,
    fsync: bool = False,
    nwbfile_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """Write recordings as one NWB file (all of them in the one file).

    Parameters
    ----------
    recordings : Recording, sequence of Recording, or DataManager
        What to export. A DataManager gives the recordings stored under
        ``keys`` (e.g. those :meth:`~datamanager.DataManager.import_recordings`
        stored): all of them go into this one file.
    path : str or os.PathLike
        The ``.nwb`` file. It appears only when complete.
    keys : str, sequence of str or callable, optional
        With a DataManager: a key prefix, the keys, or a test on a key
        (all keys by default; each must hold a Recording).
    session_description : str, optional
        Defaults to a sentence naming the source files.
    session_start_time : datetime or ISO 8601 str, optional
        Used when no recording records its start (an ATF ``DateTime``
        record); must agree with it where one does. A time without a UTC
        offset is taken as local time of this machine.
    identifier : str, optional
        Defaults to a hash of the sources' content (the sha256 of each source
        file, or of a recording's columns, units and data where it has none),
        their names and the start time, so the same export gives the same
        identifier and different data a different one.
    overwrite : bool
        Replace an existing file.
    time_unit : str, optional
        The unit of the time column of files that name none. By default
        ``"ms"`` for NEURON files (NEURON's unit); needed for any other
        recording whose time column has no unit.
    units : mapping or sequence, optional
        Units of columns whose file names none: ``{column name or title:
        unit}``, or one per column (None keeps the file's).
    fsync : bool
        Flush the file to the disk before moving it into place.
    nwbfile_kwargs : mapping, optional
        More arguments of :class:`pynwb.file.NWBFile` (``subject``,
        ``experimenter``, ``institution``, ...): what the source files do not
        say and an archive such as DANDI asks for.

    Returns
    -------
    str
        The absolute path written.

    Raises
    ------
    ImportError
        If pynwb (the ``nwb`` extra) is not installed.
    ValueError
        No session start time (or one that disagrees with the file's),
        a ``time_unit`` that is not a time, none where a time column's unit
        is unknown, or nothing to export.
    TypeError
        A key whose value is not a Recording.
    ExportError
        The target exists, its folder is missing or writing failed; nothing
        appears at ``path`` and an existing file is untouched.
    """
    path = target(path, overwrite)
    pynwb = _import_pynwb()
    nwbfile = _build(
        pynwb,
        _sources(recordings, keys),
        session_description,
        session_start_time,
        identifier,
        time_unit,
        units,
        dict(nwbfile_kwargs or {}),
    )
    with publishing(path, overwrite, fsync) as tmp:
        with warnings.catch_warnings():
            # The temporary name ends in .part, like every export's; the
            # published file has the name the caller chose.
            warnings.filterwarnings("ignore", "The file path provided", UserWarning)
            io = pynwb.NWBHDF5IO(tmp, "w")
        with io:
            io.write(nwbfile)
    return path


def _build(
    pynwb: Any,
    sources: list[tuple[str, Recording]],
    description: str | None,
    given_start: Union[datetime.datetime, str, None],
    identifier: str | None,
    time_unit: str | None,
    units: Units,
    more: dict[str, Any],
) -> Any:
    start, shifts, how = _session_start(sources, given_start)
    plans = [plan_recording(rec, time_unit, units) for _, rec in sources]
    shas = [_sha256(rec) for _, rec in sources]
    described = [_describe(n, r, p, s) for (n, r), p, s in zip(sources, plans, shas)]
    if identifier is None:
        # A recording made in memory has no file to hash: its data stand in,
        # so that different data never share an identifier.
        content = [sha or _data_digest(rec) for (_, rec), sha in zip(sources, shas)]
        seed = json.dumps([content, [d["name"] for d in described], start.isoformat()])
        identifier = "datamanager-" + hashlib.sha256(seed.encode()).hexdigest()[:32]
    files = sorted({d["file"] or d["name"] for d in described})
    notes = {
        "exported_by": f"datamanager {_version()} export_nwb",
        "session_start_time_from": how,
        "recordings": described,
    }
    nwbfile = pynwb.NWBFile(
        session_description=description or "recordings exported from " + ", ".join(files),
        identifier=identifier,
        session_start_time=start,
        notes=json.dumps(notes, default=str),
        source_script=f"datamanager {_version()} (datamanager.export_nwb)",
        source_script_file_name="datamanager",
        **more,
    )
    writer = _Writer(pynwb, nwbfile, set())
    several = len(sources) > 1
    for (name, rec), plan, shift in zip(sources, plans, shifts):
        prefix = f"{name} " if several else ""
        source = f"{rec.path or name}"
        if plan.time_index is None:
            table = _table(_unique(name, writer.taken), rec, source)
            nwbfile.add_acquisition(table)
        else:
            writer.add(name, prefix, rec, plan, shift, source)
    return nwbfile
