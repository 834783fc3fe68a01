"""Issue 16 item 4: no function or class body in the UI layer exceeds ~120 lines; the
dashboard is wiring over a view model, and the report is one function per section."""
import ast
from pathlib import Path

import l4opt

UI = Path(l4opt.__file__).resolve().parent / "ui"
LIMIT = 125


def test_no_unit_of_the_ui_layer_is_larger_than_the_limit():
    big = []
    for f in sorted(UI.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                n = node.end_lineno - node.lineno + 1
                if n > LIMIT:
                    big.append(f"{f.name}:{node.lineno} {node.name}: {n} lines")
    assert not big, big


def test_the_report_is_one_function_per_section():
    from l4opt.ui import report

    for name in ("_header", "_recommendation_section", "_summary_section", "_not_ok_section",
                 "_trial_details", "_calibration_section", "_chart_section", "_mixed_section",
                 "_sensitivity_section", "_lint_section", "_batch_section", "_fleet_section",
                 "_notes_section",
                 "_provenance_section"):
        assert callable(getattr(report, name)), name


def test_run_directory_reading_lives_in_the_results_layer():
    from l4opt.results import rundir
    from l4opt.ui import report

    assert report.load_run is rundir.load_run and report.load_searches is rundir.load_searches
    src = (UI / "report.py").read_text() + (UI / "widgets.py").read_text()
    assert "sqlite3" not in src and "def load_run" not in src
