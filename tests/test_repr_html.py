"""The short HTML summaries notebooks show (_repr_html_): content, escaping, cost.

They need no matplotlib, so they live apart from the plot tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datamanager import DataManager
from datamanager.recordings import Recording, load_atf, load_recording

DATA = Path(__file__).parent / "data"
STEP = DATA / "pyabf_18702001-step.atf"


def one(path: Path) -> Recording:
    [rec] = load_recording(path)
    return rec


def test_recording_summary_lists_columns_units_length_and_source():
    text = one(STEP)._repr_html_()
    assert "20000 rows &times; 7 columns" in text
    assert "<td>Time (time)</td><td>s</td>" in text
    assert "<td>Trace #1</td><td>pA</td>" in text
    assert str(STEP) in text and "header: 8 records" in text


def test_a_notebook_shows_the_summaries(tmp_path):
    formatters = pytest.importorskip("IPython.core.formatters")
    dm = DataManager("sweep", str(tmp_path))
    for value in (one(STEP), dm):
        assert formatters.HTMLFormatter()(value) == value._repr_html_()


def test_recording_summary_escapes_what_the_file_says(tmp_path):
    path = tmp_path / "crafted.atf"
    path.write_text(
        'ATF\t1.0\n1\t2\n"Comment=<script>alert(1)</script>"\n'
        '"Time (s)"\t"<b>v</b> (<i>mV</i>)"\n0\t1\n'
    )
    text = load_atf(path)._repr_html_()
    assert "<script>" not in text and "<b>" not in text and "<i>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;v&lt;/b&gt;" in text
    label = tmp_path / "label.dat"
    label.write_text("label:<img src=x onerror=alert(1)>\n1\n0\t-65\n")
    text = load_recording(label)[0]._repr_html_()
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def listing(path: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
    }


def test_datamanager_summary_counts_sessions_keys_and_escapes_names(tmp_path):
    dm = DataManager("sweep", str(tmp_path))
    assert "no data directory yet" in dm._repr_html_()
    assert list(tmp_path.iterdir()) == []  # the summary created nothing
    with dm.session("<img src=x onerror=alert(1)>") as s:
        s.update({"rate": 1.0, "<b>k</b>": 2})
    with dm.session() as s:
        s["rate"] = 2.0
    before = listing(tmp_path)
    text = dm._repr_html_()
    assert "sessions: 2<br>keys: 2<br>size: " in text
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<td>&lt;b&gt;k&lt;/b&gt;</td>" in text and "<td>rate</td>" in text
    assert listing(tmp_path) == before  # nothing written, nothing touched


def test_datamanager_summary_opens_few_sessions_and_counts_the_rest_from_the_index(
    tmp_path, monkeypatch
):
    from datamanager import _html

    monkeypatch.setattr(_html, "OPEN_LIMIT", 2)  # instead of writing 51 sessions
    dm = DataManager("sweep", str(tmp_path))
    for n in range(3):
        with dm.session() as s:
            s[f"k{n}"] = n
    text = dm._repr_html_()
    assert "keys: at least 0" in text and "3 sessions not in the index were not opened" in text
    dm.build_index()
    before = listing(tmp_path)
    text = dm._repr_html_()
    assert "sessions: 3<br>keys: 3<br>size: " in text and "not opened" not in text
    assert listing(tmp_path) == before
    with dm.session() as s:  # one session the index does not know: opened
        s["late"] = 1
    assert "sessions: 4<br>keys: 4<br>" in dm._repr_html_()
