"""Issue 20 item 5: the fleet plan where users read it — the dashboard's Fleet plan panel, the
report's "Fleet plan" section, `l4opt report --p99-ms`, and `l4opt plan --instances/--workload`
— all from the same l4opt.plan result, under the same accuracy budget."""
from __future__ import annotations

import json
import re

import pytest

import l4opt
from l4opt.cli import main
from l4opt.fleet.plan import recommendation
from models import cnn_workload, mlp_workload


@pytest.fixture(scope="module")
def dash(tmp_path_factory):
    from l4opt.ui.widgets import Dashboard

    d = Dashboard(tmp_path_factory.mktemp("fleet-dash"), workload=mlp_workload(),
                  recipes=["baseline", "int8", "fp8"], background=False)
    d.run_button.click()
    assert len(d.rows) == 3 and d.error is None, d.error
    return d


def _planned(d, qps=5e5, p99=2.0, gpus=("L4", "T4")):
    d.fleet.qps.value, d.fleet.p99.value, d.fleet.gpus.value = qps, p99, gpus
    d.fleet.button.click()   # background=False: plans in this thread
    assert d.fleet.error is None, d.fleet.error
    return d.fleet.result


def test_the_panel_shows_the_plan_table_chart_and_answer(dash):
    res = _planned(dash)
    t = res.table
    assert sorted(set(t.recipe)) == ["baseline", "fp8", "int8"] and set(t.gpu) == {"L4", "T4"}
    assert set(t.workload) == {"tiny-mlp"}
    table = dash.fleet.table.value
    for word in ("GPUs (band)", "USD/M inf (band)", "J/inf (band)", "QPS/GPU (band)"):
        assert word in table
    assert len(dash.fleet.figure.data) == 2                  # one trace per GPU
    said = dash.fleet.info.value
    for g in ("L4", "T4"):
        rec = res.recommended[g]
        assert rec is not None and f"{g}: ship {rec} at batch" in said
        r = t[(t.gpu == g) & (t.recipe == rec)].iloc[0]
        assert f"{r.gpus_needed:.0f} GPU" in said and "per million inferences" in said
    # fp8 on a T4 runs as FP16: shown, never the T4's answer
    fp8_t4 = t[(t.gpu == "T4") & (t.recipe == "fp8")].iloc[0]
    assert fp8_t4.runs_as == "fp16" and not fp8_t4.recommended


def test_the_dashboards_budget_decides_what_is_recommended(dash):
    dash.budget_kind.value = "max_drop"
    dash.budget.value = 0.5
    loose = _planned(dash)
    assert loose.budget == {"max_drop": 0.5}
    dash.budget_kind.value = "min_cosine"
    dash.budget.value = 1.0          # nothing quantized has a mean cosine of exactly 1
    tight = _planned(dash)
    assert tight.budget == {"min_cosine": 1.0}
    q = tight.table[tight.table.recipe != "baseline"]
    assert not q.meets_budget.any() and not q.recommended.any()
    assert tight.recommended["L4"] in ("baseline", None)
    dash.budget_kind.value, dash.budget.value = "max_drop", 0.01


def test_bad_panel_input_is_shown_not_raised(dash):
    dash.fleet.gpus.value = ("L4",)
    dash.fleet.p99.value = 1e-3   # no batch meets 1 us: a statement, not an error
    dash.fleet.button.click()
    assert dash.fleet.error is None
    assert "best achievable" in " ".join(dash.fleet.result.notes + list(dash.fleet.result.table.note))


def test_the_exported_report_carries_the_panels_plan(dash):
    res = _planned(dash, qps=1e5, p99=3.0, gpus=("L4", "A10G"))
    path = dash.export_report()
    html = path.read_text()
    i = html.index("id=fleet")
    sec = html[i:html.index("<h2", i + 10)]
    assert "p99 &le; 3 ms" in sec and "100000 QPS" in sec
    for line in recommendation(res):
        assert line.split(":")[0] in sec
    assert "<table" in sec and re.search(r"id=[\"']fig\d+", sec)
    assert "A10G" in sec and "T4" not in re.sub(r"<[^>]+>", "", sec).split("notes")[0]


def test_report_cli_plans_a_fleet_and_refuses_bad_targets(dash, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(dash.run_dir), "-o", str(out), "--p99-ms", "2", "--qps", "1000",
                 "--gpus", "L4", "--max-drop", "0.02"]) == 0
    html = out.read_text()
    assert "Fleet plan" in html and "L4: ship" in html and "task metric drop &lt;= 0.02" in html
    assert main(["report", str(dash.run_dir), "-o", str(out)]) == 0
    assert "not planned" in out.read_text()
    capsys.readouterr()
    for args, word in ((["--p99-ms", "0"], "--p99-ms"), (["--p99-ms", "x"], "--p99-ms"),
                       (["--qps", "10"], "--p99-ms"), (["--p99-ms", "2", "--gpus", "V100X"], "V100X"),
                       (["--max-drop", "-1"], "--max-drop")):
        rc = main(["report", str(dash.run_dir), "-o", str(out), *args])
        err = capsys.readouterr().err
        assert rc == 2 and word in err, (args, err)


def test_plan_instances_and_workload_flags(dash, capsys):
    run = str(dash.run_dir)
    assert main(["plan", run, "--p99-ms", "2", "--gpu", "L4", "--instances", "1,2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["instances"] for r in doc["rows"]} <= {1, 2} and doc["rows"]
    assert main(["plan", run, "--p99-ms", "2", "--instances", "0"]) == 2
    assert "--instances" in capsys.readouterr().err
    # a second workload in the same run: the plan asks which, and plans the one named
    l4opt.sweep(cnn_workload(), ["baseline"], dash.run_dir, progress=False)
    assert main(["plan", run, "--p99-ms", "2", "--gpu", "L4"]) == 2
    err = capsys.readouterr().err
    assert "tiny-mlp" in err and "--workload" in err
    assert main(["plan", run, "--p99-ms", "2", "--gpu", "L4", "--workload", "tiny-mlp",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["workload"] for r in doc["rows"]} == {"tiny-mlp"}
    assert main(["plan", run, "--p99-ms", "2", "--workload", "nope"]) == 2
    assert "no trials of 'nope'" in capsys.readouterr().err


def test_row_notes_are_folded_once_with_what_they_concern():
    import pandas as pd

    from l4opt.fleet.plan import folded_notes

    t = pd.DataFrame({"recipe": ["int8", "int8", "int8-max", "int8-max", "fp8"],
                      "gpu": ["L4", "T4", "L4", "T4", "T4"],
                      "note": ["status collapsed", "status collapsed", "status collapsed",
                               "status collapsed", "would run at FP16 on T4"]})
    assert folded_notes(t) == ["int8, int8-max on L4, T4: status collapsed",
                               "fp8 on T4: would run at FP16 on T4"]
    t.loc[4, "note"] = "status collapsed"
    assert folded_notes(t) == ["int8 on L4, T4; int8-max on L4, T4; fp8 on T4: status collapsed"]


def test_band_notes_say_each_part_once_with_whom_it_concerns():
    """The default plan printed four near-identical ~1,500-character band notes (one per FP8
    recipe and GPU); each part of them is now said once, the specific ones with their rows."""
    import pandas as pd

    from l4opt.fleet.plan import band_notes

    t = pd.DataFrame([
        {"recipe": "fp8", "gpu": "L4", "band_note": "evidence A; slow side 5.8 ms; evidence B"},
        {"recipe": "fp8", "gpu": "L40S", "band_note": "evidence A; slow side 2.3 ms; evidence B"},
        {"recipe": "baseline", "gpu": "L4", "band_note": None}])
    assert band_notes(t) == ["latency band: evidence A; evidence B",
                             "latency band, fp8 on L4: slow side 5.8 ms",
                             "latency band, fp8 on L40S: slow side 2.3 ms"]
    assert band_notes(t.iloc[2:]) == []
