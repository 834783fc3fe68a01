"""The dashboard as a person uses it: JupyterLab in the system Chromium (Playwright drives
Debian's `chromium`; nothing downloads a browser). A small notebook with the user's own tiny
model opens on a run directory that already holds earlier trials; after selecting only two
recipes and pressing Run, the table and the chart show those two; after saving and reloading
the page, the chart is drawn again (not blank axes); after a kernel restart and running the
cell again, the store's trials are drawn without pressing Run."""
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from test_browser import ARGS, ARTIFACTS, CHROMIUM, _need_browser

TINY = textwrap.dedent('''
    """A user's tiny model: an MLP on scikit-learn's breast-cancer data."""
    import numpy as np
    import torch
    from sklearn.datasets import load_breast_cancer

    from l4opt import InputSpec, Metric, Workload


    def accuracy(outputs, reference, labels):
        return float(np.mean(np.asarray(outputs).argmax(1) == labels))


    def make():
        X, y = load_breast_cancer(return_X_y=True)
        X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(30, 32), torch.nn.ReLU(),
                                    torch.nn.Linear(32, 2)).eval()
        return Workload(name="tiny-mlp", model=model, inputs=[InputSpec("x", ("batch", 30))],
                        calib_data={"x": X[:256]}, eval_data={"x": X[300:]},
                        eval_labels=y[300:], metric=Metric("accuracy", accuracy), batch_size=64)
''')
EARLIER = ["baseline", "int8-max", "int8"]  # an earlier session's trials
ASKED = ["baseline", "int8-max"]


def _cell(src):
    return {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
            "source": textwrap.dedent(src).strip()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free port with its own token, config and workspace dirs."""
    _need_browser()
    if shutil.which("jupyter-lab") is None and shutil.which("jupyter") is None:
        pytest.fail("jupyter lab is not installed, although it is one of l4opt's dependencies")
    import l4opt
    from l4opt.spec.loader import load_workload

    root = tmp_path_factory.mktemp("lab")
    (root / "tiny.py").write_text(TINY)
    l4opt.sweep(load_workload(f"{root / 'tiny.py'}:make"), EARLIER, root / "run", progress=False)
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [_cell("""
            from tiny import make
            from l4opt.ui.widgets import Dashboard

            dash = Dashboard("run", workload=make())
            dash
        """)]}
    (root / "dash.ipynb").write_text(json.dumps(nb))
    with jupyter_lab(root) as served:
        yield served


@contextlib.contextmanager
def jupyter_lab(root: Path):
    """Serve `root` with JupyterLab on a free port with its own token, config, runtime,
    settings and workspace dirs (modules in `root` importable by its kernels); stopped after."""
    port, token = _free_port(), secrets.token_hex(16)
    home = root / "home"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    # no "notified about official Jupyter news?" toast over the outputs
    news = home / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True, exist_ok=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", "--allow-root",
         "--ServerApp.port_retries=0",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"jupyter lab did not start: {(root / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"base": base, "token": token, "root": root}
    finally:
        _stop(proc)
        log.close()


def _stop(proc) -> None:
    """End the server this test started and the kernels it started (its process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def lab_browser(base: str, height: int):
    """A Chromium context (Debian's, via Playwright) that reaches the JupyterLab at `base`
    and nothing else; closed and its profile removed after."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="l4opt-chromium-lab-")
    pw = sync_playwright().start()
    ctx = pw.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, headless=True, args=ARGS,
        viewport={"width": 1400, "height": height})
    ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort())
    try:
        yield ctx
    finally:
        ctx.close()
        pw.stop()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(lab):
    with lab_browser(lab["base"], 1100) as ctx:
        pg = ctx.new_page()
        errors = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.errors = errors
        yield pg


def _open_and_run_all(pg, lab):
    pg.goto(f"{lab['base']}/lab/tree/dash.ipynb?token={lab['token']}")
    pg.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')",
                         timeout=60000)
    pg.wait_for_function("""() => {
        const w = window.jupyterapp.shell.currentWidget;
        return w && w.sessionContext && w.sessionContext.session &&
               w.sessionContext.session.kernel &&
               w.sessionContext.session.kernel.status === 'idle'; }""", timeout=60000)


def _plotted(pg) -> list:
    """What the dashboard's accuracy chart draws: [trace name, number of points]."""
    return pg.evaluate("""() => {
        const gd = document.querySelector('.jp-OutputArea .js-plotly-plot');
        return gd && gd.data ? gd.data.map(t => [t.name, (t.x || []).length]) : null; }""")


def _laptop_table_recommendation_and_budget_switch(pg):
    """Issue 21 item 9: at 1280 px the first table fits its output (no sideways scroll), the
    recommendation is stated, and switching the budget kind resets its value."""
    pg.set_viewport_size({"width": 1280, "height": 1000})
    pg.wait_for_timeout(500)
    fit = pg.evaluate("""() => {
        const t = document.querySelector('.jp-OutputArea .l4opt-table table');
        const out = t.closest('.jp-OutputArea-output');
        return [t.getBoundingClientRect().width, out.getBoundingClientRect().width,
                [...t.querySelectorAll('thead th')].map(h => h.textContent)]; }""")
    assert fit[0] <= fit[1], f"the first table is {fit[0]} px in a {fit[1]} px output"
    assert fit[2][:3] == ["recipe", "status", "metric drop (lower is better)"], fit[2]
    assert any(h.startswith("speed-up vs FP16") for h in fit[2]), fit[2]
    rec = pg.locator(".jp-OutputArea .l4opt-recommendation").inner_text()
    assert "ship " in rec and "Within the budget (task metric drop <= 0.01)" in rec, rec
    pg.locator(".jp-OutputArea .l4opt-table").first.scroll_into_view_if_needed()
    pg.screenshot(path=str(ARTIFACTS / "dashboard-lab-1280.png"), full_page=True)
    kind = pg.locator(".jp-OutputArea .widget-dropdown select",
                      has=pg.locator("option", has_text="mean cosine"))
    kind.select_option(label="mean cosine >=")
    pg.wait_for_function("""() => [...document.querySelectorAll('.jp-OutputArea input')]
        .some(i => i.value === '0.99')""", timeout=20000)
    pg.wait_for_function("""() => document.querySelector('.jp-OutputArea .l4opt-recommendation')
        .textContent.includes('mean cosine >= 0.99')""", timeout=20000)
    pg.screenshot(path=str(ARTIFACTS / "dashboard-lab-budget-cosine.png"), full_page=True)
    kind.select_option(label="task metric drop <=")
    pg.wait_for_function("""() => [...document.querySelectorAll('.jp-OutputArea input')]
        .some(i => i.value === '0.01')""", timeout=20000)
    pg.set_viewport_size({"width": 1400, "height": 1100})


def test_dashboard_in_jupyterlab_shows_what_was_asked_and_survives_a_reload(lab, page):
    pg = page
    t0 = time.time()
    _open_and_run_all(pg, lab)
    pg.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    run = pg.locator(".jp-OutputArea .widget-button", has_text="Run")
    run.wait_for(timeout=90000)
    table = pg.locator(".jp-OutputArea .l4opt-table tbody tr")
    table.first.wait_for(timeout=30000)
    assert table.count() == len(EARLIER)  # the store's earlier trials, all recipes selected
    # select only two recipes (a real <select multiple>), press Run
    pg.locator(".jp-OutputArea .widget-select-multiple select",  # the recipes, not the GPUs
               has=pg.locator("option", has_text="int8-max")).select_option(ASKED)
    run.click()
    pg.wait_for_function("""() => [...document.querySelectorAll('.jp-OutputArea .widget-html')]
        .some(e => e.textContent.includes('done: 2 trials'))""", timeout=90000)
    names = pg.locator(".jp-OutputArea .l4opt-table tbody tr td:first-child").all_inner_texts()
    assert names == ASKED
    plotted = dict(_plotted(pg) or [])
    assert sum(n for name, n in plotted.items() if name.endswith("latency")) == 2, plotted
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "dashboard-lab.png"), full_page=True)
    _laptop_table_recommendation_and_budget_switch(pg)
    # save, reload the page: the widgets come back from the kernel, the chart drawn again
    pg.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
    pg.wait_for_function("""() => !window.jupyterapp.shell.currentWidget.context.model.dirty""",
                         timeout=20000)
    pg.reload()
    _open_and_run_all(pg, lab)
    pg.locator(".jp-OutputArea .js-plotly-plot").first.wait_for(timeout=60000)
    try:  # plotly draws from the widget's synced state when the view is built
        pg.wait_for_function("""() => { const gd = document.querySelector(
            '.jp-OutputArea .js-plotly-plot'); return gd && gd.data && gd.data.length > 0; }""",
                             timeout=15000)
    except Exception:
        pass
    plotted = dict(_plotted(pg) or [])
    assert plotted, "after the reload the chart is blank axes: the figure was not restored"
    assert sum(n for name, n in plotted.items() if name.endswith("latency")) == 2, plotted
    points = pg.eval_on_selector_all(".jp-OutputArea .js-plotly-plot .scatterlayer path.point",
                                     "els => els.length")
    assert points >= 2  # drawn as SVG, not blank axes
    names = pg.locator(".jp-OutputArea .l4opt-table tbody tr td:first-child").all_inner_texts()
    assert names == ASKED
    assert "model not found" not in pg.inner_text(".jp-Notebook")
    pg.screenshot(path=str(ARTIFACTS / "dashboard-lab-reloaded.png"), full_page=True)
    # a new kernel, the cell run again: the store's trials drawn at once, no Run pressed
    pg.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()")
    pg.wait_for_function("""() => { const k = window.jupyterapp.shell.currentWidget
        .sessionContext.session.kernel; return k && k.status === 'idle'; }""", timeout=60000)
    pg.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    pg.wait_for_function(f"""() => document.querySelectorAll(
        '.jp-OutputArea .l4opt-table tbody tr').length === {len(EARLIER)}""", timeout=90000)
    pg.wait_for_function("""() => { const gd = document.querySelector(
        '.jp-OutputArea .js-plotly-plot'); return gd && gd.data && gd.data.length > 0; }""",
                         timeout=60000)  # a shared 2-core machine under load: seen past 30 s
    plotted = dict(_plotted(pg))
    assert sum(n for name, n in plotted.items() if name.endswith("latency")) == len(EARLIER)
    pg.screenshot(path=str(ARTIFACTS / "dashboard-lab-restarted.png"), full_page=True)
    _export_link_opens_the_report_in_a_new_tab(pg)
    assert time.time() - t0 < 165


def _export_link_opens_the_report_in_a_new_tab(pg):
    """Issue 21 item 8: Export report's message is a link to the server's /files/ URL of the
    report (not a path JupyterLab would open in its untrusted HTML viewer); clicked, it opens a
    browser tab where the report's scripts run: the charts drawn, the no-script note gone.
    Item 5: the dashboard's latency batch (set here to 8) is the report's: the same latency
    cells, the batch said under its summary."""
    batch = pg.locator(".jp-OutputArea .widget-dropdown select",
                       has=pg.locator("option", has_text="256"))
    batch.select_option(label="8")
    pg.wait_for_function("""() => [...document.querySelectorAll(
        '.jp-OutputArea .l4opt-table thead th')].some(h => h.textContent.includes('batch 8'))""",
                         timeout=60000)
    dash_cells = _latency_cells(pg, ".jp-OutputArea .l4opt-table table")
    assert len(dash_cells) == len(EARLIER) and all(dash_cells.values()), dash_cells
    pg.locator(".jp-OutputArea .widget-button", has_text="Export report").click()
    link = pg.locator(".jp-OutputArea .widget-html a", has_text="report.html")
    link.wait_for(timeout=60000)
    assert link.get_attribute("href") == "/files/run/report.html"
    assert link.get_attribute("target") == "_blank"
    with pg.context.expect_page(timeout=30000) as opened:
        link.click()
    tab = opened.value
    tab.wait_for_load_state("load", timeout=60000)
    tab.wait_for_function("document.querySelector('.plotly-graph-div .main-svg')", timeout=60000)
    assert tab.url.endswith("/files/run/report.html")
    assert tab.locator("#l4opt-noscript").count() == 0  # removed by the report's own script
    assert _latency_cells(tab, "#summary + .tbl table") == dash_cells
    assert "L4 latencies at batch 8, as chosen" in tab.inner_text("body")
    tab.locator("#summary").scroll_into_view_if_needed()
    tab.screenshot(path=str(ARTIFACTS / "dashboard-lab-report-tab.png"))
    tab.close()


def _latency_cells(pg, table: str) -> dict:
    """{recipe: the L4 latency cell's text} of the first table matching `table`."""
    return dict(pg.evaluate("""(sel) => {
        const t = document.querySelector(sel);
        const heads = [...t.querySelectorAll('thead th')].map(h => h.textContent);
        const i = heads.findIndex(h => h.startsWith('L4 latency'));
        return [...t.querySelectorAll('tbody tr')].map(tr => {
            const td = tr.querySelectorAll('td'); return [td[0].textContent, td[i].textContent];
        }); }""", table))
