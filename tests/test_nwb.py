"""NWB export: every sample recording, values and times read back with pynwb, atomicity."""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import datamanager
from datamanager import DataManager, ExportError, Recording, export_nwb, load_recording, write_atf
from datamanager.cli import main

from conftest import ROOT, run_python

pynwb = pytest.importorskip("pynwb")

DATA = Path(__file__).resolve().parent / "data"
START = datetime.datetime(2020, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def read(path: Path, validate: bool = False):
    """The NWBFile in *path* and its schema validation errors (the IO stays open)."""
    io = pynwb.NWBHDF5IO(str(path), "r")
    return io, io.read(), pynwb.validate(io=io) if validate else None


def start_of(path: Path) -> datetime.datetime:
    """The session start time written in the file (read with h5py: quicker than pynwb)."""
    with h5py.File(path, "r") as f:
        return datetime.datetime.fromisoformat(f["session_start_time"][()].decode())


def times_of(series) -> np.ndarray:
    """The times of a series in seconds, as a reader of the file computes them."""
    if series.timestamps is not None:
        return np.asarray(series.timestamps[:])
    return series.starting_time + np.arange(series.data.shape[0]) / series.rate


def all_series(nwbfile) -> list:
    found = [*nwbfile.acquisition.values(), *nwbfile.stimulus.values()]
    return [s for s in found if isinstance(s, pynwb.TimeSeries)]


def neuron_layouts(folder: Path) -> list[Path]:
    """One small file of each NEURON layout the readers know."""
    files = {
        "clipboard.dat": "label:v(.5)\n3\n0\t-65\n0.025\t-64.5\n0.05\t-64\n",
        "graph.dat": "Graph addvar/addexpr lines\n1 3\nv(.5)\n0\t-65\n1\t-60\n2\t-55\n"
        "1 unlabeled lines\n2\n5\t6\n7\t8\n",
        "matrix.dat": "PolyLines\nx a b\n2 rows, 3 columns\n0\t1\t2\n1\t3\t4\n",
        "manifest.dat": "PolyLines\nLine Manifest:\n2  amp=0.1\nEnd of Line Manifest\n"
        "2  amp=0.1\n0\t1\n1\t2\n",
        "printf.dat": "1\n2.5\n3\n\n4\n5\n\n",
        "spikes.dat": "0.5 1\n1.25 0\n7 2\n",
    }
    paths = []
    for name, text in files.items():
        (folder / name).write_text(text)
        paths.append(folder / name)
    x = np.array([0.0, 0.5, 1.0, 2.0])
    blob = struct.pack("<ii", 4, 4) + x.tobytes() + struct.pack("<ii", 4, 4) + (x * 3).tobytes()
    (folder / "vwrite.bin").write_bytes(blob)
    return [*paths, folder / "vwrite.bin"]


def sample_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "atf").iterdir()) + sorted((shared_data / "neuron_dat").iterdir())


def test_every_sample_recording_exports_and_validates(shared_data: Path, tmp_path: Path):
    # All of them in one file: one validation covers every sample and layout.
    paths = sample_files(shared_data) + neuron_layouts(tmp_path)
    recordings = [rec for p in paths for rec in load_recording(p)]
    out = tmp_path / "all.nwb"
    assert export_nwb(recordings, out, session_start_time=START) == str(out)
    io, nwbfile, errors = read(out, validate=True)
    with io:
        assert errors == []
        notes = json.loads(nwbfile.notes)
        assert len(notes["recordings"]) == len(recordings)
        checked = set()
        for series in all_series(nwbfile):
            where = json.loads(series.comments)
            index = [r["name"] for r in notes["recordings"]].index(where["recording"])
            rec = recordings[index]
            column = rec.data[:, where["column"]]
            data = series.data[:]
            # As recorded, bit for bit; the conversion gives SI.
            assert data.tobytes() == column.tobytes()
            np.testing.assert_array_equal(data * series.conversion, column * series.conversion)
            scale = 1.0 if rec.layout == "atf" else 1e-3  # ATF says s; NEURON is ms
            expected = rec.data[:, 0] * scale + sweep_offset(rec, where["sweep"])
            if series.timestamps is not None:
                np.testing.assert_array_equal(times_of(series), expected)
            else:
                np.testing.assert_allclose(times_of(series), expected, rtol=1e-12, atol=1e-12)
            checked.add(index)
        tables = [t for t in nwbfile.acquisition.values() if not isinstance(t, pynwb.TimeSeries)]
    # Every recording is there: as series, or (no time column) as one table.
    assert len(checked) + len(tables) == len(recordings)
    assert {"arrayquality_heebo_hoc.gal", "marray_fish.gal"} <= {t.name for t in tables}


def ragged(column, row: int) -> list[int]:
    """The rows of a target table that row *row* of a ragged region column refers to."""
    ends = column.data[:].tolist()
    return column.target.data[ends[row - 1] if row else 0 : ends[row]].tolist()


def sweep_offset(rec: Recording, sweep: int | None) -> float:
    """Where sweep *sweep* starts after the first one, from the ATF header, in seconds."""
    text = rec.header.get("SweepStartTimesMS")
    if sweep is None or not isinstance(text, str):
        return 0.0
    starts = [float(v) for v in text.split(",")]
    return (starts[sweep - 1] - starts[0]) / 1000 if sweep <= len(starts) else 0.0


def test_units_types_and_conversions(tmp_path: Path):
    recs = [
        *load_recording(DATA / "pyabf_SSFINEST.atf"),
        *load_recording(DATA / "nrn_docs_iclamp.dat"),
        *load_recording(DATA / "pyabf_sine_sweep_magnitude_20.atf"),
    ]
    out = tmp_path / "u.nwb"
    export_nwb(recs, out, session_start_time=START)
    io, nwbfile, _ = read(out)
    with io:
        got = {name: s for name, s in nwbfile.acquisition.items()}
        vc = got["pyabf_SSFINEST.atf Signal 00 Trace #1 (pA)"]
        assert type(vc).__name__ == "VoltageClampSeries"
        assert (vc.unit, vc.conversion, vc.sweep_number) == ("amperes", 1e-12, 1)
        na = got["pyabf_SSFINEST.atf Signal 01 Trace #1 (nA)"]
        assert type(na) is pynwb.TimeSeries and (na.unit, na.conversion) == ("amperes", 1e-9)
        v = got["nrn_docs_iclamp.dat v(.5)"]
        # NEURON says no unit: kept as 'unknown' with no conversion; time in ms.
        assert type(v) is pynwb.TimeSeries and (v.unit, v.conversion) == ("unknown", 1.0)
        assert got["pyabf_sine_sweep_magnitude_20.atf IN 0 Trace #1"].unit == "unknown"
        # The file's times are not evenly spaced to the last digits (0.999999999999).
        assert vc.timestamps is not None and vc.rate is None
    # The caller's units and time unit; a unit the file states stays.
    units = {"v(.5)": "mV", "Trace #1": "mV"}
    export_nwb(recs[:2], out, session_start_time=START, overwrite=True, units=units)
    io, nwbfile, _ = read(out)
    with io:
        v = nwbfile.acquisition["nrn_docs_iclamp.dat v(.5)"]
        assert (v.unit, v.conversion) == ("volts", 1e-3)
        vc = nwbfile.acquisition["pyabf_SSFINEST.atf Signal 00 Trace #1 (pA)"]
        assert (vc.unit, vc.conversion) == ("amperes", 1e-12)
        t_ms = times_of(v)
    export_nwb(recs[1], out, session_start_time=START, overwrite=True, time_unit="s")
    io, nwbfile, _ = read(out)
    with io:
        np.testing.assert_allclose(times_of(nwbfile.acquisition["v(.5)"]), t_ms * 1e3, rtol=1e-12)
    with pytest.raises(ValueError, match="time_unit must be a unit of time"):
        export_nwb(recs[1], out, session_start_time=START, overwrite=True, time_unit="mV")
    with pytest.raises(ValueError, match="gives 1 units for the 2 columns"):
        export_nwb(recs[1], out, session_start_time=START, overwrite=True, units=["mV"])


def test_uniform_times_give_a_rate_others_timestamps(tmp_path: Path):
    even = Recording(np.array([[0.0, 1.0], [0.1, 2.0], [0.2, 3.0], [0.3, 4.0]]), ["t", "v"])
    data = even.data.copy()
    data[2, 0] = 0.2 + 1e-9  # one sample a nanosecond late
    uneven = Recording(data, ["t", "v"])
    out = tmp_path / "t.nwb"
    export_nwb(even, out, session_start_time=START, time_unit="s")
    io, nwbfile, _ = read(out)
    with io:
        v = nwbfile.acquisition["v"]
        assert v.timestamps is None and v.rate == pytest.approx(10.0, rel=1e-12)
        assert v.starting_time == 0.0
    export_nwb(uneven, out, session_start_time=START, time_unit="s", overwrite=True)
    io, nwbfile, _ = read(out)
    with io:
        v = nwbfile.acquisition["v"]
        assert v.rate is None
        np.testing.assert_array_equal(v.timestamps[:], data[:, 0])


def test_a_time_column_without_a_unit_is_ms_only_in_neuron_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    atf = tmp_path / "c.atf"
    data = np.array([[0.0, 1.0], [0.5, 2.0], [1.0, 3.0]])
    write_atf(atf, Recording(data, ["Time", "Trace #1"], [None, "pA"]))
    [unitless_atf] = load_recording(atf)
    in_memory = Recording(data, ["t", "v"], [None, "mV"])
    [neuron] = load_recording(DATA / "nrn_docs_iclamp.dat")
    out = tmp_path / "t.nwb"
    # Who knows the unit of an ATF "Time" or a made-up "t"? Not the export.
    with pytest.raises(ValueError, match=r"c\.atf'?: the time column 'Time' names no unit"):
        export_nwb(unitless_atf, out, session_start_time=START)
    with pytest.raises(ValueError, match=r"<Recording table .*'t' names no unit.*time_unit="):
        export_nwb(in_memory, out, session_start_time=START)
    assert not out.exists()
    for rec, name, time_unit, scale in [
        (unitless_atf, "Trace #1 (pA)", "s", 1.0),
        (in_memory, "v (mV)", "ms", 1e-3),
        (neuron, "v(.5)", None, 1e-3),  # NEURON's unit
        (neuron, "v(.5)", "s", 1.0),
    ]:
        export_nwb(rec, out, session_start_time=START, time_unit=time_unit, overwrite=True)
        io, nwbfile, _ = read(out)
        with io:
            got = times_of(nwbfile.acquisition[name])
            np.testing.assert_allclose(got, rec.data[:, 0] * scale, rtol=1e-12)
            unit = json.loads(nwbfile.notes)["recordings"][0]["time_unit"]
            assert unit == (time_unit or "ms")
    # The command line asks for --time-unit the same way.
    args = ["nwb", str(atf), "-o", str(out), "--start-time", START.isoformat(), "--overwrite"]
    assert main(args) == 1
    assert "names no unit: pass time_unit= (--time-unit" in capsys.readouterr().err
    assert main([*args, "--time-unit", "s"]) == 0


@pytest.mark.parametrize(
    "name, sweeps, step",
    [("pyabf_18702001-step.atf", 3, 1.0), ("pyabf_model_vc_ramp.atf", 50, 0.12)],
)
def test_episodic_sweeps_stay_distinguishable(tmp_path: Path, name: str, sweeps: int, step: float):
    [rec] = load_recording(DATA / name)
    out = tmp_path / "e.nwb"
    export_nwb(rec, out, session_start_time=START)
    io, nwbfile, _ = read(out)
    with io:
        responses = sorted(
            (s for s in nwbfile.acquisition.values() if type(s).__name__ == "VoltageClampSeries"),
            key=lambda s: s.sweep_number,
        )
        assert [s.sweep_number for s in responses] == list(range(1, sweeps + 1))
        # Each sweep at its start (SweepStartTimesMS), its own data column.
        starts = [s.starting_time for s in responses]
        np.testing.assert_allclose(starts, np.arange(sweeps) * step, atol=1e-9)
        for k, s in enumerate(responses, start=1):
            assert s.data[:].tobytes() == rec.column(rec.columns.index(f"Trace #{k}")).tobytes()
        responses = nwbfile.intracellular_recordings.category_tables["responses"]["response"]
        assert len(responses.data) == sweeps
        simultaneous = nwbfile.icephys_simultaneous_recordings["recordings"]
        sequential = nwbfile.icephys_sequential_recordings
        assert sequential["stimulus_type"].data[:].tolist() == ["Episodic Stimulation"]
        assert ragged(sequential["simultaneous_recordings"], 0) == list(range(sweeps))
        # Row k of the simultaneous table holds the response of sweep k + 1.
        for k in range(sweeps):
            [row] = ragged(simultaneous, k)
            assert responses[row].timeseries.sweep_number == k + 1
        if name.startswith("pyabf_18702001"):
            # IN 1 is in A, not a command voltage: a plain series beside the clamp.
            other = nwbfile.acquisition["IN 1 Trace #2 (A)"]
            assert type(other) is pynwb.TimeSeries and other.starting_time == pytest.approx(1.0)


def test_current_clamp_and_stimulus(tmp_path: Path):
    t = np.arange(5) * 1e-4
    rec = Recording(
        np.column_stack([t, -65 + t, t * 0 + 50, t * 0 + 2, -64 + t, t * 0 + 60, t * 0 + 3]),
        ["Time", "Trace #1", "Trace #1", "Trace #1", "Trace #2", "Trace #2", "Trace #2"],
        ["s", "mV", "pA", "mOhm", "mV", "pA", "mOhm"],
        {
            "AcquisitionMode": "Episodic Stimulation",
            "SweepStartTimesMS": "0.000,100.000",
            "Signals": ["Vm", "Icmd", "R"],
        },
        path=str(tmp_path / "cc.atf"),
        layout="atf",
    )
    out = tmp_path / "cc.nwb"
    export_nwb(rec, out, session_start_time=START)
    io, nwbfile, errors = read(out, validate=True)
    with io:
        assert errors == []
        vm = nwbfile.acquisition["Vm Trace #2 (mV)"]
        assert type(vm).__name__ == "CurrentClampSeries" and vm.conversion == 1e-3
        assert vm.starting_time == pytest.approx(0.1) and vm.sweep_number == 2
        cmd = nwbfile.stimulus["Icmd Trace #1 (pA)"]
        assert type(cmd).__name__ == "CurrentClampStimulusSeries"
        assert (cmd.unit, cmd.conversion) == ("amperes", 1e-12)
        r = nwbfile.acquisition["R Trace #1 (mOhm)"]
        assert (type(r), r.unit, r.conversion) == (pynwb.TimeSeries, "ohms", 1e-3)
        tables = nwbfile.intracellular_recordings.category_tables
        stimuli, responses = tables["stimuli"]["stimulus"], tables["responses"]["response"]
        pairs = {
            (stimuli[i].timeseries.name, responses[i].timeseries.name)
            for i in range(len(responses.data))
        }
        assert pairs == {
            ("Icmd Trace #1 (pA)", "Vm Trace #1 (mV)"),
            ("Icmd Trace #2 (pA)", "Vm Trace #2 (mV)"),
        }


def test_sheets_without_time_become_tables(shared_data: Path, tmp_path: Path):
    [rec] = load_recording(shared_data / "atf" / "ephysanalyzer_clampfit_results.atf")
    out = tmp_path / "r.nwb"
    export_nwb(rec, out, session_start_time=START)
    io, nwbfile, _ = read(out)
    with io:
        frame = nwbfile.acquisition["ephysanalyzer_clampfit_results.atf"].to_dataframe()
        assert frame.columns.tolist() == rec.titles
        assert frame["File Name"].tolist() == rec.column("File Name").tolist()
        np.testing.assert_array_equal(
            frame["R1S1 Peak Amp (pA)"].to_numpy(), rec.column("R1S1 Peak Amp").astype(float)
        )


def test_everything_the_source_said_is_in_the_notes(tmp_path: Path):
    [rec] = load_recording(DATA / "pyabf_18702001-step.atf")
    out = tmp_path / "n.nwb"
    export_nwb(rec, out, session_start_time=START)
    io, nwbfile, _ = read(out)
    with io:
        [described] = json.loads(nwbfile.notes)["recordings"]
        exported_by = json.loads(nwbfile.notes)["exported_by"]
        description = nwbfile.acquisition["IN 0 Trace #1 (pA)"].description
        assert nwbfile.source_script.startswith(f"datamanager {datamanager.__version__}")
    digest = hashlib.sha256((DATA / "pyabf_18702001-step.atf").read_bytes()).hexdigest()
    assert described["sha256"] == digest
    assert described["file"] == "pyabf_18702001-step.atf" and described["layout"] == "atf"
    assert described["header"] == rec.header
    assert described["clamp"] == "voltage clamp"
    assert exported_by == f"datamanager {datamanager.__version__} export_nwb"
    assert "pyabf_18702001-step.atf" in description and "'Trace #1 (pA)'" in description


def identifier_of(path: Path) -> str:
    with h5py.File(path, "r") as f:
        return f["identifier"][()].decode()


def test_default_identifier_tells_recordings_made_in_memory_apart(tmp_path: Path):
    def made(v: float, text: str = "a") -> list[Recording]:
        trace = Recording(np.array([[0.0, v], [0.1, v]]), ["t", "v"], ["ms", "mV"])
        sheet = Recording(np.array([[1.0, text]], dtype=object), ["n", "name"])
        return [trace, sheet]

    ids = []
    for n, recs in enumerate([made(-65.0), made(-65.0), made(12345.0), made(-65.0, "b")]):
        out = tmp_path / f"{n}.nwb"
        export_nwb(recs, out, session_start_time=START)
        ids.append(identifier_of(out))
    assert ids[0] == ids[1]  # the same data, exported twice
    assert len({ids[0], ids[2], ids[3]}) == 3  # a sample differs; a text cell differs
    assert all(i.startswith("datamanager-") for i in ids)


def crafted(tmp_path: Path, name: str, when: str | None) -> Recording:
    header = {"AcquisitionMode": "Gap Free", "Signals": ["IN 0"]}
    if when is not None:
        header["DateTime"] = when
    path = tmp_path / name
    data = np.array([[0.0, -10.5], [1e-4, -11.25]])
    write_atf(path, Recording(data, ["Time", "Trace #1"], ["s", "pA"], header))
    [rec] = load_recording(path)
    return rec


def test_session_start_time_from_file_caller_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    out = tmp_path / "s.nwb"
    a = crafted(tmp_path, "a.atf", "2019-05-02T10:31:07+02:00")
    export_nwb(a, out)
    tz = datetime.timezone(datetime.timedelta(hours=2))
    assert start_of(out) == datetime.datetime(2019, 5, 2, 10, 31, 7, tzinfo=tz)
    # A caller that agrees is fine; one that disagrees is refused.
    export_nwb(a, out, overwrite=True, session_start_time="2019-05-02T08:31:07+00:00")
    with pytest.raises(ValueError, match="disagrees"):
        export_nwb(a, out, overwrite=True, session_start_time=START)
    # No UTC offset: local time of this machine (a POSIX zone, no database needed).
    naive = crafted(tmp_path, "naive.atf", "2019-05-02 10:31:07")
    monkeypatch.setenv("TZ", "XYZ-05:30")
    time.tzset()
    try:
        export_nwb(naive, out, overwrite=True)
    finally:
        monkeypatch.undo()
        time.tzset()
    india = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    assert start_of(out) == datetime.datetime(2019, 5, 2, 10, 31, 7, tzinfo=india)
    io, nwbfile, _ = read(out)
    with io:
        said = json.loads(nwbfile.notes)["session_start_time_from"]
    assert said.endswith("(no UTC offset: local time of the exporting machine)")
    # Two files: the session starts with the first, the second's series later.
    b = crafted(tmp_path, "b.atf", "2019-05-02T08:31:37Z")
    export_nwb([b, a], out, overwrite=True)
    io, nwbfile, _ = read(out)
    with io:
        assert nwbfile.session_start_time == datetime.datetime(2019, 5, 2, 10, 31, 7, tzinfo=tz)
        assert nwbfile.acquisition["b.atf IN 0 Trace #1 (pA)"].starting_time == 30.0
        assert nwbfile.acquisition["a.atf IN 0 Trace #1 (pA)"].starting_time == 0.0
    # None in the file: the caller's, else a refusal that names the file.
    plain = crafted(tmp_path, "plain.atf", None)
    export_nwb(plain, out, overwrite=True, session_start_time=START)
    assert start_of(out) == START
    os.unlink(out)
    with pytest.raises(ValueError, match=r"none is recorded in plain\.atf"):
        export_nwb(plain, out)
    assert not [n for n in os.listdir(tmp_path) if n.endswith((".nwb", ".part"))]
    bad = crafted(tmp_path, "bad.atf", "yesterday")
    with pytest.raises(ValueError, match="DateTime='yesterday' is not an ISO 8601"):
        export_nwb(bad, out)


def test_recordings_of_a_data_directory(tmp_path: Path):
    folder = tmp_path / "cells"
    folder.mkdir()
    for name in ("bkchannels.atf", "iclamp.dat"):
        source = "nrn_docs_iclamp.dat" if name.endswith(".dat") else "pyabf_18702001-step.atf"
        (folder / name).write_bytes((DATA / source).read_bytes())
    dm = DataManager("cells", str(tmp_path))
    dm.import_recordings(folder)
    dm.session("other")["rate"] = [1.0]
    out = tmp_path / "dm.nwb"
    export_nwb(dm, out, keys=["bkchannels.atf", "iclamp.dat"], session_start_time=START)
    io, nwbfile, _ = read(out)
    with io:
        names = [r["name"] for r in json.loads(nwbfile.notes)["recordings"]]
        shas = [r["sha256"] for r in json.loads(nwbfile.notes)["recordings"]]
        assert "iclamp.dat v(.5)" in nwbfile.acquisition
    assert names == ["bkchannels.atf", "iclamp.dat"]
    assert shas[1] == hashlib.sha256((folder / "iclamp.dat").read_bytes()).hexdigest()
    with pytest.raises(TypeError, match="key 'rate' of session 'other' holds a list"):
        export_nwb(dm, tmp_path / "x.nwb", session_start_time=START)
    with pytest.raises(ValueError, match="no recordings"):
        export_nwb(dm, tmp_path / "x.nwb", keys="nothing/", session_start_time=START)
    with pytest.raises(TypeError, match="read files with load_recording"):
        export_nwb(str(folder / "iclamp.dat"), tmp_path / "x.nwb", session_start_time=START)
    assert not (tmp_path / "x.nwb").exists()


def test_existing_file_is_refused_and_kept(tmp_path: Path):
    rec = crafted(tmp_path, "a.atf", None)
    out = tmp_path / "x.nwb"
    out.write_bytes(b"precious")
    with pytest.raises(ExportError) as info:
        export_nwb(rec, out, session_start_time=START)
    assert info.value.errno == errno.EEXIST and out.read_bytes() == b"precious"
    export_nwb(rec, out, session_start_time=START, overwrite=True)
    assert start_of(out) == START
    assert sorted(os.listdir(tmp_path)) == ["a.atf", "x.nwb"]


def test_failure_mid_write_leaves_nothing(tmp_path: Path):
    # HDF5 cannot store a text cell with a NUL: h5py fails while writing the file.
    series = Recording(np.array([[0.0, 1.0], [1.0, 2.0]]), ["t", "v"])
    table = Recording(np.array([["a\x00b", 1.0]], dtype=object), ["name", "n"], layout="atf")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError):
        export_nwb([series, table], out / "x.nwb", session_start_time=START)
    assert os.listdir(out) == []


KILLED = """
import sys
import numpy as np
from datamanager import Recording, export_nwb
t = np.arange(1_000_000) * 1e-4
rec = Recording(np.column_stack([t, np.sin(t), np.cos(t)]), ["Time", "a", "b"], ["s", "mV", "mV"],
                layout="atf")
print("start", flush=True)
export_nwb(rec, sys.argv[1], session_start_time="2020-01-01T00:00:00+00:00", overwrite=True)
"""


def test_sigkill_mid_export_publishes_nothing(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "x.nwb"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(target)], stdout=subprocess.PIPE, env=ENV
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"start\n"
        # Killed as soon as the temporary file exists: well before 24 MB are written.
        while not os.listdir(out):
            assert proc.poll() is None, "the export ended before its file appeared"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    [left] = os.listdir(out)  # only the hidden temporary file, never the target
    assert left.startswith(".x.nwb.") and left.endswith(".part")


def test_missing_pynwb_names_the_extra(tmp_path: Path):
    code = (
        "import sys\nsys.modules['pynwb'] = None\n"
        "import numpy as np\nfrom datamanager import Recording, export_nwb\n"
        "rec = Recording(np.zeros((2, 2)), ['t', 'v'])\n"
        "try:\n    export_nwb(rec, sys.argv[1], session_start_time='2020-01-01T00:00:00+00:00')\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    proc = run_python(code, str(tmp_path / "x.nwb"), env=ENV)
    assert "needs pynwb" in proc.stdout and "pip install 'sim-datamanager[nwb]'" in proc.stdout
    assert os.listdir(tmp_path) == []


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "c.nwb"
    atf, dat = str(DATA / "pyabf_SSFINEST.atf"), str(DATA / "nrn_docs_gsyn.dat")
    assert main(["nwb", atf, "-o", str(out)]) == 1
    assert "Error: NWB needs a session start time" in capsys.readouterr().err
    args = ["nwb", atf, dat, "-o", str(out), "--start-time", START.isoformat()]
    args += ["--description", "two cells", "--unit", "ampakin[0].g=uS", "--time-unit", "ms"]
    assert main(args) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    io, nwbfile, _ = read(out)
    with io:
        assert nwbfile.session_description == "two cells"
        g = nwbfile.acquisition["nrn_docs_gsyn.dat ampakin[0].g"]
        assert (g.unit, g.conversion) == ("siemens", 1e-6)
    assert main(args) == 1
    assert "exists (use overwrite=True" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(["nwb", atf, "-o", str(out), "--unit", "novalue", "--overwrite"]) == 1
    assert "--unit takes COLUMN=UNIT" in capsys.readouterr().err


def test_cli_data_directory_in_a_subprocess(tmp_path: Path):
    folder = tmp_path / "cells"
    folder.mkdir()
    (folder / "gsyn.dat").write_bytes((DATA / "nrn_docs_gsyn.dat").read_bytes())
    (folder / "ring.dat").write_bytes((DATA / "nrn_test_ringtest_out.dat").read_bytes())
    datadir = tmp_path / "cells.data"
    assert main(["import", str(folder), str(datadir)]) == 0
    out = tmp_path / "d.nwb"
    command = [sys.executable, "-m", "datamanager", "nwb", str(datadir), "gsyn"]
    command += ["-o", str(out), "--start-time", "2020-01-01T00:00:00+00:00"]
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    io, nwbfile, _ = read(out)
    with io:
        assert [r["name"] for r in json.loads(nwbfile.notes)["recordings"]] == ["gsyn.dat"]


def test_nwbinspector_finds_nothing_critical_with_a_subject(tmp_path: Path):
    nwbinspector = pytest.importorskip("nwbinspector")
    from pynwb.file import Subject

    [rec] = load_recording(DATA / "pyabf_18702001-step.atf")
    out = tmp_path / "i.nwb"
    subject = Subject(subject_id="cell-1", species="Mus musculus", sex="U", age="P30D")
    export_nwb(rec, out, session_start_time=START, nwbfile_kwargs={"subject": subject})
    found = list(nwbinspector.inspect_nwbfile(nwbfile_path=str(out)))
    # (ERROR is nwbinspector failing in its own code, e.g. with a newer pandas.)
    critical = [m.message for m in found if m.importance.name == "CRITICAL"]
    assert critical == []
