"""Quick-look plots of recordings: Recording.plot and the plot command.

What is drawn is checked (lines, labels, data, colours), never pixels.
"""

from __future__ import annotations

import shutil
import struct
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from datamanager.cli import main
from datamanager.recordings import Recording, load_atf, load_recording, write_atf
from datamanager.recordings.plot import DPI

from conftest import run_python

with warnings.catch_warnings():
    # matplotlib 3.9 calls pyparsing names that pyparsing 3.3 deprecates, on import.
    warnings.filterwarnings("ignore", "'enablePackrat' deprecated", DeprecationWarning)
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

DATA = Path(__file__).parent / "data"
STEP = DATA / "pyabf_18702001-step.atf"  # episodic: IN 0 (pA) and IN 1 (A), 3 sweeps
RAMP = DATA / "pyabf_model_vc_ramp.atf"  # episodic: IN 0 (pA), 50 sweeps
ICLAMP = DATA / "nrn_docs_iclamp.dat"  # NEURON clipboard: x, v(.5); 8001 rows
RING = DATA / "nrn_test_ringtest_out.dat"  # NEURON columns: col1 (spike times), col2
SINE = DATA / "pyabf_sine_sweep_magnitude_20.atf"  # 100000 rows


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def one(path: Path) -> Recording:
    [rec] = load_recording(path)
    return rec


def line_labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def colours(ax) -> list[str]:
    return [to_hex(line.get_color()) for line in ax.get_lines()]


# -- what is drawn --------------------------------------------------------------


def test_episodic_file_gives_one_axes_per_signal_with_sweeps_coloured_alike():
    axes = one(STEP).plot()
    assert isinstance(axes, np.ndarray) and axes.shape == (2,)
    top, bottom = axes
    assert [top.get_ylabel(), bottom.get_ylabel()] == ["IN 0 (pA)", "IN 1 (A)"]
    assert bottom.get_xlabel() == "Time (s)"
    assert line_labels(top) == ["Trace #1 (pA)", "Trace #2 (pA)", "Trace #3 (pA)"]
    assert line_labels(bottom) == ["Trace #1 (A)", "Trace #2 (A)", "Trace #3 (A)"]
    assert len(set(colours(top))) == 3
    assert colours(top) == colours(bottom)  # sweep k has one colour in every axes
    assert [t.get_text() for t in top.get_legend().get_texts()] == line_labels(top)
    assert top.get_shared_x_axes().joined(top, bottom)


def test_units_never_share_a_y_axis_where_no_header_names_the_signals():
    rec = one(STEP)
    bare = Recording(rec.data, rec.columns, rec.units)  # no Signals= record
    top, bottom = bare.plot()
    assert [top.get_ylabel(), bottom.get_ylabel()] == ["pA", "A"]
    assert line_labels(bottom) == ["Trace #1 (A)", "Trace #2 (A)", "Trace #3 (A)"]


def test_many_sweeps_get_distinct_colours_and_a_legend_naming_first_and_last():
    ax = one(RAMP).plot()
    assert ax.get_ylabel() == "IN 0 (pA)"
    assert len(ax.get_lines()) == 50
    assert len(set(colours(ax))) == 50
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["Trace #1 (pA)", "Trace #50 (pA)"]


def test_short_recording_draws_the_time_column_as_recorded():
    rec = one(ICLAMP)
    short = Recording(rec.data[:300], rec.columns, rec.units, label=rec.label, layout=rec.layout)
    ax = short.plot()
    [line] = ax.get_lines()
    assert np.array_equal(line.get_xdata(), rec.data[:300, 0])
    assert np.array_equal(line.get_ydata(), rec.data[:300, 1])
    assert line.get_label() == "v(.5)"
    assert ax.get_xlabel() == "x (ms)"  # NEURON writes no unit; its time is in ms
    assert ax.get_ylabel() == "v(.5)"


def test_without_a_time_column_traces_are_drawn_against_sample_index():
    rng = np.random.default_rng(0)
    rec = Recording(rng.normal(size=(33, 2)), ["col1", "col2"])  # no unit, no file
    assert rec.time_column is None
    ax = rec.plot()
    assert ax.get_xlabel() == "sample index"
    assert line_labels(ax) == ["col1", "col2"]
    for j, line in enumerate(ax.get_lines()):
        assert np.array_equal(line.get_xdata(), np.arange(len(rec)))
        assert np.array_equal(line.get_ydata(), rec.data[:, j])


def test_time_column_is_recognised_by_unit_or_name():
    assert one(STEP).time_column == 0  # "Time (s)"
    assert one(ICLAMP).time_column == 0  # NEURON's "x"
    assert one(RING).time_column == 0  # a NEURON file's first column, whatever its name
    data = np.zeros((2, 2))
    assert Recording(data, ["t", "v"]).time_column == 0
    assert Recording(data, ["Stim", "v"], ["ms", "mV"]).time_column == 0
    assert Recording(data, ["v", "t"], ["mV", "ms"]).time_column is None
    assert Recording(data, ["x", "v"], ["mV", "mV"]).time_column is None


def test_time_axis_shows_the_unit_only_where_it_is_known(tmp_path: Path):
    data = np.array([[0.0, 1.0], [0.5, 2.0], [1.0, 3.0]])
    atf = tmp_path / "c.atf"
    write_atf(atf, Recording(data, ["Time", "Trace #1"], [None, "pA"]))
    cases = [
        (one(atf), None, "Time"),  # an ATF file's unitless time: unit unknown
        (Recording(data, ["t", "v"]), None, "t"),  # made in memory: unknown too
        (one(ICLAMP), "ms", "x (ms)"),  # NEURON writes no units; its time is in ms
        (Recording(data, ["Time", "v"], ["s", "mV"], layout="atf"), "s", "Time (s)"),
        (Recording(data, ["t", "v"], ["us", "mV"], layout="columns"), "us", "t (us)"),
    ]
    for rec, unit, label in cases:
        assert rec.time_column == 0
        assert rec.time_unit == unit
        assert rec.plot().get_xlabel() == label
    assert Recording(data, ["col1", "col2"]).time_unit is None  # no time column


def test_long_trace_is_decimated_for_drawing_only_keeping_every_spike():
    rec = one(SINE)
    y = rec.data[:, 1].copy()
    spikes = np.arange(500, len(y), 4999)  # one-sample spikes far apart, up and down
    y[spikes] = np.where(np.arange(len(spikes)) % 2, -50.0, 50.0) + np.arange(len(spikes))
    spiky = Recording(np.column_stack([rec.data[:, 0], y]), rec.columns, rec.units)
    before = spiky.data.copy()
    ax = spiky.plot()
    [line] = ax.get_lines()
    x, drawn = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    width = ax.get_window_extent().width
    assert len(drawn) <= 2 * width + 2 < len(y) / 10  # at most a minimum and a maximum per pixel
    assert set(y[spikes]) <= set(drawn.tolist())
    assert drawn.max() == y.max() and drawn.min() == y.min()
    assert np.all(np.diff(x) >= 0)  # drawn in time order, from the recorded times
    assert set(x.tolist()) <= set(spiky.data[:, 0].tolist())
    assert np.array_equal(spiky.data, before)  # the recording is unchanged
    assert spiky.data.shape == (len(y), 2)


def test_scattered_nan_blanks_no_pixel_column_and_a_long_nan_run_stays_a_gap():
    n = 200_000
    y = np.sin(np.arange(n) / 1000.0)
    y[::500] = np.nan  # a NaN in most pixel columns
    y[120_000:140_000] = np.nan  # a run many pixels wide
    y[50_001] = 5.0  # a spike beside a NaN
    rec = Recording(np.column_stack([np.arange(n, dtype=np.float64), y]), ["t", "v"], ["ms", "mV"])
    ax = rec.plot()
    [line] = ax.get_lines()
    x, drawn = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    buckets = int(ax.get_window_extent().width)
    size = -(-n // buckets)  # samples per pixel column
    assert len(drawn) <= 2 * buckets
    with_data = {
        k for k in range(-(-n // size)) if np.isfinite(y[k * size : (k + 1) * size]).any()
    }
    assert {int(t) // size for t in x[np.isfinite(drawn)]} == with_data
    # Each column draws its finite extremes; the spike is among them.
    for k in sorted(with_data)[::37]:
        shown = drawn[(x // size == k) & np.isfinite(drawn)]
        bucket = y[k * size : (k + 1) * size]
        assert (shown.min(), shown.max()) == (np.nanmin(bucket), np.nanmax(bucket))
    assert drawn[np.isfinite(drawn)].max() == 5.0
    inside = (x >= 120_000) & (x < 140_000)
    assert inside.any() and np.isnan(drawn[inside]).all()  # the run is a gap in the line


def test_given_axes_is_drawn_into_and_a_second_unit_gets_a_twin_axis():
    fig, ax = plt.subplots()
    assert one(ICLAMP).plot(ax=ax) is ax
    assert one(ICLAMP).plot(ax=ax) is ax
    assert len(ax.get_lines()) == 2  # drawn into, not replaced
    fig, ax = plt.subplots()
    first, twin = one(STEP).plot(ax=ax)
    assert first is ax and twin is not ax
    assert (ax.get_ylabel(), twin.get_ylabel()) == ("IN 0 (pA)", "IN 1 (A)")
    assert ax.get_shared_x_axes().joined(ax, twin)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="11 signals"):
        one(DATA / "pyabf_TRIPPLE.atf").plot(ax=plt.subplots()[1])


def test_columns_choose_traces_by_name_title_or_index():
    rec = one(STEP)
    top, bottom = rec.plot(columns=["Trace #2"])  # a name: that sweep of both signals
    assert line_labels(top) == ["Trace #2 (pA)"] and line_labels(bottom) == ["Trace #2 (A)"]
    ax = rec.plot(columns=["Trace #3 (A)", 1])
    assert isinstance(ax, np.ndarray) and [line_labels(a) for a in ax] == [
        ["Trace #3 (A)"],
        ["Trace #1 (pA)"],
    ]
    assert line_labels(rec.plot(columns=[5])) == ["Trace #3 (pA)"]
    with pytest.raises(KeyError, match="nope"):
        rec.plot(columns=["nope"])
    with pytest.raises(KeyError):
        rec.plot(columns=[7])
    with pytest.raises(ValueError, match="time axis"):
        rec.plot(columns=["Time"])


def test_text_columns_are_refused_with_their_names(tmp_path):
    table = Recording(
        np.array([["a.abf", 1.0, -3.5], ["b.abf", 2.0, -4.0]], dtype=object),
        ["File Name", "Trace", "Peak Amp"],
        [None, None, "pA"],
    )
    write_atf(tmp_path / "results.atf", table)
    rec = load_atf(tmp_path / "results.atf")
    with pytest.raises(TypeError, match="text columns 'File Name'"):
        rec.plot()
    ax = rec.plot(columns=["Peak Amp"])
    assert ax.get_xlabel() == "sample index"
    assert ax.get_lines()[0].get_ydata().tolist() == [-3.5, -4.0]


def test_clampfit_result_sheet_is_refused(shared_data):
    rec = load_atf(shared_data / "atf" / "ephysanalyzer_clampfit_results.atf")
    with pytest.raises(TypeError, match="'File Name', 'File Path'"):
        rec.plot()
    assert line_labels(rec.plot(columns=["R1S1 Peak Amp"])) == ["R1S1 Peak Amp (pA)"]


def test_without_matplotlib_plot_names_the_extra(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["matplotlib"] = None
        from datamanager.recordings import load_recording
        from datamanager.cli import main
        [rec] = load_recording({str(ICLAMP)!r})
        try:
            rec.plot()
        except ImportError as exc:
            assert "sim-datamanager[plot]" in str(exc), exc
        else:
            raise SystemExit("no ImportError")
        assert main(["plot", {str(ICLAMP)!r}, "-o", "never.png"]) == 1
        """
    )
    proc = run_python(code, cwd=str(tmp_path))
    assert "Error: plotting needs matplotlib" in proc.stderr


# -- the command line ---------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_cli_writes_a_png_of_the_expected_size(tmp_path, capsys):
    out = tmp_path / "step.png"
    assert main(["plot", str(STEP), "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}: 1 recording\n"
    width, height = png_size(out)
    assert (width, height) == (8 * DPI, round((0.8 + 2 * 2.2) * DPI))  # two signals
    assert matplotlib.image.imread(out).shape[:2] == (height, width)
    assert [p.name for p in tmp_path.iterdir()] == ["step.png"]  # no temporary file left


def test_cli_default_picture_is_the_stem_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(ICLAMP), "--columns", "1"]) == 0
    assert png_size(tmp_path / "nrn_docs_iclamp.png")[0] == 8 * DPI


def test_cli_refuses_to_draw_over_the_recording(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(STEP, tmp_path / "cell.png")  # found by content, whatever its name
    assert main(["plot", "cell.png"]) == 1
    assert "is the recording itself" in capsys.readouterr().err
    assert (tmp_path / "cell.png").read_bytes() == STEP.read_bytes()


def test_cli_draws_every_block_of_a_neuron_file_in_one_picture(shared_data, tmp_path):
    out = tmp_path / "blocks.png"
    path = shared_data / "neuron_dat" / "bfilt_challenge1.dat"
    assert main(["plot", str(path), "-o", str(out)]) == 0
    assert png_size(out) == (8 * DPI, 24 * DPI)  # ten blocks: as tall as a picture gets


def test_titles_with_dollars_are_drawn_as_written(tmp_path):
    rec = one(ICLAMP)
    odd = Recording(rec.data[:50], ["x", "I$_{Na$ (1$)"], label="$\\frac{$", layout=rec.layout)
    ax = odd.plot()
    assert ax.get_lines()[0].get_label() == "I\\$_{Na\\$ (1\\$)"  # not TeX
    ax.figure.canvas.draw()  # TeX this ill-formed would fail here
    write_atf(tmp_path / "odd.atf", odd)
    assert main(["plot", str(tmp_path / "odd.atf"), "-o", str(tmp_path / "odd.png")]) == 0


def test_cli_errors(tmp_path, capsys):
    assert main(["plot", str(STEP), "--columns", "nope", "-o", str(tmp_path / "x.png")]) == 1
    assert "no column 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
