"""The quickstart as a person runs it: JupyterLab in the system Chromium (Playwright drives
Debian's `chromium`; nothing downloads a browser), small settings as in test_notebooks. While
the sweep cell runs the kernel shows Busy (issue 21 item 7); after saving and reloading the
page no output is a dead widget view (item 1); the report opens from its link in a browser tab
with its charts, and from JupyterLab's file browser (untrusted HTML viewer, no scripts) with a
note saying so (item 8). Kernel status messages are recorded to the test artifacts."""
import json
import time
from pathlib import Path

import pytest

from test_browser import ARTIFACTS
from test_dashboard_lab import _need_browser, jupyter_lab, lab_browser

REPO = Path(__file__).resolve().parents[2]
SMALL = {"workload": "digits-cnn", "recipes": "baseline,int8-max", "run_dir": "run"}
# after the quickstart's own cells: an ipywidget made while its cell runs, to record what
# JupyterLab shows then (the status messages of its subshell request), never asserted away
CANARY = ("import time\nimport ipywidgets\n\ndisplay(ipywidgets.IntProgress(value=1, max=2))\n"
          "time.sleep(4)")
# every kernel status change, the iopub status messages (with their parent's type) and which
# execute_request is running: an 'idle' shown while one runs is recorded with its cause
WATCH = """() => {
  const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const t0 = Date.now(), log = window.__l4opt = {events: [], idleWhileRunning: [], replies: 0};
  let running = null, last = null;
  k.anyMessage.connect((_, a) => {
    const m = a.msg;
    if (a.direction === 'recv' && m.header.msg_type === 'execute_reply') log.replies += 1;
    if (m.channel !== 'iopub' || m.header.msg_type !== 'status') return;
    const parent = m.parent_header || {}, state = m.content.execution_state;
    last = parent.msg_type;
    log.events.push([Date.now() - t0, state, parent.msg_type || null]);
    if (parent.msg_type === 'execute_request') {
      if (state === 'busy') running = parent.msg_id;
      else if (state === 'idle' && parent.msg_id === running) running = null;
    }
  });
  k.statusChanged.connect((_, s) => {
    log.events.push([Date.now() - t0, 'shown: ' + s, null]);
    if (s === 'idle' && running !== null) log.idleWhileRunning.push([Date.now() - t0, last]);
  });
}"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a folder with the quickstart (parameters injected as papermill does)
    and one more cell (CANARY)."""
    _need_browser()
    pytest.importorskip("papermill")
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    root = tmp_path_factory.mktemp("lab-quickstart")
    nb = parameterize_notebook(load_notebook_node(str(REPO / "notebooks" / "quickstart.ipynb")),
                               SMALL)
    nb.cells.append(nbformat.v4.new_code_cell(CANARY))
    nbformat.write(nb, str(root / "quickstart.ipynb"))
    with jupyter_lab(root) as served:
        yield served


@pytest.fixture(scope="module")
def browser(lab):
    """A Chromium context that reaches JupyterLab on localhost and nothing else."""
    with lab_browser(lab["base"], 1000) as ctx:
        yield ctx


def _open(pg, lab, path="quickstart.ipynb"):
    pg.goto(f"{lab['base']}/lab/tree/{path}?token={lab['token']}")
    pg.wait_for_function("""() => { const w = window.jupyterapp && window.jupyterapp.shell
        .currentWidget; return w && w.sessionContext && w.sessionContext.session &&
        w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'
        && document.querySelector('.jp-Notebook'); }""", timeout=90000)


def _notebook_text(pg) -> str:
    """Every output's text, rendered or not (cells off screen included)."""
    return pg.evaluate("document.querySelector('.jp-Notebook').textContent")


def test_quickstart_shows_busy_survives_a_reload_and_opens_its_report(lab, browser):
    t0 = time.time()
    pg = browser.new_page()
    _open(pg, lab)
    pg.evaluate(WATCH)
    # not awaited: evaluate() would wait for the command's promise, i.e. for every cell
    pg.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    # while the sweep runs: its progress is a line of text and the status bar says Busy
    bar = pg.locator(".jp-OutputArea-output", has_text="sweep digits-cnn:").first
    bar.wait_for(timeout=120000)
    bar.scroll_into_view_if_needed()
    now = pg.evaluate("""() => { const w = window.jupyterapp.shell.currentWidget;
        const cells = w.content.model.cells; let running = null;
        for (let i = cells.length - 1; i >= 0; i--)  // the first queued cell is the one running
            if (cells.get(i).executionState === 'running') running = i;
        return {shown: w.sessionContext.session.kernel.status, running,
                sweep: [...Array(cells.length).keys()].find(i =>
                    cells.get(i).sharedModel.getSource().includes('l4opt.sweep('))}; }""")
    pg.screenshot(path=str(ARTIFACTS / "quickstart-lab-running.png"))
    assert now["running"] == now["sweep"] and now["shown"] == "busy", now
    assert "jupyter-widgets" not in bar.inner_html()
    # done when every code cell has its reply (the status shown may say idle too early)
    pg.wait_for_function("""() => { const cells = window.jupyterapp.shell.currentWidget.content
        .model.cells; let n = 0; for (let i = 0; i < cells.length; i++)
        n += cells.get(i).type === 'code'; return window.__l4opt.replies >= n; }""",
                         timeout=150000, polling=1000)
    log = dict(pg.evaluate("window.__l4opt"), snapshot=now)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "quickstart-lab-status.json").write_text(json.dumps(log, indent=1))
    text = _notebook_text(pg)
    assert "Traceback" not in text and "ship " in text
    assert "sweep digits-cnn: 100%" in text, text[:2000]  # the sweep's progress, as text
    pg.screenshot(path=str(ARTIFACTS / "quickstart-lab.png"), full_page=True)
    # Busy for as long as a cell runs: the only 'idle' shown mid-cell may be JupyterLab's
    # reaction to the subshell request of the first widget (the canary cell, upstream)
    causes = [cause for _, cause in log["idleWhileRunning"]]
    quickstart_causes = [c for c in causes if c not in ("create_subshell_request",
                                                        "delete_subshell_request")]
    assert quickstart_causes == [], log["idleWhileRunning"]
    subshell_idle = [e for e in log["events"] if e[2] == "create_subshell_request"]
    assert len(subshell_idle) <= 2, subshell_idle  # once, for the canary's widget, at most
    # saved, the quickstart's outputs hold no widget view (only the canary's, alive)
    pg.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
    pg.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty",
                         timeout=30000)
    saved = json.loads((lab["root"] / "quickstart.ipynb").read_text())
    views = [i for i, c in enumerate(saved["cells"]) for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views == [len(saved["cells"]) - 1], views
    # reloaded with the kernel alive: every output drawn again, none a dead widget view
    pg.reload()
    _open(pg, lab)
    pg.locator(".jp-Cell").last.scroll_into_view_if_needed()
    pg.locator(".jp-OutputArea .widget-hprogress").first.wait_for(state="attached",
                                                                 timeout=30000)
    pg.wait_for_timeout(2000)  # the widget manager's restore
    text = _notebook_text(pg)
    assert "model not found" not in text and "Error displaying widget" not in text
    assert "sweep digits-cnn: 100%" in text
    pg.locator(".jp-OutputArea-output", has_text="sweep digits-cnn: 100%").first \
        .scroll_into_view_if_needed()
    pg.screenshot(path=str(ARTIFACTS / "quickstart-lab-reloaded.png"), full_page=True)
    _report_opens_from_its_link_and_from_the_file_browser(pg, lab)
    assert time.time() - t0 < 170


def _report_opens_from_its_link_and_from_the_file_browser(pg, lab):
    """The quickstart's last output links the report at the server's /files/ URL: a browser
    tab where the charts run and the no-script note is gone. Opened from the file browser,
    JupyterLab's HTML viewer (untrusted: no scripts) shows the note instead of blank charts."""
    link = pg.locator(".jp-OutputArea a", has_text="report.html")
    assert link.get_attribute("href") == "/files/run/report.html"
    with pg.context.expect_page(timeout=30000) as opened:
        link.click()
    tab = opened.value
    tab.wait_for_function("document.querySelectorAll('.plotly-graph-div .main-svg').length > 0",
                          timeout=60000)
    assert tab.locator("#l4opt-noscript").count() == 0
    tab.locator(".plotly-graph-div").first.scroll_into_view_if_needed()
    tab.screenshot(path=str(ARTIFACTS / "quickstart-lab-report-tab.png"))
    tab.close()
    pg.evaluate("""window.jupyterapp.commands.execute('docmanager:open',
                   {path: 'run/report.html', factory: 'HTML Viewer'})""")
    frame = pg.frame_locator(".jp-HTMLViewer iframe")
    note = frame.locator("#l4opt-noscript")
    note.wait_for(timeout=30000)
    assert note.is_visible() and "Trust HTML" in note.inner_text()
    assert frame.locator(".plotly-graph-div .main-svg").count() == 0  # indeed no script ran
    pg.screenshot(path=str(ARTIFACTS / "report-lab-untrusted.png"))
