"""The shareable HTML report of a real run directory: self-contained, escaped, labelled.

The `report_run` fixture (shared with test_browser and test_plots) is a real run: a digits-cnn
sweep, a trial whose workload and recipe names are hostile HTML, a real sensitivity and greedy
search, the lint of a real trtexec export (through the CLI, as users keep it), a sensitivity
file with a hostile layer name, and one trial given a measured L4 latency and batch curve the
way `l4opt import` records them.
"""
import json
import re
import shutil
from pathlib import Path

import pytest

import l4opt
from l4opt.spec import workloads
from l4opt.spec.recipes import Recipe

pytest.importorskip("plotly", reason="the notebook extra is not installed")

XSS_WORKLOAD = "<img src=x onerror=alert(1)>"
XSS_RECIPE = "</script><script>alert(2)</script>"
XSS_LAYER = "<svg onload=alert(3)>"
XSS_LINT = "<b onmouseover=alert(4)>engine"
HOSTILE = (XSS_WORKLOAD, XSS_RECIPE, XSS_LAYER, XSS_LINT)
MEASURED_CURVE = [  # as l4opt.bundle.read_bundle records a measured batch sweep
    {"batch": 1, "latency_ms_median": 0.021, "p99": 0.024, "throughput_qps": 47619.0,
     "throughput_samples_s": 47619.0},
    {"batch": 8, "latency_ms_median": 0.026, "p99": 0.03, "throughput_qps": 38461.5,
     "throughput_samples_s": 307692.3},
    {"batch": 64, "latency_ms_median": 0.061, "p99": 0.07, "throughput_qps": 16393.4,
     "throughput_samples_s": 1049180.3},
]


@pytest.fixture(scope="session")
def report_run(tmp_path_factory, trtexec_dir):
    from l4opt.cli import main
    from l4opt.precision.api import Budget
    from l4opt.precision.sensitivity import SensitivityResult
    from l4opt.results.store import Store
    from l4opt.spec.row import measured_update

    d = tmp_path_factory.mktemp("report-run")
    l4opt.sweep("digits-cnn", "baseline,fp8,int8-max", d, progress=False)
    w = workloads.load("digits-cnn")
    w.name = XSS_WORKLOAD
    l4opt.sweep(w, [Recipe(XSS_RECIPE, "torch-ptq", "int8", "max")], d, progress=False)
    l4opt.sensitivity("digits-cnn", "int8-max", d, eval_samples=64, progress=False)
    l4opt.search("digits-cnn", "int8-max", Budget(max_drop=0.01), d, strategy="greedy",
                 eval_samples=64, progress=False)
    g = trtexec_dir / "mobilenet.qat.onnx.engine.graph.json"
    assert main(["lint", str(g), "--profile", str(g).replace(".graph.json", ".profile.json"),
                 "--out", str(d), "--json"]) == 0
    (saved,) = (d / "lint").glob("*.json")  # the CLI names it safely (slug + hash)
    shutil.copy(saved, d / "lint" / f"{XSS_LINT}.json")
    hostile = SensitivityResult(
        XSS_WORKLOAD, "int8-max", {}, "top1", 0.98, {}, eval_samples=64, seconds=0.1,
        layers=[{"layer": XSS_LAYER, "share": 0.75, "only_drop": 0.02, "all_but_drop": 0.0,
                 "recovery": 0.02, "rank": 1},
                {"layer": "head.3", "share": 0.25, "only_drop": 0.005, "all_but_drop": 0.015,
                 "recovery": 0.005, "rank": 2}])
    (d / "sensitivity" / "hostile.json").write_text(json.dumps(hostile.to_dict()))
    store = Store(d)
    row = next(r for r in store.rows() if r.get("recipe") == "int8-max")
    # a measurement as the import writes it (the estimate moves beside it; no band of its own)
    store.update(row["key"], **measured_update(row, {
        "latency_ms": 0.021, "latency_batch": 1, "latency_source": "measured-l4",
        "latency_gpu": "NVIDIA L4", "batch_sweep": MEASURED_CURVE}))
    store.close()
    return d


@pytest.fixture(scope="session")
def report_html(report_run):
    from l4opt.ui.report import write_report

    path = write_report(report_run)
    return path, path.read_text(encoding="utf-8")


def test_report_is_one_self_contained_file(report_html):
    path, text = report_html
    assert path.name == "report.html"
    assert text.count("plotly.js v") == 1  # plotly.js embedded exactly once
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)\s*=", text, re.I)
    body = text.split("</head>", 1)[1]  # (plotly.js itself names its CDN for map topologies)
    assert "cdn.plot.ly" not in body and "require" not in body
    assert text.count('class="plotly-graph-div"') >= 6  # two charts, sensitivity x2, lint x2, batch
    assert path.stat().st_size < 6_000_000


def test_every_user_string_is_escaped(report_html):
    import html

    _, text = report_html
    for s in HOSTILE:
        assert s not in text, s
    # outside the embedded plotly.js: only the figures' own scripts, no event handler attribute
    body = text.split("</head>", 1)[1]
    scripts = re.findall(r"<script[^>]*>\s*(\S{0,30})", body)
    assert scripts and all(s.startswith("window.PLOTLYENV") for s in scripts)
    assert len(scripts) == body.count('class="plotly-graph-div"')
    assert not re.search(r"<[a-z]+[^>]*\son[a-z]+\s*=", body)
    assert html.escape(XSS_WORKLOAD) in body and html.escape(XSS_RECIPE) in body
    assert html.escape(XSS_LAYER) in body and html.escape(XSS_LINT) in body


def test_estimates_and_measurements_are_labelled(report_html):
    _, text = report_html
    assert "L4 latency ms at latency_batch (measured or estimated: see latency_source)" in text
    assert "L4 samples/s at throughput_batch (estimated)" in text
    assert "L4 latency ms (estimated; kept beside a measurement)" in text
    assert "come from l4opt&#x27;s cost model" in text or "come from l4opt's cost model" in text
    assert "estimated-l4" in text and "measured-l4" in text
    assert "measured = filled" in text  # the chart's latency axis, mixed sources


def test_sections_hold_the_run(report_html):
    _, text = report_html
    for h in ("Summary", "Mixed-precision search candidates", "Accuracy drift vs L4 latency",
              "Mixed precision (search)", "Per-layer precision",
              "Per-layer sensitivity", "Engine lint", "Batch-size curves", "Provenance",
              "Package versions", "Machines that ran the trials", "Measured or estimated"):
        assert h in text, h
    assert "features.0" in text  # a real layer of the real sensitivity
    assert "unfused-qdq" in text and "QuantizeLinear" in text  # findings of the real lint
    assert "nvidia-modelopt" in text and "NVIDIA L4" in text
    assert "none in this run" not in text
    ids = re.findall(r"<h2 id=(\w+)>", text)  # the sections, composed in reading order
    order = ["recommendation", "summary", "calibration", "chart", "mixed", "sensitivity",
             "lint", "batch", "fleet", "notes", "provenance"]
    assert ids[:2] == ["recommendation", "summary"] and ids == sorted(ids, key=order.index)
    assert {"chart", "mixed", "sensitivity", "lint", "batch", "provenance"} <= set(ids), ids


def test_empty_sections_say_none(tmp_path):
    from l4opt.ui.report import build_html

    l4opt.sweep("digits-cnn", "baseline", tmp_path, progress=False)
    text = build_html(tmp_path)
    assert text.count("none in this run") == 3 and "none measured in this run" in text
    assert "L4 latency ms at latency_batch (estimated)" in text
    assert "every L4 latency here is estimated" in text


def test_cli_report_and_bad_run_dir(report_run, tmp_path, capsys):
    from l4opt.cli import main
    from l4opt.errors import BadInput
    from l4opt.ui.report import write_report

    out = tmp_path / "shared" / "digits.html"
    assert main(["report", str(report_run), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 1_000_000
    with pytest.raises(BadInput, match="no results.sqlite"):
        write_report(tmp_path / "nothing-here")
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert not (tmp_path / "nothing-here").exists()  # nothing created on the way
    # --batch: the latency batch shown; a bad one exits 2 naming the flag
    at8 = tmp_path / "at8.html"
    assert main(["report", str(report_run), "-o", str(at8), "--batch", "8"]) == 0
    assert "L4 latencies at batch 8, as chosen" in at8.read_text(encoding="utf-8")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["report", str(report_run), "--batch", "0"])
    assert exc.value.code == 2 and "--batch" in capsys.readouterr().err


def test_report_records_its_size(report_html):
    """The size of a digits-cnn report (kept as a test artifact for the issue's record)."""
    import os

    path, _ = report_html
    d = Path(os.environ.get("L4OPT_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, d / "report.html")
    (d / "report-size.txt").write_text(f"{path.stat().st_size} bytes\n")


def test_row_facts_no_op_collapsed_and_missing_latency(tmp_path):
    """A no-op is its own section (not a result), a collapsed row shows its note, a latency of
    0 or NaN is never shown as a number, and the layer counts, batch and shapes are columns."""
    from l4opt.ui.report import build_html
    from l4opt.results.store import Store

    row = l4opt.sweep("digits-cnn", "baseline", tmp_path, progress=False).rows[0]
    store = Store(tmp_path)
    base = {k: v for k, v in row.items() if k not in ("key", "cached")}
    store.put(dict(base, key="noop1", recipe="int8-noop", status="no-op", quantized_layers=0,
                   gemm_layers=5, latency_ms=0.01))
    store.put(dict(base, key="coll1", recipe="int8-broke", collapsed=True,
                   collapse_note="cosine 0.39: entropy calibration <clipped> outliers; run "
                                 "l4opt search", cos_mean=0.39))
    store.put(dict(base, key="zero1", recipe="zero-latency", latency_ms=0.0))
    store.put(dict(base, key="nan1", recipe="nan-latency", latency_ms=float("nan")))
    store.close()
    text = build_html(tmp_path)
    assert "No-op trials" in text and "int8-noop" in text
    assert "Collapsed trials" in text and "entropy calibration &lt;clipped&gt; outliers" in text
    assert "No L4 latency shown for 2 trial(s)" in text
    assert "zero-latency, nan-latency" in text or "nan-latency, zero-latency" in text
    for col in ("GEMM/conv layers quantized", "GEMM/conv layers", "latency_batch", "shapes",
                "estimate band low (ms)"):
        assert f"<th>{col}</th>" in text, col
    assert "1 no-op" in text


def _baseline_row(run_dir):
    row = l4opt.sweep("digits-cnn", "baseline", run_dir, progress=False).rows[0]
    return {k: v for k, v in row.items() if k not in ("key", "cached")}


def test_header_counts_every_sweep_trial_and_details_show_outputs_and_exclusions(tmp_path):
    """5 sweep trials of which 2 failed read '5 sweep trials'; per-output drift and the layers
    left unquantized (with reasons) are shown for every trial that has them, escaped."""
    from l4opt.ui.report import build_html
    from l4opt.results.store import Store

    base = _baseline_row(tmp_path)
    store = Store(tmp_path)
    by_output = {XSS_LAYER: {"cos_mean": 0.91234, "cos_min": 0.5, "sqnr_db": 12.5,
                             "max_abs_err": 0.3},
                 "aux": {"cos_mean": 0.99871, "cos_min": 0.99, "sqnr_db": 31.25,
                         "max_abs_err": 0.01}}
    excluded = [{"node": "/head/Gemm<x>", "reason": "kept by <b>nodes_to_exclude</b>"}]
    store.put(dict(base, key="ok2", recipe="two-outputs", status="ok",
                   tensor_metrics_by_output=by_output, excluded_layers=excluded))
    store.put(dict(base, key="ok3", recipe="plain-ok", status="ok"))
    store.put(dict(base, key="f1", recipe="broken-1", status="failed", error="boom <1>"))
    store.put(dict(base, key="f2", recipe="broken-2", status="failed", error="boom 2"))
    store.close()
    text = build_html(tmp_path)
    assert "5 sweep trials (3 ok)" in text and "2 failed" in text
    m = re.search(r"<details class=trial><summary>[^<]*two-outputs.*?</details>", text, re.S)
    assert m, "no details for the multi-output row"
    block = m.group(0)
    for v in ("0.9123", "0.9987", "12.5", "31.25", "aux"):
        assert v in block, v
    assert e_(XSS_LAYER) in block and XSS_LAYER not in text
    assert "/head/Gemm&lt;x&gt;" in block and "kept by &lt;b&gt;nodes_to_exclude&lt;/b&gt;" in block
    assert "plain-ok" not in "".join(re.findall(r"<details class=trial>.*?</details>", text,
                                                re.S))


def e_(s):
    import html

    return html.escape(s)


def test_estimate_vs_measured_section(tmp_path):
    """With measured L4 rows, the report shows the estimator's before/after table
    (l4opt.estimate.calibration_table); without them, no such section."""
    from l4opt.latency import estimate
    from l4opt.ui.report import build_html
    from l4opt.results.store import Store

    base = _baseline_row(tmp_path)
    assert "Estimate vs measured" not in build_html(tmp_path)  # nothing measured: silent
    assert base.get("onnx_path")
    store = Store(tmp_path)
    for i, ms in enumerate((0.021, 0.034)):
        store.put(dict(base, key=f"m{i}", recipe=f"measured-{i}", latency_ms=ms,
                       latency_batch=1 + 7 * i, latency_source="measured-l4",
                       latency_gpu="NVIDIA L4"))
    store.close()
    text = build_html(tmp_path)  # measured but never calibrated: says how
    assert "Estimate vs measured on this L4" in text and "--refit-from" in text
    table = estimate.refit_from(tmp_path)
    assert len(table) == 2
    text = build_html(tmp_path)
    sec = text.split("Estimate vs measured on this L4", 1)[1].split("<h2", 1)[0]
    assert "estimated ms (shipped fit)" in sec and "estimated ms (refit)" in sec
    for v in table["est_before_ms"]:
        assert f"{v:.4g}" in sec
    assert "measured-0" in sec and "measured-1" in sec


def test_report_tables_format_as_l4opt_tables(tmp_path):
    """The report's tables format as l4opt.tables does: a cosine of 0.99996 never reads '1', a
    metric change of -0.0 reads '0' (never '-0'), a collapsed row's status reads 'collapsed'
    and a no-op row's 'no-op'."""
    from l4opt.ui.report import build_html
    from l4opt.results.store import Store

    base = _baseline_row(tmp_path)
    store = Store(tmp_path)
    store.put(dict(base, key="near1", recipe="near-one", cos_mean=0.99996, metric_delta=-0.0))
    store.put(dict(base, key="coll2", recipe="int8-broke", collapsed=True, cos_mean=0.39,
                   collapse_note="drifted"))
    store.put(dict(base, key="noop2", recipe="int8-noop", status="no-op", quantized_layers=0))
    store.close()
    text = build_html(tmp_path)
    summary = text.split("<h2 id=summary>", 1)[1].split("<h3", 1)[0]
    first, more = summary.split("<details>", 1)
    for table in (first, more):
        heads = re.findall(r"<th>(.*?)</th>", table)
        cells = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
        near = next(c for c in cells if ">near-one<" in c)
        tds = dict(zip(heads, re.findall(r"<td[^>]*>(.*?)</td>", near)))
        assert tds["metric drop (lower is better)"] == "0", tds
        broke = next(c for c in cells if ">int8-broke<" in c)
        assert re.search(r"<td[^>]*>collapsed</td>", broke), broke
    assert tds["cos_mean"].startswith("0.99996") and float(tds["cos_mean"]) == 0.99996, tds
    noop = text.split("No-op trials", 1)[1].split("<h", 1)[0]
    assert re.search(r"<td[^>]*>no-op</td>", noop), noop


def _table(html_text, start):
    """The first table after `start`: (headers, [row cells])."""
    part = html_text.split(start, 1)[1]
    table = part[part.index("<table"):part.index("</table>")]
    heads = re.findall(r"<th>(.*?)</th>", table)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r)
            for r in re.findall(r"<tbody>.*", table, re.S)[0].split("</tr>") if "<td" in r]
    return heads, rows


def test_the_summary_is_laptop_sized_and_formatted_for_reading(tmp_path):
    """Issue 21 item 2 / issue 17 item 9: the first table is recipe, status, metric drop (one
    sign convention, named), L4 latency with its band, speed-up vs FP16 and 8-bit layers; the
    rest behind a toggle; the band's provenance said once; shapes and samples/s readable."""
    from l4opt.ui.report import build_html
    from l4opt.results.store import Store

    base = _baseline_row(tmp_path)
    store = Store(tmp_path)
    store.put(dict(base, key="fast", recipe="fast-int8", format="int8", route="onnx-ptq",
                   metric_delta=-0.004, metric_drop=0.004, latency_ms=base["latency_ms"] / 2,
                   latency_low_ms=base["latency_low_ms"] / 2,
                   latency_high_ms=base["latency_high_ms"] / 2, quantized_layers=4))
    store.close()
    text = build_html(tmp_path)
    heads, rows = _table(text, "<h2 id=summary>")
    assert heads[:3] == ["recipe", "status", "metric drop (lower is better)"]
    assert heads[3].startswith("L4 latency ms") and heads[4:] == ["speed-up vs FP16 (band)",
                                                                   "8-bit layers"]
    cells = {r[0]: r for r in rows}
    assert cells["baseline"][4] == "1.00×" and cells["baseline"][5] == "0/5"
    assert cells["fast-int8"][2] == "0.004000" and cells["fast-int8"][4].startswith("2.00× (")
    assert "(" in cells["fast-int8"][3] and "–" in cells["fast-int8"][3]  # the band
    import html

    assert text.count(html.escape(base["latency_band_source"])) == 1  # once, under the table
    assert "<details><summary>all columns" in text
    more = text.split("<details><summary>all columns", 1)[1].split("</details>", 1)[0]
    assert "image 64x1x8x8" in more and "&quot;inputs&quot;" not in more
    samples = f"{base['throughput_samples_s']:,.0f}"
    assert "," in samples and samples in more


def test_the_report_states_a_recommendation_with_the_budget_used(tmp_path):
    from l4opt.ui.report import build_html, write_report
    from l4opt.ui.view_model import recommend
    from l4opt.results.store import Store

    base = _baseline_row(tmp_path)
    store = Store(tmp_path)
    store.put(dict(base, key="fast", recipe="fast-int8", format="int8", route="onnx-ptq",
                   metric_drop=0.004, latency_ms=base["latency_ms"] / 2,
                   latency_low_ms=base["latency_low_ms"] / 2,
                   latency_high_ms=base["latency_high_ms"] / 2, cos_mean=0.999))
    store.put(dict(base, key="faster", recipe="broke-int8", status="collapsed", collapsed=True,
                   metric_drop=0.3, latency_ms=base["latency_ms"] / 3, cos_mean=0.4))
    store.close()
    text = build_html(tmp_path)
    head = text.split("<h2 id=summary>", 1)[0]
    assert "<h2 id=recommendation>" in head  # at the top, before the tables
    assert "Budget: task metric drop &lt;= 0.01" in head
    assert "ship fast-int8" in head and "2.00× the FP16 baseline" in head
    assert "broke-int8 collapsed" in head  # what would do better
    strict = write_report(tmp_path, budget={"min_cosine": 0.99999})
    stext = strict.read_text()
    assert "Budget: mean cosine &gt;= 0.99999" in stext and "ship baseline" in stext
    rec = recommend(json_rows(tmp_path), {"min_cosine": 0.99999})
    assert rec["recipe"] == "baseline"


def json_rows(run_dir):
    from l4opt.results.rundir import load_run

    return load_run(run_dir)["rows"]


def test_the_report_shows_latency_at_the_dashboards_batch(report_run, tmp_path):
    """Issue 21 item 5: the dashboard's 'latency at batch' travels into the exported report:
    every sweep trial's L4 latency there is the dashboard's at that batch (measured where the
    trial's batch sweep has it, else estimated on its ONNX), the trial's own figure kept; a bad
    batch is refused with what to give."""
    from l4opt.errors import BadInput
    from l4opt.ui.report import _Page, build_html, load_run
    from l4opt.ui.view_model import DashboardModel

    recipes = ("baseline", "fp8", "int8-max")
    own = {r["recipe"]: r for r in load_run(report_run)["rows"] if r.get("recipe") in recipes
           and not isinstance(r.get("strategy"), str)}
    for b in (1, 8):
        m = DashboardModel(report_run, "digits-cnn", recipes, batch=b)
        m.load_store()
        dash = m.frame()
        shown = dict(zip(dash["recipe"], dash["dash_latency_ms"]))
        rows = {r["recipe"]: r for r in _Page(load_run(report_run), batch=b).rows
                if r.get("recipe") in recipes and not isinstance(r.get("strategy"), str)}
        for rc in recipes:
            assert rows[rc]["latency_ms"] == pytest.approx(shown[rc], rel=1e-12), (b, rc)
            assert rows[rc]["latency_batch"] == b
            if own[rc]["latency_batch"] != b:
                assert rows[rc]["trial_latency_ms"] == own[rc]["latency_ms"]
    # int8-max is measured at batch 1 and 8 (its batch sweep): measured there, no band
    r8 = rows["int8-max"]
    assert r8["latency_ms"] == 0.026 and r8["latency_source"] == "measured-l4"
    assert r8["latency_low_ms"] == r8["latency_high_ms"] == 0.026
    assert rows["baseline"]["latency_source"].startswith("estimated")
    assert rows["baseline"]["latency_low_ms"] < rows["baseline"]["latency_ms"] \
        < rows["baseline"]["latency_high_ms"]
    text = build_html(report_run, batch=8)
    summary = text.split("<h2 id=summary>", 1)[1].split("<details>", 1)[0]
    assert "L4 latencies at batch 8, as chosen" in summary
    assert "0.026" in summary and "0.021" not in summary.split("<p", 1)[0]
    for bad in (0, 2.5, "8", True):
        with pytest.raises(BadInput, match="whole number >= 1"):
            build_html(report_run, batch=bad)
