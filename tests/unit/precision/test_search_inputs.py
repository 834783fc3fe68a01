"""What a search is given reaches every part of it: a `file.py:fn` workload loads as sweep()
loads it, and the deployment batch and dims reach the torch study's calibration, its candidates'
latency and the confirming sweep."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

import l4opt
from l4opt.precision.common import prepare
from l4opt.precision.torch_study import Calibrated
from l4opt.spec.workloads import Workload

USER_FILE = textwrap.dedent('''
    import numpy as np
    import torch
    from l4opt import InputSpec, Metric, Workload

    def make_workload(calib_samples=48):
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                    torch.nn.Linear(32, 8))
        x = rng.standard_normal((calib_samples + 32, 16)).astype(np.float32)
        return Workload(
            name="user-mlp", model=model, inputs=[InputSpec("x", ("batch", 16))],
            calib_data={"x": x[:calib_samples]}, eval_data={"x": x[calib_samples:]},
            metric=Metric("mse", lambda o, r, l: float(np.mean((o - r) ** 2)),
                          higher_is_better=False),
            batch_size=8, batch_range=(1, 8, 32))
''')


def test_a_search_takes_a_file_workload_as_sweep_does(tmp_path):
    f = tmp_path / "my_model.py"
    f.write_text(USER_FILE)
    w, r = prepare(f"{f}:make_workload", "int8-max", None)
    assert isinstance(w, Workload) and w.name == "user-mlp" and r.name == "int8-max"


def test_the_torch_study_calibrates_at_the_asked_deployment_batch(tmp_path):
    f = tmp_path / "my_model.py"
    f.write_text(USER_FILE)
    w, r = prepare(f"{f}:make_workload", "int8-max", None)
    seen = []
    w.module()[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    cal = Calibrated(w, r, 16, False, batch=24)
    assert cal.shapes.batch == 24
    # first the FP32 reference on the 16 evaluation samples (batch_size 8), then calibration at
    # the deployment batch (48 samples -> 24 + 24), not at batch_size
    assert seen[:4] == [8, 8, 24, 24], seen[:6]


@pytest.mark.slow
def test_search_batch_reaches_candidates_and_the_confirming_sweep(tmp_path):
    f = tmp_path / "my_model.py"
    f.write_text(USER_FILE)
    res = l4opt.search(f"{f}:make_workload", "int8-max",
                       l4opt.precision.api.Budget(max_drop=1.0), tmp_path / "run",
                       strategy="greedy", eval_samples=16, progress=False, batch=24)
    assert res.final_row["latency_batch"] == 24, res.final_row.get("latency_batch")
    assert res.final_row["shapes"]["batch"] == 24
    priced = [c for c in res.candidates if c.get("latency_ms")]
    assert priced and all(c["latency_batch"] == 24 for c in priced)
    assert np.isfinite(res.final_row["cos_mean"])
