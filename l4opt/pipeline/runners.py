"""One runner protocol (activate / infer / deactivate) for ONNX Runtime and torch, so measuring
code never branches on the backend. TensorRT's runner lives in trt.py.

`infer` returns {output name: float32 array}; `run_all` concatenates each output over batches.
`OrtWorker` runs ONNX Runtime in a child process, so a crash in native code (a segfault in a
kernel) becomes a StageFailed naming the signal instead of killing the caller.
"""
from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from typing import Protocol

import numpy as np

from l4opt.errors import BadInput, StageFailed


class NativeCrash(StageFailed):
    """ONNX Runtime's process died in native code (a signal): the graph, not the data, is at
    fault, so no fallback hides it."""


class Runner(Protocol):
    name: str
    last_inference_time: float

    def activate(self) -> None: ...
    def infer(self, feed: list[np.ndarray]) -> dict[str, np.ndarray]: ...
    def deactivate(self) -> None: ...


NUMERICS = ("tensorrt", "onnxruntime")
TRT_NUMERICS_LABEL = "onnxruntime-cpu, TensorRT numerics"
# L4OPT_DRIFT_NUMERICS=onnxruntime runs graphs with ONNX Runtime's own CPU kernels instead (a
# diagnostic: what ORT itself computes, crashes included)
NUMERICS_ENV = "L4OPT_DRIFT_NUMERICS"


def drift_numerics() -> str:
    """The numerics drift is measured with: TensorRT's unless the environment says otherwise."""
    n = os.environ.get(NUMERICS_ENV, "tensorrt")
    if n not in NUMERICS:
        raise BadInput(f"{NUMERICS_ENV}={n!r}: choose one of {NUMERICS}")
    return n


def numerics_label() -> str:
    """The drift_backend of a graph run in ONNX Runtime with the numerics in force."""
    return TRT_NUMERICS_LABEL if drift_numerics() == "tensorrt" else "onnxruntime-cpu"


class OrtRunner:
    """ONNX Runtime on the CPU. Q/DQ graphs get basic optimizations only: ORT's layout
    transformations push Transposes through FP8 DequantizeLinear and break the graph.

    numerics="tensorrt" (the default) runs the graph as a TensorRT engine computes it
    (l4opt.onnx.numerics: FP16-typed ops in FP32 with FP16 rounding at tensor boundaries, Q/DQ in
    FP32 with round-half-even), because ONNX Runtime 1.24's CPU kernels truncate in FP16
    QuantizeLinear (microsoft/onnxruntime#22741) and overflow FP16 bias quantization;
    "onnxruntime" runs the graph as ONNX Runtime's own kernels do (a diagnostic)."""

    def __init__(self, path: str, input_names: list[str], quantized: bool = False, threads: int = 0,
                 numerics: str = "tensorrt"):
        if numerics not in NUMERICS:
            raise BadInput(f"numerics {numerics!r}: choose one of {NUMERICS}")
        self.path, self.input_names, self.quantized, self.threads = path, input_names, quantized, threads
        self.numerics = numerics
        self.numerics_stats: dict = {}
        self.name = TRT_NUMERICS_LABEL if numerics == "tensorrt" else "onnxruntime-cpu"
        self.last_inference_time = 0.0
        self.session = None
        self.output_names: list[str] = []

    def activate(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if self.quantized:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        source = self.path
        try:
            if self.numerics == "tensorrt":
                import onnx

                from l4opt.onnx.numerics import trt_numerics

                model, self.numerics_stats = trt_numerics(onnx.load(str(self.path)))
                source = model.SerializeToString()
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise StageFailed("onnxruntime", f"ONNX Runtime cannot load the graph: "
                              f"{str(exc).splitlines()[0][:400]}", self.path) from exc
        self.output_names = [o.name for o in self.session.get_outputs()]
        have = [i.name for i in self.session.get_inputs()]
        missing = [n for n in self.input_names if n not in have]
        if missing or len(have) != len(self.input_names):
            raise StageFailed("onnxruntime", f"the graph's inputs are {have}, the workload "
                              f"feeds {self.input_names}", self.path)

    def infer(self, feed: list[np.ndarray]) -> dict[str, np.ndarray]:
        t = time.perf_counter()
        outs = self.session.run(None, dict(zip(self.input_names, feed)))
        self.last_inference_time = time.perf_counter() - t
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self.output_names, outs)}

    def deactivate(self) -> None:
        self.session = None


class TorchRunner:
    """A torch module (plain or ModelOpt fake-quantized) on the CPU. Its outputs (a tensor, a
    tuple/list, or a dict) are named by `output_names`, or by the dict's keys."""

    def __init__(self, module, name: str = "torch-cpu", output_names: list[str] | None = None):
        self.module, self.name = module, name
        self.output_names = list(output_names or ["output"])
        self.last_inference_time = 0.0

    def activate(self) -> None:
        self.module.eval()

    def infer(self, feed: list[np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        t = time.perf_counter()
        with torch.no_grad():
            out = self.module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in feed])
        self.last_inference_time = time.perf_counter() - t
        return name_outputs(out, self.output_names)

    def deactivate(self) -> None:
        pass


def name_outputs(out, names: list[str]) -> dict[str, np.ndarray]:
    """A model's return value (tensor, tuple/list of tensors, or dict) as {name: float32}."""
    if isinstance(out, dict):
        items = list(out.items())
    else:
        seq = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(seq) != len(names):
            raise BadInput(f"the model returns {len(seq)} output(s) but the workload names "
                           f"{len(names)} ({names}); set Workload(output_names=[...]) to one "
                           f"name per output")
        items = list(zip(names, seq))
    res = {}
    for k, v in items:
        if not hasattr(v, "detach"):
            raise BadInput(f"model output {k!r} is a {type(v).__name__}, not a tensor")
        res[str(k)] = v.detach().float().cpu().numpy()
    return res


def run_all(runner, batches, total: int | None = None, desc: str = "evaluate",
            progress: bool = True, file=None) -> dict[str, np.ndarray]:
    """Run every batch through a runner; each output concatenated over the batches."""
    from l4opt.env import progress as tqdm

    runner.activate()
    try:
        outs = [runner.infer(b) for b in tqdm(batches, total=total, desc=desc, leave=False,
                                               disable=not progress, file=file)]
    except (StageFailed, BadInput):
        raise
    except Exception as exc:
        raise StageFailed(runner.name, f"inference failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:400] if str(exc) else ''}",
                          getattr(runner, "path", None)) from exc
    finally:
        runner.deactivate()
    return concat(outs)


def concat(outs: list[dict]) -> dict[str, np.ndarray]:
    if not outs:
        return {}
    return {k: np.concatenate([o[k] for o in outs], axis=0) for k in outs[0]}


# ------------------------------------------------------------------ ONNX Runtime in a child

def _send(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)) + data)
    f.flush()


def _recv(f):
    head = f.read(8)
    if len(head) < 8:
        raise EOFError
    (n,) = struct.unpack("<Q", head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


class OrtWorker:
    """ONNX Runtime in one child process (started on first use, reused for every run, restarted
    after a crash). Its stdout/stderr (ORT's C++ logs) go to `log_path`, never to the caller's
    terminal. A native crash raises StageFailed naming the signal."""

    def __init__(self, log_path=None, threads: int = 0):
        self.log_path, self.threads = log_path, threads
        self.proc = None

    def _start(self) -> None:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "l4opt.pipeline.runners"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        finally:
            if log is not subprocess.DEVNULL:
                log.close()

    def run(self, path, input_names, batches, quantized: bool = False, *, total=None,
            desc="evaluate (onnxruntime)", progress=False, file=None,
            numerics: str | None = None) -> dict[str, np.ndarray]:
        """Every batch through the graph at `path` in the child; outputs concatenated."""
        from l4opt.env import progress as tqdm

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        batches = list(batches)
        try:
            _send(self.proc.stdin, ("run", str(path), list(input_names), bool(quantized),
                                    self.threads, batches, numerics or drift_numerics()))
        except (BrokenPipeError, OSError):
            return self._died(path)
        with tqdm(total=total or len(batches), desc=desc, leave=False, disable=not progress,
                  file=file) as bar:
            while True:
                try:
                    kind, payload = _recv(self.proc.stdout)
                except (EOFError, OSError, pickle.UnpicklingError):
                    return self._died(path)
                if kind == "progress":
                    bar.update(payload)
                elif kind == "ok":
                    return payload
                else:
                    stage, message = payload
                    raise StageFailed(stage, message, str(path))

    def _died(self, path):
        rc = self.proc.wait()
        self.proc = None
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = f"signal {-rc}"
            what = f"crashed in native code with {sig}"
        else:
            what = f"exited unexpectedly (exit code {rc})"
        raise NativeCrash("onnxruntime", f"ONNX Runtime {what} while running this graph (it ran "
                                         f"in a separate process; the sweep goes on)", str(path))

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _worker_main() -> None:
    """The child of OrtWorker: requests on stdin, replies on the original stdout; anything
    else written to stdout (or stderr) goes to the log the parent gave as stderr."""
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    proto_in = sys.stdin.buffer
    while True:
        try:
            req = _recv(proto_in)
        except EOFError:
            return
        _, path, names, quantized, threads, batches, numerics = req
        runner = OrtRunner(path, names, quantized=quantized, threads=threads, numerics=numerics)
        try:
            runner.activate()
            outs = []
            for b in batches:
                outs.append(runner.infer(b))
                _send(proto_out, ("progress", 1))
            _send(proto_out, ("ok", concat(outs)))
        except StageFailed as exc:
            _send(proto_out, ("error", (exc.stage, exc.message)))
        except Exception as exc:
            _send(proto_out, ("error", ("onnxruntime", f"inference failed: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0][:400] if str(exc) else ''}")))
        finally:
            runner.deactivate()


if __name__ == "__main__":
    _worker_main()
