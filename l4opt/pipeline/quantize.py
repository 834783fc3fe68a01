"""ModelOpt torch PTQ (mtq.quantize) and ONNX PTQ (modelopt.onnx.quantization) behind one module."""
from __future__ import annotations

import contextlib
import copy
import errno
import io
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from l4opt import env
from l4opt.errors import BadInput, StageFailed
from l4opt.files import os_error
from l4opt.spec.recipes import Recipe


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


UNCALLED_REASON = ("never called during calibration: its module's forward does not use it "
                   "(e.g. nn.MultiheadAttention applies out_proj's weight functionally through "
                   "F.multi_head_attention_forward, so ModelOpt's QuantLinear never runs); it "
                   "stays in high precision")
NO_AMAX_REASON = "called during calibration but ModelOpt recorded no amax for it"


@contextlib.contextmanager
def no_fastpath():
    """PyTorch's fused inference fast path off (nn.TransformerEncoder(Layer) and
    nn.MultiheadAttention in eval mode under no_grad run one aten kernel that never calls their
    submodules, so ModelOpt's quantizers would neither calibrate nor fake-quantize)."""
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def _slow_path_hook(module, args):
    """A no-op forward pre-hook: its presence alone makes nn.TransformerEncoderLayer take its
    module-by-module path (PyTorch skips the fast path when hooks are attached)."""
    return None


def keep_slow_path(model) -> None:
    """Make a quantized model run its quantizers whoever calls it, without global state:
    every nn.TransformerEncoderLayer gets a no-op pre-hook (its fast path checks for hooks) and
    every nn.TransformerEncoder stops converting to nested tensors. The hooks survive deepcopy."""
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False
        if isinstance(m, nn.TransformerEncoderLayer) and not getattr(m, "_l4opt_slow", False):
            m.register_forward_pre_hook(_slow_path_hook)
            m._l4opt_slow = True


def _all_quantizers(model) -> dict[str, object]:
    from modelopt.torch.quantization.nn import TensorQuantizer

    return {n: m for n, m in model.named_modules() if isinstance(m, TensorQuantizer)}


def missing_amax(model) -> list[str]:
    """Enabled quantizers with no calibrated amax right now (ONNX export would refuse them)."""
    return [n for n, q in quantizers(model).items()
            if getattr(q, "amax", None) is None and not getattr(q, "_dynamic", False)]


def uncalibrated_quantizers(model) -> list[dict]:
    """[{"quantizer", "reason"}] that quantize_torch found uncalibrated and disabled."""
    return list(getattr(model, "_l4opt_uncalibrated", []))


def _advice(recipe: Recipe, model, exc: Exception) -> str:
    """What to do about a ModelOpt calibration error, specific where the cause is known."""
    import torch.nn as nn

    if recipe.algorithm == "smoothquant" and isinstance(exc, IndexError):
        zero = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
                and bool((m.weight.detach().abs().amax(0) == 0).any())]
        if zero and recipe.smoothquant_alpha < 1:
            return (f"layer(s) {', '.join(map(repr, zero[:5]))} have an all-zero weight column, so "
                    f"SmoothQuant's scale (weight_max^(1-alpha) / act_max^alpha, alpha "
                    f"{recipe.smoothquant_alpha}) is 0 there and ModelOpt 0.47's zero-scale "
                    f"masking indexes it with a mask of the wrong shape; use smoothquant_alpha "
                    f"1.0, add those layers to disabled_layers, or use int8-max")
    other = "fp8-torch" if recipe.name == "int8-max" else "int8-max"
    return (f"ModelOpt's {recipe.algorithm} calibration for {recipe.format} cannot handle this "
            f"model; try another recipe (e.g. {other}), or disable the layer named in the "
            f"traceback with the recipe's disabled_layers (the trial log holds the traceback)")


class _ForwardFailed(Exception):
    """The user's forward loop (their model or data) raised during calibration."""


def quantize_torch(model, recipe: Recipe, forward_loop: Callable, progress=None):
    """Insert quantizers into `model` (in place) and calibrate them with `forward_loop(model)`.

    The loop runs with PyTorch's fused fast path off (no_fastpath) and the quantized model is
    made to keep it off (keep_slow_path), so every quantizer sees data and runs when evaluated.
    Enabled quantizers that calibration never reached (never called, or no amax) are disabled
    and listed in `model._l4opt_uncalibrated` ([{quantizer, reason}], see
    uncalibrated_quantizers). A ModelOpt error becomes StageFailed("calibration", ...)."""
    import modelopt.torch.quantization as mtq

    if not recipe.quantized or recipe.route != "torch-ptq":
        raise BadInput(f"recipe {recipe.name!r} is not a torch-PTQ recipe")
    cfg = torch_config(recipe)
    called: set[str] = set()

    def loop(m):
        hooks = [q.register_forward_hook(lambda *_, n=n: called.add(n))
                 for n, q in _all_quantizers(m).items()]
        try:
            with no_fastpath():
                forward_loop(m)
        except Exception as exc:  # noqa: BLE001 - told apart from ModelOpt's own errors
            raise _ForwardFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            for h in hooks:
                h.remove()

    def disable_unreached(m):
        no_amax = set(missing_amax(m))
        bad = [{"quantizer": n, "reason": UNCALLED_REASON if n not in called else NO_AMAX_REASON}
               for n in quantizers(m) if n not in called or n in no_amax]
        found = quantizers(m)
        for b in bad:
            found[b["quantizer"]].disable()
        m._l4opt_uncalibrated = bad

    keep_slow_path(model)
    try:
        with _quiet():
            model = mtq.quantize(model, cfg, loop)
        disable_unreached(model)
        if recipe.algorithm in ("entropy", "percentile"):
            _histogram_recalibrate(model, recipe, loop)
    except _ForwardFailed as exc:
        raise StageFailed("calibration", f"the model's forward pass raised during calibration "
                          f"(with ModelOpt's quantizers inserted): {exc}; check that the "
                          f"calibration data fit the model's inputs (the trial log holds the "
                          f"traceback)") from exc.__cause__
    except (StageFailed, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - ModelOpt's error, explained
        raise StageFailed("calibration", f"ModelOpt {recipe.torch_preset()} ({recipe.algorithm}) "
                          f"raised {type(exc).__name__}: {exc}; {_advice(recipe, model, exc)}"
                          ) from exc
    keep_slow_path(model)
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


def calibration_shapes(shapes, n_calib: int) -> tuple[str | None, int]:
    """ModelOpt's `calibration_shapes` spec ("x:64x30,mask:64x128") at the deployment batch
    (at most the calibration set's size), and that batch. ModelOpt otherwise sets every
    dynamic axis to 1, and its GEMV rule then excludes every MatMul of an MLP."""
    if shapes is None:
        return None, 1
    b = max(1, min(int(shapes.batch), int(n_calib)))
    spec = ",".join(f"{name}:{'x'.join(str(b if i == 0 else d) for i, d in enumerate(dims))}"
                    for name, dims in shapes.inputs.items())
    return spec, b


def quantize_onnx(onnx_in: str, onnx_out: str, recipe: Recipe,
                  calib_data: dict[str, np.ndarray], *, shapes=None, log=None) -> dict:
    """ModelOpt ONNX PTQ with explicit calibration data (never ModelOpt's random fallback), at
    the deployment batch of `shapes`. ModelOpt's log (DEBUG) is appended to `log`; returns
    {"calib_batch": int, "reasons": {node: ModelOpt's reason for leaving it out}}.

    ModelOpt writes intermediate models beside its input and output (`*_reconciled.onnx`,
    `*_opset19.onnx`, `*_named.onnx`, temporary files) and removes them only on success: it
    works in a private directory beside `onnx_out`, removed whatever happens, and a write that
    fails (disk full, permissions) is a StageFailed naming the file and the step."""
    import modelopt.onnx.quantization as moq

    if recipe.route != "onnx-ptq":
        raise BadInput(f"recipe {recipe.name!r} is not an ONNX-PTQ recipe")
    n = min(len(v) for v in calib_data.values()) if calib_data else 0
    if n == 0:
        raise BadInput("ONNX PTQ needs calibration data; ModelOpt would calibrate on random "
                       "inputs without it")
    spec, batch = calibration_shapes(shapes, n)
    buf = io.StringIO()
    out = Path(onnx_out)
    work = _work_dir(out.parent)
    step = ("copying the FP32 graph for ModelOpt", "the copy of the FP32 graph")
    try:
        # ModelOpt rewrites the file it is given (shape inference, node names): give it a
        # copy, so the shared FP32 export keeps the content its hash and trial keys record
        src = work / Path(onnx_in).name
        shutil.copyfile(onnx_in, src)
        data = Path(str(onnx_in) + ".data")
        if data.exists():
            shutil.copyfile(data, work / data.name)
        step = (f"ModelOpt ONNX PTQ ({recipe.format}, {recipe.algorithm})",
                "an intermediate model")
        with _quiet(buf), _temp_files_in(work):
            moq.quantize(
                str(src), quantize_mode=recipe.format, calibration_method=recipe.algorithm,
                calibration_data=dict(calib_data), calibration_eps=["cpu"],
                calibration_shapes=spec,
                high_precision_dtype=recipe.high_precision_dtype,
                nodes_to_exclude=list(recipe.nodes_to_exclude) or None,
                output_path=str(work / out.name), log_level="DEBUG")
        step = ("moving ModelOpt's result beside its artifact", "the Q/DQ graph")
        for name in (out.name, out.name + "_data"):  # its external weights, when it wrote them
            if (work / name).exists():
                os.replace(work / name, out.parent / name)
    except Exception as exc:
        write = _write_error(exc, work, step)
        if write is not None:
            raise StageFailed("onnx-ptq", write, onnx_in) from exc
        raise StageFailed("onnx-ptq", f"ModelOpt ONNX quantization ({recipe.format}, "
                          f"{recipe.algorithm}) failed: {type(exc).__name__}: {exc}",
                          onnx_in) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if log is not None:
            with contextlib.suppress(OSError):  # a full disk: the error above says so
                with open(log, "a") as f:
                    f.write(f"l4opt: ModelOpt ONNX PTQ {recipe.format}/{recipe.algorithm} with "
                            f"calibration_shapes={spec!r} (the deployment batch {batch})\n")
                    f.write(buf.getvalue())
    return {"calib_batch": batch, "reasons": exclusion_reasons(buf.getvalue(), recipe, batch)}


_WORK_PREFIX = ".l4opt-ptq-"


def _work_dir(parent: Path) -> Path:
    """A fresh private directory in `parent` for ModelOpt's files; ones a killed process of
    this host left there are removed first."""
    from l4opt.files import _host, pid_alive

    host = _host()
    for old in parent.glob(f"{_WORK_PREFIX}{host}-*"):
        pid = old.name[len(_WORK_PREFIX) + len(host) + 1:].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    try:
        return Path(tempfile.mkdtemp(prefix=f"{_WORK_PREFIX}{host}-{os.getpid()}-",
                                     dir=parent))
    except OSError as exc:
        raise StageFailed("onnx-ptq", str(os_error(exc, parent, "ModelOpt's work directory"))
                          ) from exc


# a failed write, by errno and by the text of an error that carries no errno (native code)
_WRITE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG,
                 errno.EACCES, errno.EPERM, errno.EROFS}
_WRITE_TEXTS = {"No space left on device": errno.ENOSPC, "File too large": errno.EFBIG,
                "Disk quota exceeded": getattr(errno, "EDQUOT", errno.ENOSPC),
                "Permission denied": errno.EACCES, "Read-only file system": errno.EROFS}


def _write_error(exc: BaseException, work: Path, step: tuple[str, str]) -> str | None:
    """For an error that is a failed write (disk full, size limit, permissions): the step, the
    file (the one the OSError names, else the newest in `work`: the one being written when it
    failed) and why; None for any other error."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        oserr = exc
    else:
        code = next((c for t, c in _WRITE_TEXTS.items() if t in str(exc)), None)
        if code is None:
            return None
        oserr = OSError(code, os.strerror(code))
    # a two-path OSError (shutil.copyfile's) names the source first and the destination second
    path = getattr(exc, "filename2", None) or getattr(exc, "filename", None)
    if not path:
        files = [p for p in work.rglob("*") if p.is_file()] if work.exists() else []
        path = max(files, key=lambda p: p.stat().st_mtime_ns) if files else work
    return f"{step[0]}: {os_error(oserr, path, step[1])} (its partial files were removed)"


_REASONS = [
    (re.compile(r"Excluding small-dim MatMul from quantization: (.+?) \((N=.*?, K=.*?), "
                r"threshold=(\d+)\)"),
     lambda m: f"small GEMM ({m[2]}; ModelOpt skips K or N < {m[3]}): no INT8/FP8 Tensor "
               f"Core gain"),
    (re.compile(r"Skipped quantizing conv: (.+?) due to non-constant weight"),
     lambda m: "conv with a non-constant weight (ModelOpt)"),
    (re.compile(r"Found Conv with I/O channel size less than 16: (.+)$"),
     lambda m: "conv with fewer than 16 input/output channels (ModelOpt)"),
    (re.compile(r"Found large filter conv for FP8: (.+)$"),
     lambda m: "FP8 conv with a filter larger than 32 taps (ModelOpt)"),
    (re.compile(r"Excluding small-channel Conv from FP8 quantization: (.+?) \((.*)\)"),
     lambda m: f"small-channel conv for FP8 ({m[2]}) (ModelOpt)"),
]


def exclusion_reasons(log_text: str, recipe: Recipe, batch: int) -> dict[str, str]:
    """Per excluded node, ModelOpt's reason, read from its DEBUG log of one quantize call."""
    import ast

    reasons: dict[str, str] = {}
    for line in log_text.splitlines():
        msg = line.split(" - DEBUG - ", 1)[-1].split(" - INFO - ", 1)[-1].strip()
        for rx, why in _REASONS:
            m = rx.search(msg)
            if m:
                reasons.setdefault(m[1].strip(), why(m))
                break
        else:
            for head, why in (("Matmul nodes to exclude: ",
                               f"GEMV at the calibration batch {batch} (M or N = 1): no Tensor "
                               f"Core gain, so ModelOpt leaves it unquantized for TensorRT"),
                              ("Matmul nodes From MHA to exclude: ",
                               "attention MatMul outside TensorRT's fused-MHA pattern "
                               "(ModelOpt)")):
                if msg.startswith(head):
                    try:
                        names = ast.literal_eval(msg[len(head):])
                    except (ValueError, SyntaxError):
                        names = []
                    for name in names:
                        reasons.setdefault(str(name), why)
    return reasons


def explain_unquantized(gemms: list[str], quantized: list[str], reasons: dict,
                        recipe: Recipe, graph=None) -> list[dict]:
    """[{node, reason}] for every GEMM/conv node left in high precision. With the FP32 graph
    (`graph`), a conv's reason says what the conv is (depthwise with its channel count),
    since ModelOpt's own message counts channels per group."""
    from l4opt.spec.recipes import match_table

    done = set(quantized)
    convs = _conv_shapes(graph) if graph is not None else {}
    excluded = match_table(recipe.nodes_to_exclude, gemms, "nodes_to_exclude")
    out = []
    for node in gemms:
        if node in done:
            continue
        why = reasons.get(node)
        if convs.get(node) and (why is None or "fewer than 16" in why):
            why = convs[node] + ("; ModelOpt left it out because it counts channels per group "
                                 "(fewer than 16)" if why else "")
        if why is None:
            pat = next((p for p in recipe.nodes_to_exclude if node in excluded.get(p, ())), None)
            why = (f"matches the recipe's nodes_to_exclude {pat!r}" if pat is not None else
                   "left in high precision by ModelOpt's Q/DQ placement (no reason in its log)")
        out.append({"node": node, "reason": why})
    return out


def _conv_shapes(graph) -> dict:
    """conv node -> '' for a plain conv, or what makes it special (depthwise, grouped), from
    its weight shape and group attribute."""
    import onnx

    g = onnx.load(str(graph), load_external_data=False).graph if not hasattr(graph, "graph") \
        else graph.graph
    dims = {i.name: list(i.dims) for i in g.initializer}
    out = {}
    for n in g.node:
        if n.op_type not in ("Conv", "ConvTranspose"):
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        w = dims.get(n.input[1]) if len(n.input) > 1 else None
        if group > 1 and w:
            cout, cin_g = w[0], w[1]
            out[n.name] = (f"depthwise conv ({cout} channels, one filter per channel): no "
                           f"INT8/FP8 tensor-core kernel worth its Q/DQ here" if cin_g == 1 else
                           f"grouped conv ({group} groups of {cin_g} input channels)")
        else:
            out[n.name] = ""
    return out


@contextlib.contextmanager
def _quiet(buf=None):
    """Keep ModelOpt's per-quantizer chatter out of the user's terminal (errors still raise);
    what it prints to stdout goes to `buf` when given."""
    loggers = [logging.getLogger(n) for n in ("modelopt", "modelopt.onnx", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    buf = io.StringIO() if buf is None else buf
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


_TEMPDIR_LOCK = threading.Lock()


@contextlib.contextmanager
def _temp_files_in(work: Path):
    """Python's temporary files (ModelOpt's mkstemp models, ONNX Runtime's calibration
    directory) made in `work` while ModelOpt runs, so a failure leaves none in /tmp. The
    setting is process-wide: another thread's default-directory temporary file made meanwhile
    lands in `work` too (l4opt runs one quantization at a time per process)."""
    with _TEMPDIR_LOCK:
        before = tempfile.tempdir
        tempfile.tempdir = str(work)
        try:
            yield
        finally:
            tempfile.tempdir = before


# ------------------------------------------------------------------ mixed INT8/FP8/FP16

# In-process memo of ModelOpt ONNX PTQ results: the same FP32 graph, calibration data, format
# recipe, shapes and package versions give the same Q/DQ graph, so a search's calibration is
# reused by the sweep of the recipe it saves (in the same process) instead of being redone.
_MEMO: dict[str, tuple[bytes, dict]] = {}
_MEMO_SIZE = 4


def _inputs_key(onnx_in, calib_data, shapes) -> str:
    """What every format's calibration of one call shares: graph bytes, data, shapes, versions
    (taken once, before ModelOpt runs)."""
    import hashlib

    h = hashlib.sha256(Path(onnx_in).read_bytes())
    for k in sorted(calib_data):
        a = np.ascontiguousarray(calib_data[k])
        h.update(f"{k}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    v = env.versions()
    h.update(repr((shapes.to_dict() if shapes is not None else None,
                   v.get("nvidia-modelopt"), v.get("onnxruntime"))).encode())
    return h.hexdigest()


def calibrate(onnx_in, workdir, recipe: Recipe, calib_data, formats, *, shapes=None,
              log=None) -> tuple[dict, dict]:
    """ModelOpt ONNX PTQ of `onnx_in` once per format -> ({fmt: QdqGraph}, {fmt: info})."""
    from l4opt.onnx.mixed import format_recipe
    from l4opt.onnx.qdq import QdqGraph

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    graphs, infos = {}, {}
    base_key = _inputs_key(onnx_in, calib_data, shapes)
    for fmt in formats:
        out = workdir / f"model.{fmt}.onnx"
        fr = format_recipe(recipe, fmt)
        key = base_key + repr(sorted(fr.identity().items()))
        if key in _MEMO:
            data, info = _MEMO[key]
            out.write_bytes(data)
            if log is not None:
                with open(log, "a") as f:
                    f.write(f"l4opt: {fmt} Q/DQ graph reused from this process's earlier "
                            f"identical ModelOpt ONNX PTQ run\n")
        else:
            info = quantize_onnx(str(onnx_in), str(out), fr, calib_data, shapes=shapes, log=log)
            _MEMO[key] = (out.read_bytes(), info)
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.pop(next(iter(_MEMO)))
        graphs[fmt] = QdqGraph(out, fmt)
        infos[fmt] = dict(info)
    return graphs, infos


def quantize_mixed_onnx(onnx_in, onnx_out, recipe: Recipe, calib_data, log=None, *,
                        shapes=None) -> dict:
    """ModelOpt ONNX PTQ with a per-layer precision map (`recipe.layer_formats`): calibrate
    once per 8-bit format needed, splice per layer, write `onnx_out`. Returns what
    quantize_onnx returns (calib_batch, reasons) plus `layer_formats` per layer and notes."""
    import onnx

    from l4opt.onnx.mixed import build, formats_needed, resolve_formats
    from l4opt.onnx.qdq import formats_of

    if recipe.route != "onnx-ptq":
        raise BadInput(f"recipe {recipe.name!r}: a per-layer format map needs the onnx-ptq path")
    onnx_out = Path(onnx_out)
    work = onnx_out.parent / (onnx_out.stem + ".calib")
    try:  # the per-format graphs are removed whether or not the splice succeeds
        graphs, infos = calibrate(onnx_in, work, recipe, calib_data, formats_needed(recipe),
                                  shapes=shapes, log=log)
        base = graphs[recipe.format]
        formats, notes = resolve_formats(base, dict(recipe.layer_formats or {}),
                                         recipe.format, graphs)
        model = build(graphs, recipe.format, formats)
        onnx.save(model, str(onnx_out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = dict(infos.get(recipe.format) or {})
    info.update(layer_formats=formats, gemm_formats=formats_of(base, model), notes=notes,
                formats_calibrated=list(graphs))
    return info
