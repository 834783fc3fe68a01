"""What every study shares: outputs by name, drift measures, the checked workload and recipe, logs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from l4opt.errors import BadInput
from l4opt.pipeline.drift import one_sample_step, task_delta, tensor_metrics
from l4opt.spec.loader import load_workload
from l4opt.spec.names import safe_filename
from l4opt.spec.recipes import Recipe, get
from l4opt.spec.workloads import Workload


def one_output(x: dict):
    """One output's array as is (metrics written for one array); several stay a dict."""
    return next(iter(x.values())) if len(x) == 1 else x


def subset(d: dict, k: int) -> dict:
    return {n: a[:k] for n, a in d.items()}


def measure(w: Workload, out: dict, ref: dict, labels, ref_metric: float) -> dict:
    metric = w.metric(one_output(out), one_output(ref), labels)
    m = tensor_metrics(one_output(out), one_output(ref))
    n = len(next(iter(out.values()))) if out else 0
    # the sample count and one sample's weight, as a trial row carries them
    m.update(metric=metric, metric_ref=ref_metric, metric_samples=n,
             metric_one_sample=one_sample_step(n),
             **task_delta(metric, ref_metric, w.metric.higher_is_better))
    return m


def reference_outputs(w: Workload, data: dict, progress: bool, tty=None) -> dict:
    """The FP32 torch model's outputs by name on `data`."""
    from l4opt.pipeline.runners import TorchRunner, run_all

    return run_all(TorchRunner(w.module(), output_names=w.output_names), w.batches(data),
                   desc="reference (fp32)", progress=progress, file=tty)


def default_eval_samples(w: Workload) -> int:
    return 128 if w.name == "minilm" else w.num_samples(w.eval_data)


def prepare(workload, recipe, eval_samples) -> tuple[Workload, Recipe]:
    """The checked workload and quantizing recipe a study starts from."""
    check_eval_samples(eval_samples)
    # a built-in name, 'pkg.module:fn' or 'file.py:fn', as sweep() takes it
    w = load_workload(workload) if isinstance(workload, str) else workload
    w.validate()
    r = get(recipe)
    if not r.quantized:
        raise BadInput(f"recipe {r.name!r} quantizes nothing; choose a quantizing recipe")
    return w, r


def check_eval_samples(n) -> None:
    """None (all of the evaluation set) or a positive whole number."""
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise BadInput(f"eval_samples {n!r} must be a positive whole number (how many evaluation "
                       f"samples to use), or None for the whole evaluation set")


def log_file(run_dir, kind: str, *names) -> Path:
    """Where ModelOpt's and ONNX Runtime's output goes while a study runs (they print to the
    process's stdout/stderr): RUN_DIR/logs/KIND-NAMES.log, or a temporary file without a run
    directory. Appended to; its path is in the result."""
    import tempfile

    if run_dir:
        d = Path(run_dir) / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d / safe_filename(kind, *names, suffix=".log")
    fd, path = tempfile.mkstemp(prefix=f"l4opt-{kind}-", suffix=".log")
    import os

    os.close(fd)
    return Path(path)
