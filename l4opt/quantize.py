"""ModelOpt torch PTQ (mtq.quantize) and ONNX PTQ (modelopt.onnx.quantization) behind one module."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
from typing import Callable

import numpy as np

from .errors import BadInput, StageFailed
from .recipes import Recipe


def torch_config(recipe: Recipe) -> dict:
    """The ModelOpt quantize config for a torch-PTQ recipe, built from ModelOpt's named preset."""
    import modelopt.torch.quantization as mtq

    cfg = copy.deepcopy(getattr(mtq, recipe.torch_preset()))
    if recipe.algorithm == "smoothquant":
        cfg["algorithm"] = {"method": "smoothquant", "alpha": recipe.smoothquant_alpha}
    else:
        # entropy / percentile start from max and recalibrate activations from histograms
        cfg["algorithm"] = "max"
    for pattern in recipe.disabled_layers:
        cfg["quant_cfg"].append({"quantizer_name": f"{pattern}.*", "enable": False})
    return cfg


def quantize_torch(model, recipe: Recipe, forward_loop: Callable, progress=None):
    """Insert quantizers into `model` (in place) and calibrate them with `forward_loop(model)`."""
    import modelopt.torch.quantization as mtq

    if not recipe.quantized or recipe.path != "torch-ptq":
        raise BadInput(f"recipe {recipe.name!r} is not a torch-PTQ recipe")
    cfg = torch_config(recipe)
    with _quiet():
        model = mtq.quantize(model, cfg, forward_loop)
    if recipe.algorithm in ("entropy", "percentile"):
        _histogram_recalibrate(model, recipe, forward_loop)
    return model


def quantizers(model) -> dict[str, object]:
    """Enabled TensorQuantizers of a quantized model, by module name."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    return {n: m for n, m in model.named_modules()
            if isinstance(m, TensorQuantizer) and m.is_enabled}


def quantized_layers(model) -> list[str]:
    """Names of the modules that own at least one enabled quantizer (one 'layer' each)."""
    layers = []
    for name in quantizers(model):
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner and owner not in layers:
            layers.append(owner)
    return layers


def _histogram_recalibrate(model, recipe: Recipe, forward_loop: Callable) -> None:
    """Replace max amax of activation quantizers with entropy/percentile amax from histograms."""
    from modelopt.torch.quantization.calib import HistogramCalibrator

    enabled = quantizers(model)
    acts = {n: q for n, q in enabled.items() if n.endswith("input_quantizer")}
    for q in acts.values():
        q._calibrator = HistogramCalibrator(num_bits=q.num_bits, axis=None, unsigned=q.unsigned)
    # collect with every quantizer off, as ModelOpt's own calibration does: each scale then
    # depends on its own layer only, whichever other layers end up quantized
    for q in enabled.values():
        q.disable_quant()
    for q in acts.values():
        q.enable_calib()
    try:
        forward_loop(model)
        for name, q in acts.items():
            try:
                if recipe.algorithm == "entropy":
                    q.load_calib_amax("entropy")
                else:
                    q.load_calib_amax("percentile", percentile=recipe.percentile)
            except RuntimeError as exc:
                raise StageFailed("calibration", f"quantizer {name} saw no data: {exc}") from exc
    finally:
        for q in enabled.values():
            q.enable_quant()
        for q in acts.values():
            q.disable_calib()


def quantize_onnx(onnx_in: str, onnx_out: str, recipe: Recipe,
                  calib_data: dict[str, np.ndarray]) -> None:
    """ModelOpt ONNX PTQ with explicit calibration data (never ModelOpt's random fallback)."""
    import modelopt.onnx.quantization as moq

    if recipe.path != "onnx-ptq":
        raise BadInput(f"recipe {recipe.name!r} is not an ONNX-PTQ recipe")
    if not calib_data or min(len(v) for v in calib_data.values()) == 0:
        raise BadInput("ONNX PTQ needs calibration data; ModelOpt would calibrate on random "
                       "inputs without it")
    try:
        with _quiet():
            moq.quantize(
                onnx_in, quantize_mode=recipe.format, calibration_method=recipe.algorithm,
                calibration_data=dict(calib_data), calibration_eps=["cpu"],
                high_precision_dtype=recipe.high_precision_dtype,
                nodes_to_exclude=list(recipe.nodes_to_exclude) or None,
                output_path=onnx_out, log_level="ERROR")
    except Exception as exc:
        raise StageFailed("onnx-ptq", f"ModelOpt ONNX quantization ({recipe.format}, "
                          f"{recipe.algorithm}) failed: {type(exc).__name__}: {exc}",
                          onnx_in) from exc


@contextlib.contextmanager
def _quiet():
    """Keep ModelOpt's per-quantizer chatter out of the user's terminal (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("modelopt", "modelopt.onnx", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
