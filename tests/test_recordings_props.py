"""Property tests of the recording writers and readers, and a fuzz test.

Round trips: whatever the writers produce reads back the same. Fuzz: random
and mutated files give a correct parse or RecordingFormatError, nothing else.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamanager.errors import RecordingFormatError
from datamanager.recordings import (
    Recording,
    load_atf,
    load_neuron_dat,
    load_recording,
    write_atf,
    write_neuron_dat,
)

DATA = Path(__file__).resolve().parent / "data"
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
names = st.text(
    st.characters(
        blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters='"()\t\r\n\x85'
    ),
    max_size=12,
)
units = st.one_of(
    st.none(), st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=4)
)
keys = st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=10)
values = st.one_of(
    st.text(
        st.characters(
            blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters='"\t\r\n\x85'
        ),
        max_size=20,
    ),
    st.lists(
        st.text(st.characters(whitelist_categories=("L", "N", "Zs")), max_size=8),
        min_size=1,
        max_size=4,
    ).filter(lambda v: v[0] != ""),
)


def _tmp() -> str:
    return os.path.join(tempfile.mkdtemp(), "x")


@st.composite
def tables(draw: st.DrawFn) -> Recording:
    ncols = draw(st.integers(1, 5))
    nrows = draw(st.integers(0, 30))
    data = draw(
        st.lists(st.lists(floats, min_size=ncols, max_size=ncols), min_size=nrows, max_size=nrows)
    )
    arr = np.array(data, dtype=np.float64).reshape(nrows, ncols)
    cols = draw(st.lists(names, min_size=ncols, max_size=ncols))
    header = draw(st.dictionaries(keys, values, max_size=5))
    return Recording(arr, cols, draw(st.lists(units, min_size=ncols, max_size=ncols)), header)


def _name_ok(rec: Recording) -> bool:
    # A title is "name (unit)"; a bare name that ends in spaces would lose
    # them to the reader's strip of the title field, as Clampfit's would.
    return all(t == t.strip() for t in rec.titles)


@SETTINGS
@given(rec=tables())
def test_atf_round_trip(rec: Recording) -> None:
    if not _name_ok(rec):
        return
    path = _tmp() + ".atf"
    write_atf(path, rec)
    back = load_atf(path)
    assert back.columns == rec.columns and back.units == rec.units
    assert back.header == rec.header
    np.testing.assert_array_equal(back.data, rec.data)


@SETTINGS
@given(
    x=st.lists(floats, max_size=50),
    label=st.one_of(
        st.none(),
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"), max_size=15
        ),
    ),
)
def test_neuron_round_trip(x: list[float], label: str | None) -> None:
    t = np.arange(len(x)) * 0.025
    path = _tmp() + ".dat"
    write_neuron_dat(path, t, x, label=label)
    [rec] = load_neuron_dat(path)
    assert rec.layout == "clipboard" and rec.label == label
    np.testing.assert_array_equal(
        rec.data, np.column_stack([t, np.array(x, dtype=float)]).reshape(len(x), 2)
    )
    assert load_recording(path) == [rec]


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(
            floats,
            st.text("ab ,", max_size=5).filter(
                lambda s: s.strip() != "" and not s.startswith(" ")
            ),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_atf_text_columns_round_trip(rows: list[tuple[float, str]]) -> None:
    data = np.array([[v, s] for v, s in rows], dtype=object)
    path = _tmp() + ".atf"
    write_atf(path, data, columns=["Value (mV)", "Name"])
    back = load_atf(path)
    assert back.data[:, 1].tolist() == [
        s.rstrip() if i == len(rows) - 1 else s for i, (_, s) in enumerate(rows)
    ]
    np.testing.assert_array_equal(back.data[:, 0].astype(float), data[:, 0].astype(float))


SEEDS = sorted(p for p in DATA.iterdir() if p.suffix in (".atf", ".dat"))


def _seed_bytes(name: str, limit: int = 1500) -> bytes:
    with open(DATA / name, "rb") as fh:
        return fh.read(limit)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    seed = _seed_bytes(draw(st.sampled_from([p.name for p in SEEDS])))
    # Cut at a line end so the seed itself is a valid (shorter) file.
    cut = seed.rfind(b"\n")
    base = bytearray(seed[: cut + 1])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(base) - 1, 0)))
        if op == "flip" and base:
            base[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            base[pos:pos] = draw(
                st.binary(min_size=1, max_size=4)
                | st.sampled_from([b"\t", b"\n", b"\r", b" ", b"x", b"\x00"])
            )
        elif op == "delete":
            del base[pos : pos + draw(st.integers(1, 5))]
        else:
            del base[pos:]
    return bytes(base)


def _accepts(content: bytes) -> None:
    path = _tmp()
    with open(path, "wb") as fh:
        fh.write(content)
    for reader in (load_atf, load_neuron_dat, load_recording):
        try:
            result = reader(path)
        except RecordingFormatError as exc:
            assert exc.path == path
            str(exc)
            continue
        recs = result if isinstance(result, list) else [result]
        for rec in recs:
            assert isinstance(rec, Recording) and rec.data.ndim == 2
            assert rec.data.shape[1] == len(rec.columns)


@settings(max_examples=150, deadline=None)
@given(content=mutated())
def test_fuzz_mutated_samples(content: bytes) -> None:
    _accepts(content)


@settings(max_examples=80, deadline=None)
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.text('0123456789.-e\t\n\r ,label:ATF"=#()', max_size=200).map(str.encode),
    )
)
def test_fuzz_random_files(content: bytes) -> None:
    _accepts(content)


@pytest.mark.parametrize("keep", [0.3, 0.7])
def test_truncated_samples_never_shorten_silently(tmp_path: Path, keep: float) -> None:
    for seed in SEEDS:
        content = seed.read_bytes()
        cut = content[: int(len(content) * keep)]
        cut = cut[: cut.rfind(b"\n") + 1]
        path = tmp_path / seed.name
        path.write_bytes(cut)
        if seed.suffix == ".dat" and content.startswith(b"label:"):
            with pytest.raises(RecordingFormatError, match="truncated"):
                load_neuron_dat(path)


@pytest.mark.parametrize("label", ["a\nb", "a\rb", "a\0b"])
def test_writer_refuses_labels_the_reader_cannot_read(label: str) -> None:
    with pytest.raises(ValueError, match="line ending or NUL"):
        write_neuron_dat(_tmp() + ".dat", [0.0], [1.0], label=label)
