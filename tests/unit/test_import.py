"""`import l4opt` stays light, and every submodule imports on a machine without TensorRT."""
import json
import pkgutil
import subprocess
import sys

import l4opt

HEAVY = ["torch", "modelopt", "onnx", "onnxruntime", "tensorrt", "ipywidgets", "plotly", "ray",
         "transformers"]


def _loaded_after(stmt: str) -> list[str]:
    code = f"import sys, json; {stmt}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_l4opt_loads_no_heavy_dependency():
    assert _loaded_after("import l4opt") == []


def test_listing_names_loads_no_heavy_dependency():
    assert _loaded_after("import l4opt.spec.workloads, l4opt.spec.recipes; "
                         "l4opt.spec.workloads.names(); l4opt.spec.recipes.names(); "
                         "l4opt.spec.recipes.get('fp8')") == []


def test_every_submodule_imports_without_tensorrt():
    names = [m.name for m in pkgutil.walk_packages(l4opt.__path__, "l4opt.")]
    assert {"l4opt.run.sweep", "l4opt.spec.workloads", "l4opt.latency.trt",
            "l4opt.pipeline.trial"} <= set(names)
    code = ("import importlib, sys; sys.modules['tensorrt'] = None\n"
            f"for n in {names!r}: importlib.import_module(n)\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_lazy_verbs_resolve_to_functions():
    import l4opt.run.sweep  # noqa: F401 - importing the module must not shadow the verb

    assert callable(l4opt.sweep) and l4opt.sweep.__module__ == "l4opt.run.sweep"
