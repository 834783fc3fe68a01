"""One runner protocol (activate / infer / deactivate) for ONNX Runtime and torch, so measuring
code never branches on the backend. TensorRT's runner lives in trt.py."""
from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from .errors import StageFailed


class Runner(Protocol):
    name: str
    last_inference_time: float

    def activate(self) -> None: ...
    def infer(self, feed: list[np.ndarray]) -> np.ndarray: ...
    def deactivate(self) -> None: ...


class OrtRunner:
    """ONNX Runtime on the CPU. Q/DQ graphs get basic optimizations only: ORT's layout
    transformations push Transposes through FP8 DequantizeLinear and break the graph."""

    def __init__(self, path: str, input_names: list[str], quantized: bool = False, threads: int = 0):
        self.path, self.input_names, self.quantized, self.threads = path, input_names, quantized, threads
        self.name = "onnxruntime-cpu"
        self.last_inference_time = 0.0
        self.session = None

    def activate(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if self.quantized:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise StageFailed("onnxruntime", f"ONNX Runtime cannot load the graph: "
                              f"{str(exc).splitlines()[0][:400]}", self.path) from exc

    def infer(self, feed: list[np.ndarray]) -> np.ndarray:
        t = time.perf_counter()
        out = self.session.run(None, dict(zip(self.input_names, feed)))[0]
        self.last_inference_time = time.perf_counter() - t
        return np.asarray(out, dtype=np.float32)

    def deactivate(self) -> None:
        self.session = None


class TorchRunner:
    """A torch module (plain or ModelOpt fake-quantized) on the CPU."""

    def __init__(self, module, name: str = "torch-cpu"):
        self.module, self.name = module, name
        self.last_inference_time = 0.0

    def activate(self) -> None:
        self.module.eval()

    def infer(self, feed: list[np.ndarray]) -> np.ndarray:
        import torch

        t = time.perf_counter()
        with torch.no_grad():
            out = self.module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in feed])
        if isinstance(out, (tuple, list)):
            out = out[0]
        self.last_inference_time = time.perf_counter() - t
        return out.detach().float().cpu().numpy()

    def deactivate(self) -> None:
        pass


def run_all(runner, batches, total: int | None = None, desc: str = "evaluate",
            progress: bool = True) -> np.ndarray:
    """Run every batch through a runner and concatenate the first output."""
    from tqdm.auto import tqdm

    runner.activate()
    try:
        outs = [runner.infer(b) for b in tqdm(batches, total=total, desc=desc, leave=False,
                                               disable=not progress)]
    except StageFailed:
        raise
    except Exception as exc:
        raise StageFailed(runner.name, f"inference failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:400] if str(exc) else ''}",
                          getattr(runner, "path", None)) from exc
    finally:
        runner.deactivate()
    return np.concatenate(outs, axis=0)
