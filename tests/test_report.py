"""Plots, the HTML report (opened in a real headless Chromium), and the dashboard widgets."""
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import l4opt
from l4opt import plots, workloads
from l4opt.recipes import Recipe

ARTIFACTS = Path(os.environ.get("L4OPT_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def run(tmp_path_factory, trtexec_dir):
    """A real run: a sweep, a trial whose workload and recipe names are hostile, and lint."""
    from l4opt.cli import main

    d = tmp_path_factory.mktemp("report")
    l4opt.sweep("digits-cnn", "baseline,int8,int8-max", d, progress=False)
    w = workloads.load("digits-cnn")
    w.name = XSS
    l4opt.sweep(w, [Recipe(XSS, "torch-ptq", "int8", "max")], d, progress=False)
    g = trtexec_dir / "mobilenet.qat.onnx.engine.graph.json"
    main(["lint", str(g), "--profile", str(g).replace(".graph.json", ".profile.json"),
          "--out", str(d), "--json"])
    return d


def test_pareto_mask():
    assert list(plots.pareto_mask([0.0, 0.1, 0.05, 0.2], [2.0, 1.0, 1.5, 1.5])) == [True, True, True, False]


def test_accuracy_latency_marks_estimates_and_draws_the_front(run):
    from l4opt.store import Store

    df = pd.DataFrame([r for r in Store(run).rows() if r["kind"] == "trial"])
    fig = plots.accuracy_latency(df)
    names = [t.name for t in fig.data]
    assert "estimated L4 latency" in names and "Pareto front" in names
    assert "measured L4 latency" not in names  # nothing was measured here
    assert "ESTIMATED" in fig.layout.xaxis.title.text
    est = next(t for t in fig.data if t.name == "estimated L4 latency")
    assert est.marker.symbol == "circle-open" and len(est.x) == 4
    measured = df.assign(latency_source=["measured-l4"] + ["estimated-l4"] * (len(df) - 1))
    fig2 = plots.accuracy_latency(measured)
    assert {"measured L4 latency", "estimated L4 latency"} <= {t.name for t in fig2.data}


def test_rows_without_latency_are_left_out_not_invented():
    df = pd.DataFrame([{"recipe": "a", "status": "ok", "metric_drop": 0.1, "cos_mean": 0.9}])
    fig = plots.accuracy_latency(df)
    assert all(t.name == "Pareto front" or len(t.x) == 0 for t in fig.data)
    assert "no trial has an L4 latency" in fig.layout.annotations[0].text


def test_report_is_self_contained_and_escapes_names(run):
    from l4opt.report import write_report

    path = write_report(run)
    text = path.read_text()
    assert text.count("plotly.js v") == 1  # plotly.js embedded once
    assert not re.search(r"<(script|link)[^>]+(src|href)=", text)  # nothing loaded from outside
    assert XSS not in text and html_escaped(XSS) in text
    assert "ESTIMATES" in text and "Engine lint" in text and "unfused-qdq" in text
    assert path.stat().st_size < 8_000_000


def html_escaped(s):
    import html

    return html.escape(s)


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed "
                    "(.ci/browser-deps.sh installs it)")
def test_report_renders_in_headless_chromium(run):
    from playwright.sync_api import sync_playwright

    from l4opt.report import write_report

    path = write_report(run)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        errors, dialogs = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        n = page.eval_on_selector_all(".js-plotly-plot", "els => els.length")
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n}")
        rendered = page.eval_on_selector_all(
            ".js-plotly-plot", "els => els.filter(e => e.querySelector('.main-svg')).length")
        points = page.eval_on_selector_all(".js-plotly-plot .scatterlayer .point", "els => els.length")
        imgs = page.eval_on_selector_all("img", "els => els.length")
        body = page.inner_text("body")
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert n >= 2 and rendered == n
    assert points >= 4
    assert errors == [] and dialogs == [] and imgs == 0
    assert XSS in body  # shown as text


def test_dashboard_run_button_fills_chart_and_table(tmp_path):
    from l4opt.widgets import Dashboard

    d = Dashboard(tmp_path, workload="minilm", recipes=["baseline"], background=False)
    d.workload.value = "digits-cnn"
    d.recipes.value = ("int8-max", "baseline")
    d.calib.value = 256
    d.budget.value = 0.999
    d.run_button.click()
    assert d.progress.value == 2 and "done" in d.status.value
    est = [t for t in d.figure.data if t.name == "estimated L4 latency"]
    assert est and len(est[0].x) == 2
    assert d.table.value.count("</tr>") == 3  # header + 2 trials
    assert "meets_budget" in d.table.value
    key = est[0].customdata[0][2]
    view = d.show_trial(key)
    assert "latency_source" in view and "estimated-l4" in view
    assert d.export_report().exists()


def test_dashboard_reports_bad_input_in_the_status(tmp_path):
    from l4opt.widgets import Dashboard

    d = Dashboard(tmp_path, workload="digits-cnn", recipes=["int8"], background=False)
    d.calib.value = 3
    d.run_button.click()
    assert "fewer than the 32 required" in d.status.value and not d.run_button.disabled
