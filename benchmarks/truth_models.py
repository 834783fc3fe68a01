"""The truth table's models rebuilt from their architecture with random weights (latency does
not depend on the weights), exported to ONNX and, for INT8/FP8 rows, quantized with ModelOpt
ONNX PTQ. Plain torch (torchvision is not available here); BERT from a transformers config.

Everything generated goes under a cache directory (not the repo) and is reused.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np

VERSION = "truth-models-v1"


# ------------------------------------------------------------------ CNNs in plain torch

def _nn():
    import torch.nn as nn

    return nn


def resnet50_v15():
    """ResNet-50 v1.5 (stride 2 in the 3x3 conv of each downsampling bottleneck), 1000 classes."""
    nn = _nn()

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride, groups=1, base_width=64):
            super().__init__()
            w = int(width * base_width / 64) * groups
            out = width * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, w, 1, bias=False), nn.BatchNorm2d(w)
            self.conv2 = nn.Conv2d(w, w, 3, stride, 1, groups=groups, bias=False)
            self.bn2 = nn.BatchNorm2d(w)
            self.conv3, self.bn3 = nn.Conv2d(w, out, 1, bias=False), nn.BatchNorm2d(out)
            self.relu = nn.ReLU(inplace=True)
            self.down = None
            if stride != 1 or cin != out:
                self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                          nn.BatchNorm2d(out))

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            return self.relu(self.bn3(self.conv3(y)) + idt)

    class ResNet(nn.Module):
        def __init__(self, layers=(3, 4, 6, 3), groups=1, base_width=64, classes=1000):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            cin, stages = 64, []
            for i, n in enumerate(layers):
                width = 64 * 2 ** i
                blocks = []
                for j in range(n):
                    blocks.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1,
                                             groups, base_width))
                    cin = width * 4
                stages.append(nn.Sequential(*blocks))
            self.stages = nn.ModuleList(stages)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, classes) if classes else None

        def features(self, x):
            x = self.stem(x)
            outs = []
            for s in self.stages:
                x = s(x)
                outs.append(x)
            return outs

        def forward(self, x):
            x = self.features(x)[-1]
            return self.fc(self.pool(x).flatten(1))

    return ResNet


def resnet50():
    return resnet50_v15()().eval()


def retinanet_resnext50_fpn(classes: int = 264, anchors: int = 9):
    """MLPerf's RetinaNet: ResNeXt50-32x4d backbone, FPN P3-P7 (256 ch), 4-conv class and box
    heads shared across levels; 264 OpenImages classes, 9 anchors. Box decoding and NMS (a
    TensorRT plugin in the submission) are not part of the graph."""
    nn = _nn()
    import torch

    ResNet = resnet50_v15()

    class FPN(nn.Module):
        def __init__(self, chans=(512, 1024, 2048), out=256):
            super().__init__()
            self.lat = nn.ModuleList(nn.Conv2d(c, out, 1) for c in chans)
            self.smooth = nn.ModuleList(nn.Conv2d(out, out, 3, padding=1) for _ in chans)
            self.p6 = nn.Conv2d(chans[-1], out, 3, 2, 1)
            self.p7 = nn.Conv2d(out, out, 3, 2, 1)

        def forward(self, c3, c4, c5):
            p5 = self.lat[2](c5)
            p4 = self.lat[1](c4) + nn.functional.interpolate(p5, size=c4.shape[-2:], mode="nearest")
            p3 = self.lat[0](c3) + nn.functional.interpolate(p4, size=c3.shape[-2:], mode="nearest")
            p6 = self.p6(c5)
            p7 = self.p7(torch.relu(p6))
            return [self.smooth[0](p3), self.smooth[1](p4), self.smooth[2](p5), p6, p7]

    def head(out_ch):
        layers = []
        for _ in range(4):
            layers += [nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(256, out_ch, 3, padding=1))
        return nn.Sequential(*layers)

    class RetinaNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = ResNet(groups=32, base_width=4, classes=0)
            self.fpn = FPN()
            self.cls = head(anchors * classes)
            self.box = head(anchors * 4)

        def forward(self, x):
            _, c3, c4, c5 = self.backbone.features(x)
            feats = self.fpn(c3, c4, c5)
            cls = torch.cat([self.cls(f).flatten(2) for f in feats], 2)
            box = torch.cat([self.box(f).flatten(2) for f in feats], 2)
            return cls, box

    return RetinaNet().eval()


# ------------------------------------------------------------------ transformers

def bert(size: str = "large"):
    """BERT-base/large encoder (random weights from a transformers config) with a QA head."""
    import torch
    from transformers import BertConfig, BertModel

    cfg = {"base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072),
           "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=4096)}[size]
    conf = BertConfig(vocab_size=30522, max_position_embeddings=512, **cfg)
    conf._attn_implementation = "eager"  # MatMul/Softmax/MatMul in the graph, as TensorRT sees it

    class QA(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.bert = BertModel(conf, add_pooling_layer=False)
            self.qa = torch.nn.Linear(conf.hidden_size, 2)

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            return self.qa(h)

    return QA().eval()


# ------------------------------------------------------------------ build + quantize

SPECS = {
    # name: (factory, {input: (shape without batch, dtype)})
    "resnet50_v1.5": (resnet50, {"input": ((3, 224, 224), "float32")}),
    "retinanet_resnext50_fpn_800": (retinanet_resnext50_fpn, {"input": ((3, 800, 800), "float32")}),
    "bert_large_squad": (lambda: bert("large"), {"input_ids": ((384,), "int64"),
                                                 "attention_mask": ((384,), "int64"),
                                                 "token_type_ids": ((384,), "int64")}),
}


def cache_root() -> Path:
    d = Path(os.environ.get("L4OPT_TRUTH_CACHE", Path(os.environ.get(
        "L4OPT_CACHE", Path.home() / ".cache" / "l4opt")) / "truth-models"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _random_inputs(inputs: dict, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype) in inputs.items():
        if dtype == "int64":
            hi = 2 if "mask" in name or "type" in name else 30522
            arr = rng.integers(0, hi, size=(n, *shape)).astype(np.int64)
            if "mask" in name:
                arr[:] = 1
        else:
            arr = rng.standard_normal((n, *shape)).astype(np.float32)
        out[name] = arr
    return out


def onnx_path(model: str, precision: str) -> Path:
    """The (cached) ONNX for a truth-table model at a precision; builds it when missing."""
    if model not in SPECS:
        raise KeyError(f"no architecture for {model!r}; known: {sorted(SPECS)}")
    key = hashlib.sha256(f"{VERSION}-{model}".encode()).hexdigest()[:10]
    base = cache_root() / f"{model}-{key}"
    fp32 = base.with_name(base.name + "-fp32.onnx")
    if not fp32.exists():
        _export(model, fp32)
    if precision in ("fp16", "fp32"):
        return fp32
    out = base.with_name(base.name + f"-{precision}.onnx")
    if not out.exists():
        from l4opt.pipeline.quantize import quantize_onnx
        from l4opt.spec.recipes import Recipe

        _, inputs = SPECS[model]
        n = 2 if "retinanet" in model or "bert" in model else 4
        calib = _random_inputs(inputs, n)  # random data: fine for latency, never for accuracy
        tmp = out.with_name(out.name + f".tmp{os.getpid()}.onnx")
        logging.disable(logging.WARNING)  # ModelOpt logs every tensor it casts at DEBUG
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                quantize_onnx(str(fp32), str(tmp), Recipe(f"truth-{precision}", route="onnx-ptq",
                                                          format=precision, algorithm="max"), calib)
        finally:
            logging.disable(logging.NOTSET)
        os.replace(tmp, out)
    return out


def _export(model: str, path: Path) -> None:
    import torch

    factory, inputs = SPECS[model]
    m = factory()
    args = tuple(torch.from_numpy(v) for v in _random_inputs(inputs, 1).values())
    names = list(inputs)
    axes = {n: {0: "batch"} for n in names}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.onnx")
    with torch.no_grad():
        torch.onnx.export(m, args, str(tmp), input_names=names, dynamic_axes=axes,
                          opset_version=17, do_constant_folding=True, dynamo=False)
    os.replace(tmp, path)
