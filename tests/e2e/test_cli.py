"""The CLI as a user drives it with their own model: a workload from 'file.py:fn' or
'pkg.module:fn', options checked against the workload's factory, bad input refused with a
clear message (never a traceback), and user names never becoming raw path parts."""
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import l4opt
from l4opt.cli import _save_json, main
from l4opt.errors import BadInput
from l4opt.spec.loader import load_workload

USER_MODELS = textwrap.dedent('''
    """A user's own models, as they would write them (not l4opt code)."""
    import numpy as np
    import torch
    from sklearn.datasets import load_breast_cancer

    from l4opt import InputSpec, Metric, Workload


    def accuracy(outputs, reference, labels):
        return float(np.mean(np.asarray(outputs).argmax(1) == labels))


    def make_workload(calib_samples: int = 128, name: str = "cancer-mlp"):
        X, y = load_breast_cancer(return_X_y=True)
        X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
        order = np.random.default_rng(0).permutation(len(X))
        train, test = order[:400], order[400:]
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 2))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        xt, yt = torch.from_numpy(X[train]), torch.from_numpy(y[train])
        for _ in range(60):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
        return Workload(
            name=name, model=model.eval(), inputs=[InputSpec("features", ("batch", 30))],
            calib_data={"features": X[train][:calib_samples]}, eval_data={"features": X[test]},
            eval_labels=y[test], metric=Metric("accuracy", accuracy), output_names=["logits"],
            batch_size=64, batch_range=(1, 64, 512))


    def make_team(calib_samples: int = 128):
        return make_workload(calib_samples, name="team/mlp-v2")


    def make_escape(calib_samples: int = 128):
        return make_workload(calib_samples, name="../../x")


    def broken():
        return {}["missing"]


    def not_a_workload():
        return 42


    WORKLOAD = make_workload(calib_samples=48, name="as-object")
''')


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("user code")  # a space in the folder, as on many laptops
    f = d / "usermodels.py"
    f.write_text(USER_MODELS)
    return f


@pytest.fixture(scope="module")
def swept(user_file, tmp_path_factory):
    """`l4opt sweep path/to/file.py:make_workload` with options, as a user types it."""
    run = tmp_path_factory.mktemp("cli-run")
    args = ["sweep", f"{user_file}:make_workload", "--recipes", "baseline", "--out", str(run),
            "--calib-samples", "64", "--batch", "8", "--json"]
    return run, args


def test_a_users_file_factory_sweeps_from_the_cli(swept, capsys):
    run, args = swept
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["rows"]
    assert row["workload"] == "cancer-mlp" and row["status"] == "ok"
    assert row["calib_samples"] == 64  # the CLI option reached the user's factory
    assert row["latency_batch"] == 8 and row["shapes"]["batch"] == 8  # --batch: deployment
    assert (run / "results.sqlite").exists()


def test_the_printed_table_shows_differences_and_bands(swept, capsys):
    run, args = swept
    args = [a for a in args if a != "--json"]
    assert main(args + ["--recipes", "baseline,int8-max"]) in (0, 1)
    out, err = capsys.readouterr()
    head, *lines = [ln for ln in out.splitlines() if ln.startswith(("recipe", "  ", "baseline",
                                                                     "int8-max"))]
    assert "quantized/GEMM" in head and "L4 ms (band)" in head and "batch" in head
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.split()[:1] in (["baseline"],
                                                                               ["int8-max"])}
    assert set(rows) == {"baseline", "int8-max"}
    # a cosine below 1 never shows as 1 (2 logits a sample: one cosine over the batch)
    assert re.search(r" 0\.99\d{4,} ", rows["int8-max"])
    assert re.search(r"\d\.\d+ \(\d\.\d+–\d\.\d+\)", rows["baseline"])  # estimate band
    assert " -0 " not in out


def test_a_module_factory_and_a_workload_object(user_file, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))
    w = load_workload("usermodels:make_workload", {"calib_samples": 40}, cli=True)
    assert w.name == "cancer-mlp" and w.num_samples(w.calib_data) == 40
    obj = load_workload("usermodels:WORKLOAD")
    assert obj.name == "as-object" and obj.num_samples(obj.calib_data) == 48
    assert load_workload(obj) is obj
    with pytest.raises(BadInput, match="takes no options"):
        load_workload("usermodels:WORKLOAD", {"calib_samples": 64}, cli=True)


def test_batch_and_dims_reach_the_workload(user_file):
    from l4opt.cli import _workload, build_parser

    a = build_parser().parse_args(["sensitivity", f"{user_file}:make_workload", "--recipe",
                                   "int8-max", "--batch", "16", "--dim", "seq=128",
                                   "--dim", "rows=7"])
    w = _workload(a)
    assert w.deploy_batch == 16 and w.dims == {"seq": 128, "rows": 7}


def _error_of(args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("args, expected", [
    # the reported case: a TypeError traceback from deep inside the built-in's factory
    (["sweep", "digits-cnn", "--eval-samples", "10"],
     ["does not take --eval-samples", "it takes: --calib-samples"]),
    # the error offers only what the CLI can do: no "pass an l4opt.Workload"
    (["sweep", "no-such-workload"], ["unknown workload 'no-such-workload'", "minilm",
                                     "pkg.module:make_workload", "path/to/file.py:"]),
    (["sweep", "mine.py"], ["'mine.py:make_workload'"]),
    (["sweep", "/no/such/dir/model.py:make"], ["no file /no/such/dir/model.py"]),
    (["sweep", "no_such_pkg_l4opt.models:make"], ["no module named 'no_such_pkg_l4opt'"]),
    (["sweep", "{f}:nothing_here"], ["has no 'nothing_here'", "make_workload"]),
    (["sweep", "{f}:broken"], ["'{f}:broken' raised KeyError", "usermodels.py:"]),
    (["sweep", "{f}:not_a_workload"], ["returned a int, not an l4opt.Workload"]),
    (["sweep", "{f}:WORKLOAD", "--calib-samples", "64"], ["takes no options (--calib-samples)"]),
    # a named axis the model does not have: refused before any trial runs
    (["sweep", "{f}:make_workload", "--recipes", "baseline", "--dim", "seq=128"], ["seq"]),
    (["sensitivity", "{f}:make_team", "--recipe", "int8-max", "--eval-samples", "10",
      "--calib-samples", "64", "--recipe", "int9"], ["unknown recipe 'int9'"]),
])
def test_bad_workloads_and_options_are_refused_clearly(args, expected, user_file, capsys):
    args = [a.replace("{f}", str(user_file)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("l4opt: error: ")
    for text in expected:
        assert text.replace("{f}", str(user_file)) in err, err


@pytest.mark.parametrize("args, expected", [
    (["sweep", "digits-cnn", "--calib-samples", "-3"], "-3 is not allowed: give a number >= 1"),
    (["sweep", "digits-cnn", "--calib-samples", "0"], "0 is not allowed"),
    (["sweep", "digits-cnn", "--eval-samples", "many"], "'many' is not a whole number"),
    (["sweep", "digits-cnn", "--batch", "0"], "--batch: 0 is not allowed"),
    (["search", "digits-cnn", "--recipe", "int8", "--max-drop", "0.01", "--eval-samples", "-1"],
     "--eval-samples: -1 is not allowed"),
    (["sensitivity", "digits-cnn", "--recipe", "int8", "--dim", "seq"], "'seq': give NAME=VALUE"),
    (["estimate", "--onnx", "m.onnx", "--dim", "seq=-4"], "-4 is not allowed"),
])
def test_zero_negative_and_malformed_numbers_are_refused(args, expected, capsys):
    err = _error_of(args, capsys)
    assert expected in err and "Traceback" not in err


def test_the_reported_case_from_a_shell_has_no_traceback():
    p = subprocess.run([sys.executable, "-m", "l4opt.cli", "sweep", "digits-cnn",
                        "--eval-samples", "10"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "does not take --eval-samples" in p.stderr


def test_report_to_an_unwritable_place_is_a_clear_error(swept, tmp_path, capsys):
    run, args = swept
    if not (run / "results.sqlite").exists():
        assert main(args) == 0
        capsys.readouterr()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out in (blocker / "x.html", Path("/proc/l4opt-no-such/x.html")):
        assert main(["report", str(run), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "cannot write the report to" in err, err
        assert "-o/--output" in err
    assert main(["report", str(run), "-o", str(tmp_path / "ok.html")]) == 0
    assert (tmp_path / "ok.html").stat().st_size > 10_000


HOSTILE_NAMES = ["team/mlp-v2", "../../x", "..", "my model v2", "модель-ü-模型", "a" * 300,
                 "/etc/passwd", "C:\\evil", ""]


def test_saved_json_names_never_become_paths(tmp_path):
    run = tmp_path / "run"
    paths = [_save_json(run, "lint", n, {"name": n}) for n in HOSTILE_NAMES]
    for n, p in zip(HOSTILE_NAMES, paths):
        assert p.parent == run / "lint" and p.exists(), n
        assert len(p.name) < 120 and p.name.isascii() and " " not in p.name
        assert json.loads(p.read_text())["name"] == n
    assert len(set(paths)) == len(HOSTILE_NAMES)  # names that slug alike stay apart
    outside = {p for p in tmp_path.rglob("*") if run not in p.parents and p != run}
    assert outside == set()


def test_lint_of_a_strangely_named_export_stays_in_the_run(trtexec_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "exports"
    d.mkdir()
    g = d / "my engine ü v2.graph.json"
    shutil.copy(trtexec_dir / "mobilenet.qat.onnx.engine.graph.json", g)
    assert main(["lint", str(g), "--out", str(tmp_path / "run"), "--json"]) == 0
    (saved,) = (tmp_path / "run" / "lint").glob("*.json")
    assert saved.name.startswith("my-engine-u-v2") and " " not in saved.name


# ------------------------------------------------------------------ names through sensitivity
# (sensitivity's file names are searches.py's; this checks the end result, as a user sees it)

def _files_outside(root: Path, run: Path) -> set:
    return {p for p in root.rglob("*") if p != run and run not in p.parents}


@pytest.mark.parametrize("factory", ["make_team", "make_escape"])
def test_sensitivity_of_a_workload_with_a_path_like_name_writes_inside_the_run(
        factory, user_file, tmp_path, capsys):
    root = tmp_path / "a" / "b"
    run = root / "run"
    assert main(["sensitivity", f"{user_file}:{factory}", "--recipe", "int8-max", "--out",
                 str(run), "--eval-samples", "64", "--calib-samples", "64", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["workload"] in ("team/mlp-v2", "../../x") and d["layers"]
    saved = list((run / "sensitivity").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["workload"] == d["workload"]
    assert _files_outside(tmp_path, run) == {tmp_path / "a", root}


def test_sensitivity_from_python_with_a_path_like_name(user_file, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))
    w = load_workload("usermodels:make_escape", {"calib_samples": 64})
    run = tmp_path / "a" / "b" / "run"
    res = l4opt.sensitivity(w, "int8-max", run, eval_samples=64, progress=False)
    assert res.layers and len(list((run / "sensitivity").glob("*.json"))) == 1
    assert _files_outside(tmp_path, run) == {tmp_path / "a", tmp_path / "a" / "b"}


# ------------------------------------------------------------------ the first install is the product

def test_notebooks_widgets_and_reports_are_base_dependencies():
    tomllib = pytest.importorskip("tomllib")

    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=~!\[ ;]", d, maxsplit=1)[0].lower() for d in meta["dependencies"]}
    for pkg in ("jupyterlab", "ipywidgets", "plotly", "papermill", "nbformat", "nbclient",
                "ipykernel", "anywidget"):
        assert pkg in base, pkg
    extras = meta["optional-dependencies"]
    assert {"gpu", "ray", "test"} <= set(extras)
    assert not any("plotly" in d or "jupyterlab" in d for d in extras["test"])


def test_jupyter_lab_is_installed_and_import_stays_light():
    p = subprocess.run([sys.executable, "-m", "jupyterlab", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and re.match(r"4\.\d+", p.stdout.strip()), p.stderr
    code = ("import sys, l4opt, l4opt.cli, l4opt.spec.recipes, l4opt.ui.tables, l4opt.spec.loader, "
            "l4opt.spec.names; l4opt.cli.build_parser(); heavy = [m for m in ('torch', 'modelopt', "
            "'tensorrt', 'ipywidgets', 'plotly', 'jupyterlab', 'papermill', 'onnxruntime', "
            "'pandas') if m in sys.modules]; print(heavy)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "[]", (p.stdout, p.stderr)


def test_a_users_file_workload_reaches_ray_workers(user_file, tmp_path):
    """Ray workers cannot import the user's file: its code travels by value (checked in a fresh
    interpreter that has never seen the file, as a Ray worker would be)."""
    cloudpickle = pytest.importorskip("ray.cloudpickle", reason="the ray extra is not installed")
    from l4opt.spec.loader import ship_by_value

    w = load_workload(f"{user_file}:make_workload", {"calib_samples": 40})
    ship_by_value()
    blob = tmp_path / "workload.pkl"
    blob.write_bytes(cloudpickle.dumps(w))
    code = ("import pickle, sys, numpy as np; w = pickle.load(open(sys.argv[1], 'rb')); "
            "o = np.eye(2)[w.eval_labels]; print(w.name, w.num_samples(w.calib_data), "
            "w.metric(o, o, w.eval_labels))")
    p = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr[-1500:]
    assert p.stdout.split() == ["cancer-mlp", "40", "1.0"]


def test_search_of_a_workload_named_like_a_path_writes_inside_the_run(user_file, tmp_path, capsys):
    run = tmp_path / "a" / "b" / "run"
    rc = main(["search", f"{user_file}:make_escape", "--recipe", "int8-max", "--out", str(run),
               "--max-drop", "0.05", "--strategy", "greedy", "--eval-samples", "64",
               "--calib-samples", "64", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and d["workload"] == "../../x"
    recipe = Path(d["recipe_path"])
    assert run in recipe.parents and recipe.exists() and ".." not in recipe.name
    assert _files_outside(tmp_path, run) == {tmp_path / "a", tmp_path / "a" / "b"}


@pytest.mark.parametrize("budget, expected", [
    (["--max-drop", "-0.1"], "--max-drop -0.1 is not a drop"),
    (["--max-drop", "nan"], "--max-drop nan is not a drop"),
    (["--min-cosine", "1.5"], "--min-cosine 1.5 is outside [-1, 1]"),
    (["--min-cosine", "-2"], "--min-cosine -2.0 is outside [-1, 1]"),
])
def test_an_unmeetable_search_budget_is_refused_before_any_work(budget, expected, tmp_path,
                                                                capsys):
    run = tmp_path / "run"
    assert main(["search", "digits-cnn", "--recipe", "int8", *budget, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("l4opt: error: ") and expected in err and "Traceback" not in err
    assert not run.exists()  # refused up front: no search ran, nothing written
