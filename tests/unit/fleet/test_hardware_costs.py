"""GPU specs as data, what each GPU runs, prices and power."""
from __future__ import annotations

import json
import math

import pytest

from l4opt.errors import BadInput
from l4opt.fleet import costs
from l4opt.latency import hardware
from l4opt.latency import costmodel


def test_table_has_every_gpu_with_sources_and_a_schema():
    g = hardware.gpus()
    for name in ("L4", "T4", "A10G", "L40S", "A100", "H100"):
        assert name in g
        spec = g[name]
        assert isinstance(spec, costmodel.GPUSpec)
        assert spec.sources["source_identity"] and spec.sources["source_tensor"]
        assert spec.status and spec.tdp_w > 0 and spec.bandwidth_gbs > 0
    assert hardware.SCHEMA == 1
    assert hardware.get("nvidia a100-80gb-sxm4").name == "A100"
    assert hardware.get("h100-sxm5").name == "H100"


def test_precisions_follow_the_tensorrt_rules_per_arch():
    g = hardware.gpus()
    for spec in g.values():
        cc = hardware.cc_tuple(spec.compute_capability)
        assert spec.supports("fp8") == (cc >= (8, 9)), spec.name
        assert spec.supports("bf16") == (cc >= (8, 0)), spec.name
        assert spec.supports("int8") and spec.supports("fp16")
    assert not g["T4"].supports("tf32")
    # no TF32 on Turing: FP32 layers at the CUDA-core rate, not half the FP16 tensor rate
    assert g["T4"].peak("fp32") == pytest.approx(8.1e12)
    assert g["A10G"].peak("fp32") == pytest.approx(35e12)


@pytest.mark.parametrize("gpu,what,runs,words", [
    ("T4", "fp8", "fp16", "would run at FP16 on T4"),
    ("A10G", ["float8e4m3fn"], "fp16", "no FP8 tensor cores on Ampere"),
    ("A100", "fp8", "fp16", "estimated as the FP16 baseline"),
    ("T4", ["float8e4m3fn", "int8"], "int8", "FP8 layers would run at FP16"),
    ("L4", "fp8", "fp8", ""),
    ("L40S", ["float8e4m3fn"], "fp8", ""),
    ("H100", "fp8", "fp8", ""),
    ("T4", "int8", "int8", ""),
    ("A10G", [], "fp16", ""),
    ("T4", "bf16", "unsupported", "no BF16"),
    ("L4", "nvfp4", "unsupported", "Blackwell"),
])
def test_runs_as_refuses_or_reinterprets_per_gpu(gpu, what, runs, words):
    r, note = hardware.runs_as(gpu, what)
    assert r == runs
    assert words in note
    if note:
        assert gpu in note  # the note speaks of the GPU at hand


def test_unknown_gpu_and_precision_name_the_field():
    with pytest.raises(BadInput, match="gpu: unknown GPU 'V100'"):
        hardware.get("V100")
    with pytest.raises(BadInput, match="quantized_dtypes"):
        hardware.runs_as("L4", ["float13"])


def test_notes_speak_of_the_gpu_at_hand():
    notes = ["tensor-core kernels by precision: {'int8': 3}; INT8 and FP8 share the L4's dense "
             "peak (242 TOPS/TFLOPS), so they differ only through the rules above"]
    assert "L40S's dense peak (733" in hardware.speak_of(notes, "L40S")[0]
    verdict = ["FP8 and INT8 run the SAME kernels ...; only an L4 measurement can separate them"]
    assert "only a measurement on the H100" in hardware.speak_of(verdict, "H100")[0]
    assert hardware.speak_of(notes, "T4") == []


def test_default_prices_have_dates_and_sources():
    p = costs.default_prices()
    for g in ("L4", "T4", "A10G", "L40S"):
        assert p[g].on_demand > 0 and p[g].date and p[g].source
        assert p[g].custom is None


def test_price_file_overrides_and_bad_price_files(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("gpus:\n  L4: {on_demand: 0.7, custom: 0.45}\n  T4: 0.30\n")
    p = costs.load_prices(f)
    assert p["L4"].on_demand == 0.7 and p["L4"].custom == 0.45 and p["T4"].on_demand == 0.30
    assert p["A10G"].on_demand == costs.default_prices()["A10G"].on_demand
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"L4": {"custom": 0.5}}))
    assert costs.load_prices(j)["L4"].on_demand == costs.default_prices()["L4"].on_demand
    for text, field in [("gpus:\n  L4: {on_demand: -1}\n", "gpus.L4.on_demand"),
                        ("gpus:\n  L4: {date: today}\n", "gpus.L4: the price is missing"),
                        ("gpus:\n  L4: {on_demand: cheap}\n", "gpus.L4.on_demand"),
                        ("gpus:\n  V100: 1.0\n", "gpus.V100: unknown GPU"),
                        ("gpus: {}\n", "no prices found")]:
        f.write_text(text)
        with pytest.raises(BadInput, match=field.replace(".", r"\.")):
            costs.load_prices(f)
    with pytest.raises(BadInput, match="no such file"):
        costs.load_prices(tmp_path / "missing.yaml")


def test_cost_arithmetic_and_power():
    assert costs.gpus_needed(1000, 300) == 4
    assert costs.gpus_needed(900, 300) == 3
    assert math.isinf(costs.gpus_needed(10, 0))
    # one L4 at $0.8048/h serving 1000 QPS: 0.8048 / 3.6e6 * 1e6 USD per million
    assert costs.usd_per_million(0.8048, 1000) == pytest.approx(0.8048 / 3.6)
    assert costs.joules_per_inference(72, 1000) == pytest.approx(0.072)
    assert costs.power_w("L4") == (72.0, "TDP (upper bound)")
    row = {"latency_source": "measured-l4", "latency_gpu": "NVIDIA L4",
           "engine": {"telemetry": {"power_w": {"min": 50, "mean": 61.5, "max": 70}}}}
    assert costs.power_w("L4", row) == (61.5, "measured (NVML mean)")
    assert costs.power_w("T4", row)[1] == "TDP (upper bound)"
