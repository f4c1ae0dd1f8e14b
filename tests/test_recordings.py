"""Readers, writers and malformed input for NEURON .dat and Axon .atf.

Every sample file goes through one conformance check (``check_recording``)
and is compared with an independent parse written here with pandas/numpy.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datamanager import safepickle
from datamanager.errors import RecordingFormatError
from datamanager.recordings import (
    Recording,
    _text,
    load_atf,
    load_neuron_dat,
    load_recording,
    read_atf,
    read_neuron_dat,
    write_atf,
    write_neuron_dat,
)

from conftest import run_python

DATA = Path(__file__).resolve().parent / "data"

# name -> (rows, columns, header records, titles to check)
ATF_FILES = {
    "pyabf_18702001-step.atf": (20000, 7, 8, ["Time (s)", "Trace #1 (pA)", "Trace #1 (A)"]),
    "pyabf_model_vc_ramp.atf": (2400, 51, 8, ["Time (s)", "Trace #1 (pA)"]),
    "pyabf_sine_sweep_magnitude_20.atf": (100000, 2, 8, ["Time (s)", "Trace #1"]),
    "pyabf_SSFINEST.atf": (111001, 3, 7, ["Time (s)", "Trace #1 (pA)", "Trace #1 (nA)"]),
    "pyabf_TRIPPLE.atf": (30001, 34, 7, ["Time (s)", "Trace #1 (pA)", "Trace #1 (nA)"]),
    "sanpy_paramap_my.atf": (70411, 2, 7, ["Time (s)", "Trace #1 (mV)"]),
    "bkchannels_sample.atf": (10000, 2, 7, ["Time (s)", "Trace #1 (pA)"]),
    "ephysanalyzer_clampfit_results.atf": (100, 6, 0, ["File Name", "Trace", "Trace Start (ms)"]),
    "proenza_data.atf": (3, 5, 7, ["Time (s)", "Trace #1 (mV)"]),
    "proenza_example_gal.atf": (2, 5, 8, ["Block", "Column", "Row", "Name", "ID"]),
    "marray_fish.gal": (8448, 5, 19, ["Block", "Row", "Column", "ID", "Name"]),
    "arrayquality_heebo_hoc.gal": (44544, 5, 53, ["Block", "Column", "Row", "Name", "ID"]),
}
TEXT_COLUMNS = {
    "ephysanalyzer_clampfit_results.atf": [0, 5],
    "proenza_example_gal.atf": [3, 4],
    "marray_fish.gal": [3, 4],
    "arrayquality_heebo_hoc.gal": [3, 4],
}
# name -> (layout, [(rows, columns, label), ...] per block)
NEURON_FILES = {
    "nrn_docs_gsyn.dat": ("clipboard", [(801, 2, "ampakin[0].g")]),
    "nrn_docs_iclamp.dat": ("clipboard", [(8001, 2, "v(.5)")]),
    "nrntest_runfitter_hhap.dat": ("clipboard", [(201, 2, "v(.5)")]),
    "bfilt_challenge1.dat": ("graph-addvar", [(501, 2, "ch3[0].g")] + [(501, 2, None)] * 9),
    "nrn_test_ringtest_out.dat": ("columns", [(33, 2, None)]),
    "nrnhines82894_nrntest_spk.dat": ("columns", [(5065, 2, None)]),
    "modeldb267355_v.dat": ("columns", [(160, 2, None)]),
}


def sample(name: str, shared: Path | None) -> Path:
    """A sample file: from tests/data if copied there, else from ../shared/data."""
    if (DATA / name).exists():
        return DATA / name
    assert shared is not None
    for sub in ("atf", "neuron_dat"):
        if (shared / sub / name).exists():
            return shared / sub / name
    pytest.fail(f"sample {name} not found")


@pytest.fixture
def shared(request: pytest.FixtureRequest) -> Path | None:
    """../shared/data, but only requested for files not copied to tests/data."""
    name = request.node.callspec.params.get("name", "")
    if (DATA / name).exists():
        return None
    return request.getfixturevalue("shared_data")


def check_recording(rec: Recording) -> None:
    """What every reader must give, whatever the format."""
    assert isinstance(rec, Recording)
    assert rec.data.ndim == 2
    rows, cols = rec.shape
    assert len(rec) == rows
    assert len(rec.columns) == cols == len(rec.units) == len(rec.titles)
    assert rec.data.dtype in (np.float64, object)
    assert all(isinstance(c, str) for c in rec.columns)
    assert all(u is None or isinstance(u, str) for u in rec.units)
    for key, value in rec.header.items():
        assert isinstance(key, str)
        assert isinstance(value, str) or all(isinstance(v, str) for v in value)
    assert rec.path is not None and os.path.exists(rec.path)
    assert rec.layout
    # Pickles through the session's safe unpickler, to an equal value.
    blob = safepickle.dumps("k", rec)
    back = safepickle.loads(blob, safe=True, session="s", key="k")
    assert back == rec
    assert pickle.loads(pickle.dumps(rec)) == rec
    _, args = rec.__reduce__()
    for arg in args:
        assert arg is None or isinstance(arg, (str, list, dict, np.ndarray))
    assert repr(rec).startswith("<Recording ")
    frame = rec.to_dataframe()
    assert frame.shape == rec.shape


# -- sample files -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ATF_FILES))
def test_atf_samples(name: str, shared: Path | None) -> None:
    path = sample(name, shared)
    rows, cols, nrec, titles = ATF_FILES[name]
    rec = load_atf(path)
    check_recording(rec)
    assert rec.layout == "atf"
    assert rec.shape == (rows, cols)
    assert len(rec.header) == nrec
    assert rec.titles[: len(titles)] == titles
    # Independent parse: pandas on the lines after the header and the titles.
    expected = pd.read_csv(
        path,
        sep="\t",
        header=None,
        skiprows=nrec + 3,
        dtype=str,
        keep_default_na=False,
        quoting=3,
        skip_blank_lines=True,
    )
    # Rows with some text in a cell (column by column: a row-wise apply takes seconds).
    expected = expected[(expected.apply(lambda c: c.str.strip()) != "").any(axis=1)]
    assert expected.shape == (rows, cols)
    text = TEXT_COLUMNS.get(name, [])
    for j in range(cols):
        col = rec.data[:, j]
        if j in text:
            assert col.tolist() == expected[j].tolist()
        else:
            np.testing.assert_array_equal(
                col.astype(np.float64), expected[j].astype(np.float64).to_numpy()
            )
    if name in TEXT_COLUMNS:
        assert rec.data.dtype == object
        dtypes = frame_dtypes(rec)
        for j in range(cols):
            string = pd.api.types.is_string_dtype(dtypes[j])
            assert string == (j in TEXT_COLUMNS[name]), (j, dtypes[j])
    else:
        assert rec.data.dtype == np.float64


def frame_dtypes(rec: Recording) -> list[object]:
    return list(rec.to_dataframe().dtypes)


def test_atf_header_records(shared_data: Path) -> None:
    rec = load_atf(sample("pyabf_18702001-step.atf", shared_data))
    assert list(rec.header)[:3] == ["AcquisitionMode", "Comment", "YTop"]
    assert rec.header["AcquisitionMode"] == "Episodic Stimulation"
    assert rec.header["Comment"] == ""
    assert rec.header["YTop"] == "4000,10"
    assert rec.header["Signals"] == ["IN 0", "IN 1"] * 3
    assert rec.units == ["s", "pA", "A", "pA", "A", "pA", "A"]
    assert rec.columns[:3] == ["Time", "Trace #1", "Trace #1"]
    gal = load_atf(sample("arrayquality_heebo_hoc.gal", shared_data))
    assert gal.header["Type"] == "GenePix ArrayList V1.0"
    assert gal.header["Block1"] == " 400, 400, 100, 29, 151, 32, 131"
    # Tab-separated: the commas inside "Actin, beta" stay in the cell.
    assert "Actin, beta" in gal.data[:, 3].tolist()
    sanpy = load_atf(sample("sanpy_paramap_my.atf", shared_data))
    assert sanpy.data[0, 0] == 19.96976  # time need not start at 0
    assert sanpy.data[-1].tolist() == [21.37796, -49.17]  # no final EOL, nothing lost
    results = load_atf(sample("ephysanalyzer_clampfit_results.atf", shared_data))
    assert results.header == {}
    assert results.data[0, 5].endswith("WYO SNAP\\")
    assert results.units == [None, None, "ms", "pA", "mV", None]


@pytest.mark.parametrize("name", sorted(NEURON_FILES))
def test_neuron_samples(name: str, shared: Path | None) -> None:
    path = sample(name, shared)
    layout, blocks = NEURON_FILES[name]
    recs = load_neuron_dat(path)
    assert [(r.shape[0], r.shape[1], r.label) for r in recs] == blocks
    for rec in recs:
        check_recording(rec)
        assert rec.layout == layout
        assert rec.data.dtype == np.float64
    assert load_recording(path) == recs
    # Independent parse: numeric lines of the file, block by block.
    with open(path, "rb") as fh:
        lines = fh.read().decode().splitlines()
    if layout == "graph-addvar":
        lines = lines[2:]  # line 2 is "<nlines> <npts>"
    numeric = [ln.split() for ln in lines if len(ln.split()) == 2 and _all_numbers(ln)]
    stacked = np.vstack([r.data for r in recs])
    np.testing.assert_array_equal(stacked, np.array(numeric, dtype=np.float64))


def _all_numbers(line: str) -> bool:
    try:
        [float(x) for x in line.split()]
    except ValueError:
        return False
    return True


def test_brian_functions_match_brians_loadtxt(shared_data: Path) -> None:
    for name in ("nrn_docs_gsyn.dat", "nrn_docs_iclamp.dat", "nrntest_runfitter_hhap.dat"):
        path = sample(name, shared_data)
        with open(path) as f:
            f.readline(), f.readline()
            m = np.loadtxt(f)
        t, v = read_neuron_dat(path)
        np.testing.assert_array_equal(t, m[:, 0])
        np.testing.assert_array_equal(v, m[:, 1])
    for name in ("pyabf_18702001-step.atf", "bkchannels_sample.atf", "sanpy_paramap_my.atf"):
        path = sample(name, shared_data)
        with open(path) as f:
            f.readline()
            n = int(f.readline().split()[0])
            for _ in range(n + 1):
                f.readline()
            m = np.loadtxt(f)
        t, v = read_atf(path)
        np.testing.assert_array_equal(t, m[:, 0])
        np.testing.assert_array_equal(v, m[:, 1])


def test_brian_functions_refuse_text_or_single_column(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(RecordingFormatError, match="numbers in column 1"):
        read_atf(sample("ephysanalyzer_clampfit_results.atf", shared_data))
    one = tmp_path / "one.atf"
    one.write_text('ATF\t1.0\n0\t1\n"Time (s)"\n1\n2\n')
    with pytest.raises(RecordingFormatError, match="at least 2 columns"):
        read_atf(one)


def test_read_neuron_dat_returns_every_column_as_brian_14_did(tmp_path: Path) -> None:
    # Brian 1.4.3's brian/tools/io.py: skip two lines, return loadtxt(f).T.
    three = tmp_path / "three.dat"
    three.write_text("0\t1\t2\n1\t3\t4\n2\t5\t6\n")  # plain columns, no header
    t, x, y = read_neuron_dat(three)
    np.testing.assert_array_equal(t, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(x, [1.0, 3.0, 5.0])
    np.testing.assert_array_equal(y, [2.0, 4.0, 6.0])
    assert read_neuron_dat(three).shape == (3, 3)
    # Vector.printf: one column, a 1-D array; without header lines every row stays.
    one = tmp_path / "one.dat"
    one.write_text("1\n2\n3\n")
    values = read_neuron_dat(one)
    assert values.shape == (3,) and values.dtype == np.float64
    np.testing.assert_array_equal(values, [1.0, 2.0, 3.0])


# -- layouts written here by hand ---------------------------------------------------
def write(tmp_path: Path, content: bytes | str, name: str = "f.dat") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_clipboard_without_label_and_with_column_count(tmp_path: Path) -> None:
    [rec] = load_neuron_dat(write(tmp_path, "3\n0\t1\n1\t2\n2\t3\n"))
    assert rec.layout == "clipboard" and rec.label is None and rec.shape == (3, 2)
    [rec] = load_neuron_dat(write(tmp_path, "label:soma.v(0.5)\n2 2\n0 -65\n0.1 -64\n"))
    assert rec.label == "soma.v(0.5)" and rec.data.tolist() == [[0, -65], [0.1, -64]]


def test_graph_addvar_with_several_lines(tmp_path: Path) -> None:
    text = (
        "Graph addvar/addexpr lines\n2 3\nx v(.5) m_hh(.5)\n"
        "0\t-65\t0.05\n0.1\t-64\t0.06\n0.2\t-63\t0.07\n"
        "1 unlabeled lines\n2\n5\t6\n7\t8\n"
    )
    recs = load_neuron_dat(write(tmp_path, text))
    assert [r.columns for r in recs] == [["x", "v(.5)", "m_hh(.5)"], ["x", "y"]]
    assert recs[0].label == "v(.5) m_hh(.5)"
    assert recs[1].data.tolist() == [[5, 6], [7, 8]]


def test_polylines_matrix_and_manifest(tmp_path: Path) -> None:
    text = "PolyLines\nx a b\n2 rows, 3 columns\n0\t1\t2\n1\t3\t4\n"
    [rec] = load_neuron_dat(write(tmp_path, text))
    assert rec.layout == "polylines-matrix" and rec.columns == ["x", "a", "b"]
    assert rec.data.tolist() == [[0, 1, 2], [1, 3, 4]]
    text = (
        "PolyLines\nLine Manifest:\n2  amp=0.1\n1  amp=0.2\nEnd of Line Manifest\n"
        "2  amp=0.1\n0\t1\n1\t2\n1  amp=0.2\n0\t5\n"
    )
    recs = load_neuron_dat(write(tmp_path, text))
    assert [r.label for r in recs] == ["amp=0.1", "amp=0.2"]
    assert [r.layout for r in recs] == ["polylines-manifest"] * 2
    assert recs[1].data.tolist() == [[0, 5]]
    bad = text.replace("1  amp=0.2\n0\t5", "2  amp=0.2\n0\t5")
    with pytest.raises(RecordingFormatError, match="as in the manifest"):
        load_neuron_dat(write(tmp_path, bad))


def test_vector_printf_blocks(tmp_path: Path) -> None:
    recs = load_neuron_dat(write(tmp_path, "1\n2.5\n3\n\n4\n5\n\n"))
    assert [r.layout for r in recs] == ["vector-printf"] * 2
    assert [r.data[:, 0].tolist() for r in recs] == [[1, 2.5, 3], [4, 5]]
    [rec] = load_neuron_dat(write(tmp_path, "1\n2\n"))
    assert rec.layout == "columns"


@pytest.mark.parametrize("order", ["<", ">"])
def test_vwrite_all_types(tmp_path: Path, order: str) -> None:
    x = np.array([0.0, 0.5, 1.0, 2.0])
    blob = b""
    for code, kind in ((4, "f8"), (3, "f4"), (5, "i4")):
        blob += struct.pack(order + "ii", len(x), code) + x.astype(order + kind).tobytes()
    path = write(tmp_path, blob, "v.bin")
    [rec] = load_neuron_dat(path)
    assert rec.layout == "vwrite" and rec.shape == (4, 3)
    np.testing.assert_array_equal(rec.data, np.column_stack([x, x, x.astype(np.int32)]))
    # Scaled types, as Vector.vwrite computes them (ivocvect.cpp).
    lo, hi = x.min(), x.max()
    sf2, sf1 = 65535.0 / (hi - lo), 255.0 / (hi - lo)
    u2 = ((x - lo) * sf2).astype(np.uint16)
    i1 = (((x - lo) * sf1) - 128.0).astype(np.int8)
    blob = struct.pack(order + "iidd", 4, 2, sf2, lo) + u2.astype(order + "u2").tobytes()
    blob += struct.pack(order + "iidd", 3, 1, sf1, lo) + i1[:3].tobytes()
    recs = load_neuron_dat(write(tmp_path, blob, "s.dat"))
    assert [r.shape for r in recs] == [(4, 1), (3, 1)]
    np.testing.assert_allclose(recs[0].data[:, 0], x, atol=(hi - lo) / 65535)
    np.testing.assert_allclose(recs[1].data[:, 0], x[:3], atol=(hi - lo) / 255)
    with pytest.raises(RecordingFormatError, match="truncated"):
        load_neuron_dat(write(tmp_path, blob[:-1], "t.dat"))


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_atf_line_endings_and_separators(tmp_path: Path, eol: str) -> None:
    lines = ["ATF 1.0", "1\t2   ", '"Comment=x"', '"Time (s)"\t"V (mV)"', "0\t1", "1\t2"]
    rec = load_atf(write(tmp_path, eol.join(lines), "a.atf"))
    assert rec.data.tolist() == [[0, 1], [1, 2]] and rec.units == ["s", "mV"]
    comma = ["ATF\t1.0", "0\t2", '"Time (s)","V (mV)"', "0,1", "1,2", " ", ""]
    rec = load_atf(write(tmp_path, eol.join(comma), "c.atf"))
    assert rec.data.tolist() == [[0, 1], [1, 2]] and rec.attrs["separator"] == ","


# -- malformed input: one exception, naming the file, line and what was expected ------
MALFORMED = {
    "atf-empty": ("a.atf", b"", 1, "empty file"),
    "atf-signature": ("a.atf", b'ATX\t1.0\n0\t1\n"t"\n1\n', 1, "'ATF'"),
    "atf-version": ("a.atf", b'ATF\tx\n0\t1\n"t"\n1\n', 1, "version"),
    "atf-counts": ("a.atf", b'ATF\t1.0\n0\n"t"\n1\n', 2, "header records"),
    "atf-too-many-records": ("a.atf", b'ATF\t1.0\n2\t1\n"A=1"\n"t"\n1\n', 4, "Key=Value"),
    "atf-too-few-records": (
        "a.atf",
        b'ATF\t1.0\n0\t2\n"A=1"\n"t"\t"u"\n1\t2\n',
        3,
        "column titles",
    ),
    "atf-header-eof": ("a.atf", b'ATF\t1.0\n3\t2\n"A=1"\n', 4, "3 header records"),
    "atf-ragged": ("a.atf", b'ATF\t1.0\n0\t2\n"t"\t"v"\n1\t2\n3\n5\t6\n', 5, "2 fields"),
    "atf-too-many-fields": ("a.atf", b'ATF\t1.0\n0\t2\n"t"\t"v"\n1\t2\n3\t4\t5\n', 5, "2 fields"),
    "atf-text-in-trace": (
        "a.atf",
        b'ATF\t1.0\n1\t2\n"Signals="\t"IN 0"\n"t"\t"v"\n1\t2\n3\tx\n',
        6,
        "a number",
    ),
    "atf-text-in-unit-column": (
        "a.atf",
        b'ATF\t1.0\n0\t2\n"n"\t"v (mV)"\na\t2\nb\tq\n',
        5,
        "a number in column 2",
    ),
    # Windows-1252 is accepted (Clampfit writes "µ" so) but 0x81 is undefined there.
    "atf-undecodable": ("a.atf", b'ATF\t1.0\n0\t2\n"t"\t"v"\n1\t2\n3\t\x81\n', 5, "undecodable"),
    "atf-undecodable-trace": (
        "a.atf",
        b'ATF\t1.0\n1\t2\n"Signals="\t"IN 0"\n"t"\t"v"\n1\t2\n3\t\xff\n',
        6,
        "utf-8",
    ),
    "atf-binary": ("a.atf", b'ATF\t1.0\n0\t2\n"t"\t"v"\n1\t2\n3\x00\x01\t4\n', 5, "NUL"),
    "nrn-empty": ("n.dat", b"", 1, "empty file"),
    "nrn-truncated": ("n.dat", b"label:v\n4\n0\t1\n1\t2\n", 5, "4 data rows"),
    "nrn-extra-rows": ("n.dat", b"label:v\n1\n0\t1\n1\t2\n", 2, "1 data rows"),
    "nrn-no-count": ("n.dat", b"label:v\n0.5\t1\n", 2, "count line"),
    "nrn-ragged": ("n.dat", b"0\t1\n2\t3\n4\n6\t7\n", 3, "2 fields"),
    "nrn-non-numeric": ("n.dat", b"label:v\n2\n0\t1\n1\tabc\n", 4, "a number in column 2"),
    "nrn-not-a-layout": ("n.dat", b"hello world\n1 2\n", 1, "NEURON layout"),
    "nrn-binary": ("n.dat", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1, "utf-8 text"),
    "nrn-binary-nul": ("n.dat", b"0\t1\n2\t\x00\x01\x02\n", 2, "NUL"),
    "nrn-undecodable": ("n.dat", b"label:v\xe9\n1\n0\t1\n", 1, "undecodable"),
    "nrn-graph-truncated": ("n.dat", b"Graph addvar/addexpr lines\n1 3\nx v\n0\t1\n", 5, "3 rows"),
    "nrn-graph-eof": ("n.dat", b"Graph addvar/addexpr lines\n1 1\nx v\n0\t1\n", 5, "unlabeled"),
    "nrn-vwrite-truncated": ("n.bin", struct.pack("<ii", 10, 4) + b"\x00" * 16, None, "truncated"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_raise_one_clear_error(tmp_path: Path, case: str) -> None:
    name, content, lineno, text = MALFORMED[case]
    path = write(tmp_path, content, name)
    reader = load_atf if name.endswith(".atf") else load_neuron_dat
    with pytest.raises(RecordingFormatError) as info:
        reader(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == str(path) and str(path) in str(err)
    assert err.lineno == lineno, str(err)
    assert text in str(err)
    assert "expected" in str(err) and "found" in str(err)
    assert pickle.loads(pickle.dumps(err)).lineno == lineno


def test_load_recording_refuses_other_content(tmp_path: Path) -> None:
    with pytest.raises(RecordingFormatError, match="an ATF signature or a NEURON layout"):
        load_recording(write(tmp_path, b"%PDF-1.4\n", "x.atf"))


def test_detected_by_content_not_name(tmp_path: Path) -> None:
    atf = write(tmp_path, 'ATF\t1.0\n0\t2\n"t"\t"v"\n1\t2\n', "data.dat")
    [rec] = load_recording(atf)
    assert rec.layout == "atf"
    nrn = write(tmp_path, "label:v\n1\n0\t1\n", "trace.atf")
    [rec] = load_recording(nrn)
    assert rec.layout == "clipboard"


# -- Recording ------------------------------------------------------------------------
def test_recording_value_semantics() -> None:
    a = Recording(np.array([[0.0, np.nan]]), ["t", "v"], ["s", None], {"k": ["a", "b"]}, "lab")
    b = Recording(np.array([[0.0, np.nan]]), ["t", "v"], ["s", None], {"k": ["a", "b"]}, "lab")
    assert a == b and a != Recording(np.array([[0.0, 1.0]]), ["t", "v"], ["s", None])
    assert a.column("t (s)").tolist() == a.column(0).tolist() == [0.0]
    with pytest.raises(KeyError):
        a.column("nope")
    with pytest.raises(ValueError, match="2-D"):
        Recording(np.zeros(3), ["x"])
    with pytest.raises(ValueError, match="column names"):
        Recording(np.zeros((3, 2)), ["x"])
    text = Recording(np.array([["a", 1.0]], dtype=object), ["n", "v"])
    assert text == pickle.loads(pickle.dumps(text))
    assert "label='lab'" in repr(a)


def test_import_datamanager_does_not_import_pandas() -> None:
    code = (
        "import sys, datamanager, datamanager.recordings as r, numpy as np, tempfile, os\n"
        "p = os.path.join(tempfile.mkdtemp(), 'x.dat')\n"
        "r.write_neuron_dat(p, [0.0], [1.0]); r.write_atf(p + '.atf', np.zeros((1, 2)))\n"
        "assert 'pandas' not in sys.modules and 'h5py' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_writers_refuse_what_the_format_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="contains"):
        write_atf(tmp_path / "a.atf", np.zeros((1, 1)), columns=['a"b'])
    with pytest.raises(ValueError, match="line ending"):
        write_neuron_dat(tmp_path / "a.dat", [0.0], [1.0], label="a\nb")
    with pytest.raises(ValueError, match="two columns"):
        write_neuron_dat(tmp_path / "a.dat", np.zeros((2, 3)))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_large_file_reads_in_chunks_exactly(tmp_path: Path) -> None:
    # Larger than one parser chunk, with varying row lengths, so the estimate
    # of the row count is wrong both ways and the result must still be exact.
    rng = np.random.default_rng(3)
    data = np.column_stack([np.arange(600_000) * 0.1, rng.standard_normal(600_000) * 1e3])
    data[::7, 1] = 1.0
    path = tmp_path / "big.dat"
    write_neuron_dat(path, data, label="v")
    [rec] = load_neuron_dat(path)
    np.testing.assert_array_equal(rec.data, data)


@pytest.fixture
def blockwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse numeric bodies block by block on threads, in blocks of 4 KiB."""
    monkeypatch.setattr(_text, "BLOCKWISE_BYTES", 0)
    monkeypatch.setattr(_text, "BLOCK_BYTES", (4096, 4096))


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_blockwise_parse_matches_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, eol: str
) -> None:
    # Rows of varying length, NaN, and blank lines, so block edges fall
    # everywhere: inside CRLF pairs, on blank lines, mid-row.
    rng = np.random.default_rng(5)
    rows = [f"{i * 0.1!r}\t{x!r}" for i, x in enumerate(rng.standard_normal(20_000) * 1e3)]
    rows[7] = "0.7\tnan"
    for i in range(100, len(rows), 977):
        rows[i] += eol
    path = tmp_path / "t.atf"
    path.write_bytes(
        ("ATF\t1.0" + eol + "0\t2" + eol + '"t"\t"v"' + eol + eol.join(rows) + eol).encode()
    )
    whole = load_atf(path)
    monkeypatch.setattr(_text, "BLOCKWISE_BYTES", 0)
    monkeypatch.setattr(_text, "BLOCK_BYTES", (4096, 4096))
    blocks = load_atf(path)
    assert blocks.data.shape == (20_000, 2) and blocks.data.flags.c_contiguous
    np.testing.assert_array_equal(blocks.data, whole.data)


def test_blockwise_parse_reports_the_bad_line(tmp_path: Path, blockwise: None) -> None:
    data = np.column_stack([np.arange(30_000) * 0.5, np.arange(30_000) * -1.0])
    path = tmp_path / "v.dat"
    write_neuron_dat(path, data, label="v")
    lines = path.read_bytes().split(b"\n")
    lines[25_000] = b"1.0\t-7x"  # far beyond the first block
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(RecordingFormatError) as err:
        load_neuron_dat(path)
    assert err.value.lineno == 25_001 and "-7x" in str(err.value)
    lines[25_000] = b"1.0"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(RecordingFormatError, match="2 fields"):
        load_neuron_dat(path)


def test_blockwise_parse_refuses_a_file_that_shrank(tmp_path: Path, blockwise: None) -> None:
    # What a reader sees when the file is cut short after its blocks were
    # planned: bytes missing at the end of the range, never a shorter table.
    path = tmp_path / "v.dat"
    write_neuron_dat(path, np.ones((10_000, 2)), label="v")
    raw = path.read_bytes()
    start = raw.index(b"\n", raw.index(b"\n") + 1) + 1  # after label and count
    with open(path, "rb") as fh, pytest.raises(RecordingFormatError, match="shrank"):
        _text.parse_numeric(fh, str(path), start, len(raw) + 5000, 3, 2, "\t")


def test_nul_bytes_are_refused_whatever_the_pandas_version(tmp_path: Path) -> None:
    # pandas 3 refuses a NUL byte itself; pandas < 3 reads "3\x00\x01" as 3,
    # so there the reader scans the body for NUL bytes first (_has_nul).
    rows = b"".join(b"%d\t%d\n" % (i, -i) for i in range(200_000))
    for at in (5, (1 << 20) - 1, 1 << 20, len(rows) - 2):
        path = tmp_path / f"n{at}.dat"
        path.write_bytes(b"label:v\n200000\n" + rows[:at] + b"\x00" + rows[at + 1 :])
        with pytest.raises(RecordingFormatError, match="NUL"):
            load_neuron_dat(path)
    path.write_bytes(b"label:v\n200000\n" + rows)
    assert load_neuron_dat(path)[0].data.shape == (200_000, 2)
    # The scan itself, across its 1 MiB reads and only inside its range.
    path.write_bytes(b"\x00" + rows[: 1 << 20] + b"\x00" + rows[(1 << 20) + 1 :])
    with open(path, "rb") as fh:
        assert _text._has_nul(fh, 1, len(rows) + 1)
        assert not _text._has_nul(fh, 1, (1 << 20) + 1)
        assert _text._has_nul(fh, (1 << 20) + 1, (1 << 20) + 2)
        assert not _text._has_nul(fh, (1 << 20) + 2, len(rows) + 1)


_IN_CGROUP = r"""
import json, os, sys
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))  # move into the group before allocating much
from datamanager.recordings import _text
print(json.dumps([_text.free_memory(), _text._blockwise(100 << 20)]))
"""


def test_free_memory_is_capped_by_a_cgroup_limit() -> None:
    # A SLURM job or a container: the machine has gigabytes free, the
    # process's memory cgroup allows 256 MiB, so a 100 MiB body must be
    # read block-wise (one read_csv call would peak near 400 MiB).
    assert not _text._blockwise(100 << 20) and _text.free_memory() > 1 << 30
    v1 = os.path.isdir("/sys/fs/cgroup/memory")
    base = "/sys/fs/cgroup/memory" if v1 else "/sys/fs/cgroup"
    group = os.path.join(base, f"datamanager-test-{os.getpid()}")
    try:
        os.mkdir(group)
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here: {exc}")
    try:
        try:
            with open(
                os.path.join(group, "memory.limit_in_bytes" if v1 else "memory.max"), "w"
            ) as f:
                f.write(str(256 << 20))
        except OSError as exc:
            pytest.skip(f"cannot limit a memory cgroup here: {exc}")
        free, blockwise = json.loads(run_python(_IN_CGROUP, group).stdout)
        assert 0 < free <= 256 << 20 and blockwise
    finally:
        os.rmdir(group)


_PEAK_PROBE = r"""
import json, sys
from datamanager.recordings import _text, load_neuron_dat
def status(field):  # this process's own memory; ru_maxrss would count the parent's
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
load_neuron_dat(sys.argv[2])  # imports pandas' parser modules
_text.BLOCKWISE_BYTES = int(sys.argv[3])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak RSS := current RSS
before = status("VmRSS:")
data = load_neuron_dat(sys.argv[1])[0].data
print(json.dumps([(status("VmHWM:") - before) / data.nbytes, float(data[-1, 0])]))
"""


def test_blockwise_parse_peaks_under_twice_the_table(tmp_path: Path) -> None:
    # Measured in a fresh interpreter with real RSS. One read_csv call on the
    # same file peaks at about 3x; the readers promise at most 2x.
    n = 2_000_000
    data = np.column_stack([np.arange(n) * 0.025, np.round(np.sin(np.arange(n)), 4)])
    path, small = tmp_path / "big.dat", tmp_path / "small.dat"
    write_neuron_dat(path, data, label="v")
    write_neuron_dat(small, data[:10], label="v")
    out = run_python(_PEAK_PROBE, str(path), str(small), "0")
    growth, last = json.loads(out.stdout)
    assert last == data[-1, 0]
    assert growth <= 2.0, f"block-wise read peaked at {growth:.2f}x the table"
