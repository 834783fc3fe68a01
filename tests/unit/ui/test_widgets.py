"""The dashboard, driven from Python as a person drives it: set widget values, press buttons,
click a point (the message the browser sends), and read the figure and the table."""
import re

import pandas as pd
import pytest

pytest.importorskip("ipywidgets", reason="the notebook extra is not installed")
pytest.importorskip("plotly", reason="the notebook extra is not installed")

from l4opt.ui.widgets import Dashboard  # noqa: E402


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
    first, more = html.split("<details>")
    assert first.count("</tr>") == 3 and "L4 latency ms, batch 1 (estimated)" in first
    assert "within budget" in first and "on Pareto front" in more
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
    from l4opt.spec import workloads

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
    d._ensure_options(["imported-elsewhere"])
    d.recipes.value = ("imported-elsewhere",)
    assert [t for t in d.figure.data if t.name != "Pareto front"] == []
    assert "imported-elsewhere" in d.figure.layout.annotations[0].text
    assert pd.isna(d.results["dash_latency_ms"].iloc[0])
    assert ">0<" in d.table.value and "-0" not in d.table.value  # a zero drop is 0


# ------------------------------------------------------------------ what was asked, and only that

def test_only_the_selected_recipes_are_shown_others_hidden_or_dimmed(dash):
    assert list(dash.results["name"]) == ["int8-max", "baseline"]
    dash.recipes.value = ("baseline",)
    dash.run_button.click()  # served from the store
    assert "done: 1 trials (1 served from the store)" in dash.status.value
    assert list(dash.results["name"]) == ["baseline"]
    first = dash.table.value.split("<details>")[0]
    assert first.count("<tr") == 2 and "int8-max" not in dash.table.value
    est = _points(dash.figure)
    assert len(est) == 1 and len(est[0].x) == 1
    assert not any(t.name == "not selected (dimmed)" for t in dash.figure.data)
    dash.others.value = "dim"  # the user's choice: others greyed out, not clickable
    first = dash.table.value.split("<details>")[0]
    assert first.count("l4opt-dimmed") == 1 and "int8-max" in first
    dimmed = [t for t in dash.figure.data if t.name == "not selected (dimmed)"]
    assert len(dimmed) == 1 and len(dimmed[0].x) == 1 and dimmed[0].opacity < 0.5
    assert list(dash.results["name"]) == ["baseline"]  # results: what was asked
    dash.others.value = "hide"
    dash.recipes.value = ("int8-max", "baseline")
    assert list(dash.results["name"]) == ["int8-max", "baseline"]


def test_numbers_show_their_differences(dash):
    from l4opt.ui.tables import display_frame

    shown = display_frame(dash.results, ["name", "cos_mean", "metric_drop"])
    base = shown.set_index("name").loc["baseline"]
    raw = dash.results.set_index("name").loc["baseline", "cos_mean"]
    assert raw < 1 and base["cos_mean"] != "1" and float(base["cos_mean"]) == pytest.approx(raw, abs=5e-7)
    assert len(base["cos_mean"].split(".")[1]) >= 6
    assert not any(re.fullmatch(r"-0(\.0*)?", v) for v in shown["metric_drop"])
    drops = dash.results["metric_drop"]
    assert list(shown["metric_drop"]) == ["0" if v == 0 else f"{v:.6f}" for v in drops]


def test_the_store_is_drawn_when_the_dashboard_is_built_or_displayed_again(dash):
    from IPython.display import display  # noqa: F401 (what a re-executed cell does)

    again = Dashboard(dash.run_dir, workload="digits-cnn", recipes=["int8-max", "baseline"],
                      calib_samples=256, background=False)
    assert list(again.results["name"]) == ["int8-max", "baseline"]  # no Run pressed
    assert len(_points(again.figure)[0].x) == 2
    # what a reloaded page builds its view from: the synced state holds the drawn figure
    synced = again.figure._widget_data
    assert len(synced) == len(again.figure.data) and synced[0]["x"] == list(again.figure.data[0].x)
    assert again.figure._widget_layout["xaxis"]["title"]["text"].startswith("L4 latency")
    again._ipython_display_()  # displayed again: re-read the store, redraw, stay synced
    assert len(again.figure._widget_data) == len(again.figure.data)


def test_statuses_and_row_facts_are_shown_as_themselves(tmp_path):
    d = Dashboard(tmp_path, workload="digits-cnn", recipes=["baseline", "fp8", "int8", "int8-max"],
                  background=False)
    base = {"kind": "trial", "workload": "digits-cnn", "metric_delta": 0.0,
            "latency_source": "estimated-l4", "latency_batch": 64, "gemm_layers": 5}
    d.rows = [
        dict(base, key="a", recipe="baseline", status="ok", format="fp16", route="none", cos_mean=1.0, latency_ms=0.5,
             latency_low_ms=0.4, latency_high_ms=0.7, quantized_layers=0),
        dict(base, key="b", recipe="fp8", status="no-op", cos_mean=1.0, latency_ms=0.5,
             quantized_layers=0),
        dict(base, key="c", recipe="int8", status="failed", error="boom"),
        dict(base, key="d", recipe="int8-max", status="ok", collapsed=True, cos_mean=0.46,
             metric_delta=-0.6, latency_ms=0.3, quantized_layers=5,
             collapse_note="residual adds"),
    ]
    d.batch.value = 64  # the rows' own batch: their latencies, with the band
    html = d.table.value
    for status in ("no-op", "failed", "collapsed"):
        assert f">{status}<" in html
    assert "0/5" in html and "5/5" in html  # quantized of GEMM/conv layers
    assert "0.5000 (0.4000–0.7000)" in html  # the estimate's band
    assert "L4 latency ms, batch 64" in html and ">64<" in html
    # speed-up over the baseline, with the band l4opt.latency.paired gives it
    assert re.search(r"1\.67× \(\d\.\d\d–\d\.\d\d\)", html), html[:2000]
    shown = set(d.results.loc[d.results["dash_latency_ms"].notna(), "name"])
    assert shown == {"baseline", "int8-max"}  # no latency shown for a no-op or failed row


def _mlp_workload(name="cancer-mlp"):
    import numpy as np
    import torch
    from sklearn.datasets import load_breast_cancer

    from l4opt import InputSpec, Metric, Workload

    X, y = load_breast_cancer(return_X_y=True)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    return Workload(name=name, model=model.eval(), inputs=[InputSpec("features", ("batch", 30))],
                    calib_data={"features": X[:300]}, eval_data={"features": X[300:]},
                    eval_labels=y[300:], metric=Metric(
                        "accuracy", lambda o, r, lab: float(np.mean(o.argmax(1) == lab))),
                    batch_size=64)


def test_calibration_control_and_state_survive_switching_workloads(tmp_path):
    w = _mlp_workload()
    d = Dashboard(tmp_path, workload=w, recipes=["baseline"], background=False)
    assert d.calib.value == 300  # a user's workload: its own calibration set
    d.calib.value = 40
    d.run_button.click()
    assert d.error is None, d.error
    assert list(d.results["calib_samples"]) == [40]  # the control decides, not the workload
    d.workload.value = "digits-cnn"
    assert d.calib.value == 512 and d.table.value.startswith("<i>no trials")
    d.recipes.value = ("int8-max",)
    d.calib.value = 100
    d.workload.value = "cancer-mlp"  # and back: its choices and its trials as they were
    assert d.calib.value == 40 and d.recipes.value == ("baseline",)
    assert list(d.results["name"]) == ["baseline"] and list(d.results["calib_samples"]) == [40]
    d.workload.value = "digits-cnn"
    assert d.calib.value == 100 and d.recipes.value == ("int8-max",)


@pytest.mark.parametrize("values, name, expected", [
    ([0.99996, 0.9998, 1.0], "cos_mean", ["0.999960", "0.999800", "1.000000"]),
    ([0.99996, 0.99991], None, ["0.99996", "0.99991"]),     # never both '1.000'
    ([-0.0, 0.0, 0.0123], "metric_drop", ["0", "0", "0.01230"]),
    ([12.34567, 1234.5, float("nan"), None], None, ["12.35", "1234.50", "–", "–"]),
    ([0.1234001, 0.1234002], None, ["0.1234001", "0.1234002"]),  # distinct stays distinct
    ([3, 5], None, ["3", "5"]),
    ([1e-12, 0.5], None, ["1e-12", "0.50000000"]),  # tiny but not zero: never shown as 0
])
def test_number_formatting(values, name, expected):
    from l4opt.ui.tables import format_column

    assert format_column(values, name) == expected


def test_latency_band_and_statuses():
    from l4opt.ui.tables import latency_cells, row_status

    assert latency_cells([1.5, 0.0, float("nan"), 2.0], [1.2, None, None, 2.0],
                         [1.9, None, None, 2.0]) == ["1.500 (1.200–1.900)", "–", "–", "2.000"]
    assert [row_status(r) for r in ({"status": "ok"}, {"status": "no-op"}, {"status": "failed"},
                                    {"status": "ok", "collapsed": True}, {})] == \
        ["ok", "no-op", "failed", "collapsed", "ok"]


def test_a_workload_named_as_file_and_function(tmp_path):
    src = tmp_path / "my_models.py"
    src.write_text("from test_widgets import _mlp_workload\n\n"
                   "def make_workload():\n    return _mlp_workload('from-a-file')\n")
    d = Dashboard(tmp_path / "run", workload=f"{src}:make_workload", recipes=["baseline"],
                  background=False)
    assert d.workload.value == "from-a-file" and d.calib.value == 300
    from l4opt.errors import BadInput

    with pytest.raises(BadInput, match="pkg.module:make_workload"):
        Dashboard(tmp_path / "run", workload="no-such-workload")


def test_a_recipe_file_choice_shows_its_trials(tmp_path):
    from l4opt.spec.recipes import Recipe

    f = Recipe("my-int8", "torch-ptq", "int8", "max").save(tmp_path / "my-int8.yaml")
    d = Dashboard(tmp_path / "run", workload=_mlp_workload(), recipes=[str(f)], background=False)
    d.run_button.click()
    assert d.error is None, d.error
    assert list(d.results["name"]) == ["my-int8"] and "my-int8" in d.table.value


# ------------------------------------------------------------------ controls that keep meaning

def test_switching_the_budget_kind_resets_its_value(dash):
    assert dash.budget_kind.value == "max_drop" and dash.budget.value == 0.005
    dash.budget_kind.value = "min_cosine"  # a drop of 0.005 is no cosine: the kind's default
    assert dash.budget.value == 0.99 and dash.model.budget == 0.99
    assert list(dash.results["within_budget"]) == list(dash.results["cos_mean"] >= 0.99)
    assert "mean cosine &gt;= 0.99" in dash.recommendation.value
    dash.budget_kind.value = "max_drop"  # and back: 0.99 is no allowed drop either
    assert dash.budget.value == 0.01 and dash.model.budget == 0.01
    dash.budget.value = 0.005


def test_the_chart_shows_the_band_and_does_not_exaggerate(dash):
    (est,) = _points(dash.figure)
    band = dash.results.set_index("name")
    assert est.error_x.array is not None and est.error_x.arrayminus is not None
    for x, plus, minus, c in zip(est.x, est.error_x.array, est.error_x.arrayminus,
                                 est.customdata):
        r = band.loc[c[0]]
        assert plus == pytest.approx(r["dash_latency_high_ms"] - x)
        assert minus == pytest.approx(x - r["dash_latency_low_ms"])
    lo, hi = dash.figure.layout.xaxis.range
    assert lo == 0 and hi >= band["dash_latency_high_ms"].max()  # 0 and every band end shown
    notes = " ".join(a.text for a in dash.figure.layout.annotations)
    lows, highs = band["dash_latency_low_ms"], band["dash_latency_high_ms"]
    if lows.max() <= highs.min():  # the two bands overlap: the chart says so
        assert "indistinguishable" in notes and "int8-max" in notes and "baseline" in notes


def test_the_recommendation_is_stated(dash):
    rec = dash.model.recommendation()
    html = dash.recommendation.value
    import html as _html

    assert "Recommendation" in html and _html.escape(rec["sentence"]) in html
    ok = dash.results[(dash.results["status"] == "ok") & dash.results["within_budget"].eq(True)]
    if len(ok):
        fastest = ok.sort_values("dash_latency_ms").iloc[0]
        assert rec["met"] and rec["recipe"] == fastest["name"]
        assert rec["latency_ms"] == pytest.approx(fastest["dash_latency_ms"])
        assert "ship " + fastest["name"] in rec["sentence"]
    else:
        assert not rec["met"] and "l4opt search" in rec["sentence"]


def test_the_detail_panel_is_for_people(dash):
    dash.batch.value = 1  # the panel follows the trial's own batch, not the chart's
    key = dash.results.set_index("name").loc["int8-max", "key"]
    row = dash.model.row(key)
    html = dash.show_trial(key)
    for section in ("What happened", "Accuracy", "Precision", "L4 latency", "Files"):
        assert f"<b>{section}</b>" in html, section
    assert "&quot;" not in html and "{" not in html  # no JSON dumps
    assert not re.search(r"\d\.\d{9,}", html)  # no 17-digit floats
    assert " ms</td>" in html and " dB</td>" in html and "samples/s" in html
    b = row["latency_batch"]
    assert f"batch {b}" in dash.layer_figure.layout.title.text
    total = float(re.search(r"\(([0-9.]+) ms in all\)", dash.layer_figure.layout.title.text)[1])
    assert total == pytest.approx(row["latency_ms"], rel=1e-3)  # the row's latency, same batch


def test_export_carries_the_budget_into_the_report(dash):
    dash.budget_kind.value = "min_cosine"
    dash.budget.value = 0.999
    path = dash.export_report()
    text = path.read_text()
    assert "Budget: mean cosine &gt;= 0.999" in text
    assert "<a href=" in dash.status.value
    dash.budget_kind.value = "max_drop"
    dash.budget.value = 0.005


def test_a_restarted_kernel_opens_on_what_the_run_directory_holds(dash):
    """Issue 21 item 2: no workload and no recipes named: the store's workload, the recipes
    its trials used, drawn at once, and the status says so."""
    d = Dashboard(dash.run_dir, background=False)
    assert d.workload.value == "digits-cnn"  # not the default minilm
    assert set(d.recipes.value) == {"int8-max", "baseline"}
    assert "opened on what" in d.status.value and "digits-cnn" in d.status.value
    assert set(d.results["name"]) == {"int8-max", "baseline"}


# ------------------------------------------------------------------ mixed precision view

def _bars_by_layer(fig) -> dict:
    """The precision map's bars: layer label -> (colour, legend name), from the figure."""
    out = {}
    for t in fig.data:
        if t.type == "bar":
            for x in t.x:
                out[x] = (t.marker.color, t.name)
    return out


def test_mixed_precision_view_empty_state(tmp_path):
    d = Dashboard(tmp_path, workload="digits-cnn", background=False)
    assert d.search_pick.options == ()
    assert "no search in this run dir yet" in d.search_info.value
    assert "l4opt search digits-cnn" in d.search_info.value
    assert not [t for t in d.search_map.data if t.type == "bar"]


def test_mixed_precision_view_shows_the_saved_search(tmp_path):
    import json

    from l4opt.ui import plots
    from l4opt.precision.api import Budget, search

    search("digits-cnn", "int8", Budget(max_drop=0.01), tmp_path, progress=False)
    files = sorted((tmp_path / "search").glob("*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    d = Dashboard(tmp_path, workload="digits-cnn", background=False)
    assert list(d.search_pick.options) == [files[0].stem]
    assert d.search_pick.value == files[0].stem
    # the one-line summary: the verdict, the latency with its band, the 8-bit share
    info = d.search_info.value
    assert ("budget met" if doc["met"] else "budget NOT MET") in info
    assert f"{doc['latency_ms']:.4g} ms" in info and "estimate band" in info
    assert f"{100 * doc['fraction_quantized']:.0f}% of GEMM/conv layers at 8 bits" in info
    # the precision map: every layer of the search's layer_map, in graph order, coloured by
    # its format
    layers = sorted(doc["layer_map"], key=lambda x: x["order"])
    labels = [f"{i + 1}. {x['layer']}" for i, x in enumerate(layers)]
    bars = _bars_by_layer(d.search_map)
    assert sorted(bars, key=labels.index) == labels and set(bars) == set(labels)
    assert list(d.search_map.layout.xaxis.categoryarray or labels) == labels
    for x, label in zip(layers, labels):
        colour, name = bars[label]
        assert colour == plots.PRECISION_COLORS[x["format"]]
        assert name.startswith(x["format"].upper())
    # the candidates' front: one point per priced candidate, with error bars (estimate band)
    pts = [t for t in d.front_figure.data if t.type == "scatter" and t.error_x
           and t.error_x.array is not None]
    assert pts, "candidates drawn without their estimate band"
    assert any(t.name == "chosen" for t in d.front_figure.data)
    priced = [r for r in doc["candidate_rows"]
              if r.get("status") == "ok" and r.get("latency_ms") is not None]
    drawn = [t for t in d.front_figure.data if "L4 latency" in (t.name or "")]
    assert priced and sum(len(t.x) for t in drawn) == len(priced)
    assert sorted(x for t in drawn for x in t.x) == sorted(r["latency_ms"] for r in priced)

    # another workload has none; back to digits-cnn and the search is shown again
    d.workload.value = "minilm"
    assert d.search_pick.options == () and "no search" in d.search_info.value
    d.workload.value = "digits-cnn"
    assert d.search_pick.value == files[0].stem

    # a search written after the dashboard was built (e.g. by the CLI) shows when the
    # dashboard is displayed again, and the synced state (what a reloaded view draws) is it
    search("digits-cnn", "fp8", Budget(min_cosine=0.9999), tmp_path, progress=False)
    assert len(d.search_pick.options) == 1
    d._ipython_display_()
    stems = sorted(f.stem for f in (tmp_path / "search").glob("*.json"))
    assert sorted(d.search_pick.options) == stems and len(stems) == 2
    for stem in stems:
        d.search_pick.value = stem
        doc = json.loads((tmp_path / "search" / f"{stem}.json").read_text())
        n = len(doc["layer_map"])
        synced = [t for t in d.search_map._widget_data if t.get("type") == "bar"]
        assert sum(len(t["x"]) for t in synced) == n
        assert {t["marker"]["color"] for t in synced} == \
            {plots.PRECISION_COLORS[x["format"]] for x in doc["layer_map"]}
