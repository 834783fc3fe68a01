"""The dashboard, driven from Python as a person drives it: set widget values, press buttons,
click a point (the message the browser sends), and read the figure and the table."""
import pandas as pd
import pytest

pytest.importorskip("ipywidgets", reason="the notebook extra is not installed")
pytest.importorskip("plotly", reason="the notebook extra is not installed")

from l4opt.widgets import Dashboard  # noqa: E402


def _points(fig, name="estimated L4 latency"):
    return [t for t in fig.data if t.name == name]


def _click(fig, trace_index: int, point_index: int):
    """What the browser sends when a point is clicked (plotly's FigureWidget protocol)."""
    t = fig.data[trace_index]
    fig._handler_js2py_pointsCallback({"new": {
        "event_type": "plotly_click",
        "points": {"xs": [t.x[point_index]], "ys": [t.y[point_index]],
                   "point_indexes": [point_index], "trace_indexes": [trace_index]}}})


@pytest.fixture(scope="module")
def dash(tmp_path_factory):
    d = Dashboard(tmp_path_factory.mktemp("dash"), workload="minilm", recipes=["baseline"],
                  background=False)
    assert d.table.value.startswith("<i>no trials yet")
    d.workload.value = "digits-cnn"
    assert d.calib.value == 512  # the workload's own default
    d.recipes.value = ("int8-max", "baseline")
    d.calib.value = 256
    d.budget.value = 0.005
    d.run_button.click()
    return d


def test_run_button_fills_the_chart_and_the_table(dash):
    assert dash.error is None and "done: 2 trials" in dash.status.value
    assert dash.progress.value == 2 and dash.progress.bar_style == "success"
    assert not dash.run_button.disabled
    est = _points(dash.figure)
    assert len(est) == 1 and len(est[0].x) == 2  # one point per trial
    assert est[0].marker.symbol == "circle-open"  # estimated: open marker
    assert dash.figure.layout.xaxis.title.text == "L4 latency (ms, estimated), batch 1"
    assert any(t.name == "Pareto front" for t in dash.figure.data)
    assert any(s.y0 == 0.005 for s in dash.figure.layout.shapes)  # the budget line
    html = dash.table.value
    assert html.count("</tr>") == 3 and "L4 latency ms, batch 1 (estimated)" in html
    assert "within budget" in html and "on Pareto front" in html
    table = dash.results
    assert list(table["name"]) == ["int8-max", "baseline"]
    assert (table["calib_samples"] == 256).all()  # the widget's value reached the trials


def test_batch_and_budget_controls_redraw(dash):
    before = list(_points(dash.figure)[0].x)
    dash.batch.value = 64
    after = list(_points(dash.figure)[0].x)
    assert dash.figure.layout.xaxis.title.text == "L4 latency (ms, estimated), batch 64"
    assert all(a > b for a, b in zip(after, before))  # an estimate at batch 64, never invented
    assert "L4 latency ms, batch 64 (estimated)" in dash.table.value
    dash.budget_kind.value = "min_cosine"
    dash.budget.value = 0.99999
    assert "cosine" in dash.figure.layout.yaxis.title.text
    assert list(dash.results["within_budget"]) == list(dash.results["cos_mean"] >= 0.99999)
    dash.budget_kind.value, dash.budget.value, dash.batch.value = "max_drop", 0.005, 1


def test_clicking_a_point_shows_that_trials_per_layer_view(dash):
    trace = next(i for i, t in enumerate(dash.figure.data) if t.name == "estimated L4 latency")
    names = [c[0] for c in dash.figure.data[trace].customdata]
    _click(dash.figure, trace, names.index("int8-max"))
    assert dash.selected == dash.results.set_index("name").loc["int8-max", "key"]
    assert "<h4>int8-max</h4>" in dash.detail.value and "estimated-l4" in dash.detail.value
    layer_traces = {t.name for t in dash.layer_figure.data}
    assert "int8" in layer_traces  # per-layer bars coloured by the precision they run at
    assert "ESTIMATED" in dash.layer_figure.layout.title.text
    _click(dash.figure, trace, names.index("baseline"))
    assert {t.name for t in dash.layer_figure.data} == {"fp16"}
    assert "no trial" in dash.show_trial("not-a-key")


def test_export_report_button(dash):
    dash.report_button.click()
    path = dash.run_dir / "report.html"
    assert path.exists() and "report written" in dash.status.value
    assert "int8-max" in path.read_text()


def test_background_run_serves_finished_trials_from_the_store(dash):
    d = Dashboard(dash.run_dir, workload="digits-cnn", recipes=["int8-max"], calib_samples=256)
    d.run_button.click()
    d.wait(120)
    assert d.error is None and "1 served from the store" in d.status.value
    assert len(_points(d.figure)[0].x) == 1


def test_bad_input_is_shown_in_the_status_not_raised(tmp_path):
    d = Dashboard(tmp_path, workload="digits-cnn", recipes=["int8"], background=False)
    d.calib.value = 3
    d.run_button.click()
    assert "fewer than the 32 required" in d.status.value
    assert not d.run_button.disabled and d.progress.bar_style == "danger"
    d.recipes.value = ()
    d.run_button.click()
    assert "choose at least one recipe" in d.status.value


def test_a_users_workload_object_is_a_choice(tmp_path):
    from l4opt import workloads

    w = workloads.load("digits-cnn")
    w.name = "my-<cnn>"
    d = Dashboard(tmp_path, workload=w, recipes=["baseline"], background=False)
    assert d.workload.value == "my-<cnn>" and "digits-cnn" in d.workload.options
    d.run_button.click()
    assert d.error is None and list(d.results["workload"]) == ["my-<cnn>"]


def test_rows_without_latency_are_named_not_plotted(tmp_path):
    d = Dashboard(tmp_path, workload="digits-cnn", recipes=["baseline"], background=False)
    d.rows = [{"key": "k1", "kind": "trial", "status": "ok", "workload": "digits-cnn",
               "recipe": "imported-elsewhere", "metric_drop": 0.0, "cos_mean": 1.0}]
    d.redraw()
    assert [t for t in d.figure.data if t.name != "Pareto front"] == []
    assert "imported-elsewhere" in d.figure.layout.annotations[0].text
    assert pd.isna(d.results["dash_latency_ms"].iloc[0])
