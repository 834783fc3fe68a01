"""Issue 21 items 7 and 8: a note repeated for several recipes is said once with the recipes it
concerns, by one rule (l4opt.ui.tables.folded_notes) that the notebooks and the report share;
the report says where its charts cannot run and hides that note itself where they can; the
export message links the report where a browser tab opens it."""
import re
from pathlib import Path

import pytest

import l4opt
from l4opt.ui.tables import folded_notes, notes_text

pytest.importorskip("plotly", reason="the notebook extra is not installed")

SAME = "FP8 and INT8 run the SAME kernels on this graph. Long explanation follows."
ROWS = [
    {"recipe": "int8", "format": "int8", "status": "ok", "latency_notes": [SAME, "other"],
     "notes": ["3 quantizer(s) left in high precision. Details."]},
    {"recipe": "fp8", "format": "fp8", "status": "ok", "latency_notes": [SAME],
     "notes": ["3 quantizer(s) left in high precision. Details."]},
    {"recipe": "int8-max", "format": "int8", "status": "collapsed", "collapsed": True,
     "collapse_note": "cosine 0.39: entropy calibration clipped outliers. Run l4opt search."},
    {"recipe": "int8-entropy", "format": "int8", "status": "collapsed", "collapsed": True,
     "collapse_note": "cosine 0.39: entropy calibration clipped outliers. Run l4opt search."},
    {"recipe": "broken", "status": "failed", "error": "boom"},
    {"recipe": "baseline", "format": "fp16", "status": "ok", "latency_notes": [SAME]},
]


def test_a_repeated_note_is_said_once_with_its_recipes():
    assert folded_notes(ROWS, "fp8-int8") == [(SAME, ["int8", "fp8"])]  # fp16 rows: not this kind
    assert folded_notes(ROWS, "collapsed", brief=True) == [
        ("cosine 0.39: entropy calibration clipped outliers", ["int8-max", "int8-entropy"])]
    assert folded_notes(ROWS, "failed") == [("boom", ["broken"])]
    lines = notes_text(ROWS)
    assert lines == [
        "COLLAPSED int8-max, int8-entropy: cosine 0.39: entropy calibration clipped outliers",
        "FAILED broken: boom",
        "L4 latency (int8, fp8): FP8 and INT8 run the SAME kernels on this graph",
        "note (int8, fp8): 3 quantizer(s) left in high precision"]
    assert sum(SAME.split(". ")[0] in x for x in lines) == 1


def test_the_report_folds_notes_by_the_same_rule(tmp_path):
    from l4opt.results.store import Store
    from l4opt.ui.report import build_html

    row = l4opt.sweep("digits-cnn", "baseline", tmp_path, progress=False).rows[0]
    base = {k: v for k, v in row.items() if k not in ("key", "cached")}
    store = Store(tmp_path)
    for i, name in enumerate(["r-one", "r-two", "r-three"]):
        store.put(dict(base, key=f"k{i}", recipe=name, notes=["the same <note>", f"own {i}"]))
    store.close()
    text = build_html(tmp_path)
    section = text[text.index("<h2 id=notes>"):]
    section = section[:section.index("</ul>")]
    assert section.count("the same &lt;note&gt;") == 1
    said = re.search(r"<li><b>([^<]*)</b>: the same &lt;note&gt;</li>", section).group(1)
    assert set(said.split(", ")) == {"r-one", "r-two", "r-three"}
    assert all(f"own {i}" in section for i in range(3))


def test_the_report_says_where_its_charts_cannot_run_and_hides_that_itself(tmp_path):
    from l4opt.ui.report import build_html

    l4opt.sweep("digits-cnn", "baseline", tmp_path, progress=False)
    text = build_html(tmp_path)
    body = text[text.index("<body>"):]
    assert body.index("id=l4opt-noscript") < body.index("<h1")  # the first thing one sees
    assert "Trust HTML" in body and "Open in New Browser Tab" in body
    head = text[:text.index("<body>")]
    assert "getElementById('l4opt-noscript')" in head and ".remove()" in head


def test_the_export_link_outside_a_jupyter_server_is_relative_to_the_notebook(tmp_path,
                                                                               monkeypatch):
    from l4opt.ui.view_model import report_href, report_link

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs dir").mkdir()
    p = tmp_path / "runs dir" / "report.html"
    p.write_text("x")
    # pytest's parent process is no Jupyter server: the path relative to the working directory
    assert report_href(p) == "runs%20dir/report.html"
    link = report_link(Path("runs dir") / "report.html")
    assert "href='runs%20dir/report.html'" in link and "target='_blank'" in link
