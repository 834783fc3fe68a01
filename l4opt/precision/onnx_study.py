"""An ONNX-PTQ recipe studied on its Q/DQ graph: calibrated once per 8-bit format, candidates
spliced per layer, drift in ONNX Runtime through the runner protocol (a child process)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from l4opt.errors import BadInput
from l4opt.precision.candidates import latency
from l4opt.precision.common import measure, one_output, reference_outputs, subset
from l4opt.spec.recipes import Recipe
from l4opt.spec.workloads import Workload


def other_format(fmt: str) -> str:
    return "fp8" if fmt == "int8" else "int8"


class OnnxStudy:
    """An ONNX-PTQ recipe as the sweep measures it: the FP32 export calibrated by ModelOpt ONNX
    PTQ (once per 8-bit format), candidates built by splicing Q/DQ pairs per layer, drift in
    ONNX Runtime on the CPU (basic graph optimizations, as the sweep runs Q/DQ graphs)."""

    @property
    def drift_backend(self) -> str:
        from l4opt.pipeline.runners import numerics_label

        return numerics_label()


    def __init__(self, workload: Workload, recipe: Recipe, eval_samples: int | None,
                 progress: bool, workdir, *, mixed: bool = True, screen: int | None = None,
                 batch: int | None = None, dims: dict | None = None, tty=None):
        from l4opt.spec.shapes import for_workload

        if recipe.route != "onnx-ptq":
            raise BadInput(f"recipe {recipe.name!r} is not an ONNX-PTQ recipe")
        self.w, self.progress, self.tty = workload, progress, tty
        self.recipe = Recipe(recipe.name, recipe.route, recipe.format, recipe.algorithm,
                             recipe.description, high_precision_dtype=recipe.high_precision_dtype,
                             nodes_to_exclude=recipe.nodes_to_exclude)
        self.format = recipe.format
        self.shapes = for_workload(workload, batch=batch, dims=dims)
        n = workload.num_samples(workload.eval_data)
        k = min(n, eval_samples or n)
        self.eval = subset(workload.eval_data, k)
        self.labels = None if workload.eval_labels is None else np.asarray(workload.eval_labels)[:k]
        self.screen_n = min(k, screen or max(32, k // 4))
        self.timings: dict[str, float] = {}
        t = time.perf_counter()
        self.reference = reference_outputs(workload, self.eval, progress, tty)
        self.timings["reference"] = time.perf_counter() - t
        self.ref_metric = workload.metric(one_output(self.reference), one_output(self.reference), self.labels)
        lab = None if self.labels is None else self.labels[:self.screen_n]
        ref_s = subset(self.reference, self.screen_n)
        self._screen = (subset(self.eval, self.screen_n), ref_s, lab,
                        workload.metric(one_output(ref_s), one_output(ref_s), lab))
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        export_and_calibrate(self, mixed)
        self.formats = list(self.graphs)
        self.evaluations = 0
        self.screenings = 0
        self._cache: dict = {}
        self.ort = None  # the ONNX Runtime child process, started on first use

    # the interface sensitivity shares with Calibrated: enabled = layers at the recipe format
    @property
    def layers(self) -> list[str]:
        return self.qg.choices

    @property
    def matmul_layers(self) -> list[str]:
        return [x for x in self.qg.choices if self.qg.layers[x].kind == "gemm"]

    def kind(self, layer: str) -> str:
        return self.qg.layers[layer].kind

    def evaluate(self, enabled) -> dict:
        e = set(enabled)
        return self.evaluate_formats({x: "fp16" for x in self.layers if x not in e})

    def fraction_quantized(self, enabled) -> float:
        e = set(enabled)
        return sum(g in e for g in self.matmul_layers) / max(1, len(self.qg.gemm_layers))

    # formats per layer
    def model(self, formats: dict):
        """The candidate graph; with no layer changed, the calibrated graph itself, exactly
        the sweep's artifact (so the all-quantized point is the sweep's row)."""
        from l4opt.onnx.mixed import build

        if not {k: v for k, v in formats.items() if v != self.format}:
            return self.qg.model
        return build(self.graphs, self.format, formats, check=False)  # ORT checks on load

    def _run(self, model, batches) -> dict:
        """Outputs of a candidate graph, by name, from ONNX Runtime in the study's child
        process (the runner protocol, TensorRT numerics, as the sweep measures): a native
        crash raises StageFailed for this candidate and the study goes on."""
        import onnx

        from l4opt.pipeline.runners import OrtWorker

        if self.ort is None:
            self.ort = OrtWorker(self.workdir / "onnxruntime.log")
        path = self.workdir / "candidate.onnx"
        onnx.save(model, str(path))
        return self.ort.run(path, self.w.input_names, batches, True)

    def close(self) -> None:
        """Stop the study's ONNX Runtime child process."""
        if self.ort is not None:
            self.ort.close()
            self.ort = None

    def evaluate_formats(self, formats: dict, full: bool = True) -> dict:
        """Drift of the graph with `formats` (layer -> int8|fp8|fp16; others at the recipe's
        format), on the whole evaluation set or (full=False) on the screening subset."""
        formats = {k: v for k, v in formats.items() if v != self.format}
        key = (tuple(sorted(formats.items())), full)
        if key in self._cache:
            return self._cache[key]
        whole = self.screen_n == self.w.num_samples(self.eval)
        if full and whole and (key[0], False) in self._cache:  # the screen was the whole set
            self._cache[key] = self._cache[(key[0], False)]
            return self._cache[key]
        if full:
            data, ref, labels, ref_metric = self.eval, self.reference, self.labels, self.ref_metric
            self.evaluations += 1
        else:
            data, ref, labels, ref_metric = self._screen
            self.screenings += 1
        out = self._run(self.model(formats), self.w.batches(data))
        m = measure(self.w, out, ref, labels, ref_metric)
        m["eval_samples"] = self.w.num_samples(data)
        self._cache[key] = m
        return m



def export_and_calibrate(st: OnnxStudy, mixed: bool) -> None:
    """The study's FP32 export (as the sweep exports it) and ModelOpt ONNX PTQ of it in the
    recipe's format (and the other 8-bit format when `mixed`): st.graphs, st.infos, st.qg."""
    from l4opt.pipeline.export import export_options, export_torch
    from l4opt.pipeline.quantize import calibrate

    w = st.w
    base = st.workdir / "model.fp32.onnx"
    t = time.perf_counter()
    opts = export_options(w.export)
    export_torch(w.module(), w, base, batch=st.shapes.batch, opset=opts["opset"],
                 exporter=opts["exporter"])
    st.timings["export"] = time.perf_counter() - t
    formats = [st.format] + ([other_format(st.format)] if mixed else [])
    t = time.perf_counter()
    st.graphs, st.infos = calibrate(base, st.workdir, st.recipe, w.calib_data, formats,
                                    shapes=st.shapes)
    st.calib_s = st.timings["calibrate"] = time.perf_counter() - t
    st.qg = st.graphs[st.format]


def price(st: OnnxStudy, model) -> dict:
    """Estimated L4 latency of a candidate graph at the deployment batch and shapes."""
    from l4opt.latency.estimate import estimate_onnx

    e = estimate_onnx(model, "L4", batch=st.shapes.batch, dynamic_dims=st.shapes.axes)
    return dict(latency(e, st.shapes), _layers=e.layers)


def local_errors(st: OnnxStudy) -> dict:
    """Per layer and format: the relative noise power (||y_q - y||^2 / ||y||^2) of the
    layer's output when only its own operands are quantized, all from one run of a probe
    graph on the screening subset (every layer sees the same float activations)."""
    from l4opt.onnx.qdq import probe

    model, taps = probe(st.graphs, st.format)
    noise = {(l, f): 0.0 for l, tap in taps.items() for f in tap if f != "ref"}
    signal = {l: 0.0 for l in taps}
    for b in st.w.batches(st._screen[0]):
        got = st._run(model, [b])
        for layer, tap in taps.items():
            refs = [np.asarray(got[t], np.float64) for t in tap["ref"]]
            signal[layer] += sum(float((r ** 2).sum()) for r in refs)
            for f, ts in tap.items():
                if f == "ref":
                    continue
                noise[(layer, f)] += sum(
                    float(((np.asarray(got[t], np.float64) - r) ** 2).sum())
                    for t, r in zip(ts, refs))
    return {layer: {f: noise[(layer, f)] / signal[layer] if signal[layer] > 0 else 0.0
                    for f in tap if f != "ref"} for layer, tap in taps.items()}


def layer_costs(st: OnnxStudy) -> tuple[dict, dict]:
    """Per layer and format, the estimated L4 ms of its own kernel (GEMMs; a fused op costs
    nothing), from one estimate of the graph with every layer in that format."""
    out: dict[str, dict] = {x: {} for x in st.layers}
    est = {}
    for f in st.formats + ["fp16"]:
        other = st.graphs.get(f)
        p = price(st, st.model({x: f for x in st.layers if f == "fp16" or (
            st.kind(x) == "gemm" and (f == st.format or st.qg.can_take(x, other)))}))
        est[f] = p
        ms = dict(zip(p["_layers"]["layer"], p["_layers"]["latency_ms"]))
        for x in st.layers:
            out[x][f] = float(ms.get(x, 0.0))
    return out, est
