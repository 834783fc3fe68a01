"""Named, versioned precision recipes and the L4 capability check."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import BadInput, UnsupportedOnL4

SCHEMA_VERSION = 1
PATHS = ("none", "torch-ptq", "onnx-ptq")
FORMATS = ("fp16", "fp8", "int8")
ALGORITHMS = {
    "none": (None,),
    "onnx-ptq": ("max", "entropy"),
    "torch-ptq": ("max", "entropy", "percentile", "smoothquant"),
}
# ModelOpt torch presets per format; algorithms are applied on top of these, never hand-written
TORCH_PRESETS = {("int8", "smoothquant"): "INT8_SMOOTHQUANT_CFG", "int8": "INT8_DEFAULT_CFG",
                 "fp8": "FP8_DEFAULT_CFG"}

# Formats the L4 (sm_89, Ada) cannot run, and what to use instead
REFUSED = {
    "nvfp4": "NVFP4 needs Blackwell (sm_100+) FP4 tensor cores",
    "mxfp4": "MXFP4 (microscaling) needs Blackwell (sm_100+)",
    "mxfp6": "MXFP6 (microscaling) needs Blackwell (sm_100+)",
    "mxfp8": "MXFP8 (microscaling, block-scaled) needs Blackwell (sm_100+); plain per-tensor "
             "FP8 E4M3 runs on the L4",
    "mxint8": "MXINT8 (microscaling) needs Blackwell (sm_100+)",
    "w4a8-nvfp4-fp8": "NVFP4 weights need Blackwell (sm_100+)",
    "fp4": "FP4 tensor cores are Blackwell-only (sm_100+)",
}
L4_ALTERNATIVE = "use 'fp8' (E4M3, supported on sm_89) or 'int8' instead"


@dataclass(frozen=True)
class Recipe:
    """How a trial quantizes: the ModelOpt path, the format, the calibration algorithm.

    `disabled_layers` (torch module name patterns) and `nodes_to_exclude` (ONNX node name
    regexes) keep chosen layers in high precision; the search writes both.
    """

    name: str
    path: str = "none"
    format: str = "fp16"
    algorithm: str | None = None
    description: str = ""
    percentile: float = 99.99
    smoothquant_alpha: float = 0.5
    high_precision_dtype: str = "fp16"
    disabled_layers: tuple[str, ...] = ()
    nodes_to_exclude: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        check_l4(self.format)
        if self.path not in PATHS:
            raise BadInput(f"recipe {self.name!r}: path {self.path!r} is not one of {PATHS}")
        if self.format not in FORMATS:
            raise BadInput(f"recipe {self.name!r}: format {self.format!r} is not one of "
                           f"{FORMATS}")
        if self.algorithm not in ALGORITHMS[self.path]:
            raise BadInput(f"recipe {self.name!r}: algorithm {self.algorithm!r} is not "
                           f"available on the {self.path} path; choose from "
                           f"{ALGORITHMS[self.path]}")
        if self.path == "none" and self.format != "fp16":
            raise BadInput(f"recipe {self.name!r}: an unquantized recipe deploys as fp16")
        if self.path != "none" and self.format == "fp16":
            raise BadInput(f"recipe {self.name!r}: a quantizing recipe needs format fp8 or int8")
        if self.algorithm == "smoothquant" and self.format != "int8":
            raise BadInput(f"recipe {self.name!r}: SmoothQuant is an INT8 algorithm")
        object.__setattr__(self, "disabled_layers", tuple(self.disabled_layers))
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))

    @property
    def quantized(self) -> bool:
        return self.path != "none"

    def torch_preset(self) -> str:
        return TORCH_PRESETS.get((self.format, self.algorithm), TORCH_PRESETS[self.format])

    def identity(self) -> dict:
        """What decides the trial's result (name and description excluded)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("description")
        return d

    def to_dict(self) -> dict:
        d = asdict(self)
        d["disabled_layers"] = list(self.disabled_layers)
        d["nodes_to_exclude"] = list(self.nodes_to_exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if not isinstance(d, dict):
            raise BadInput(f"a recipe must be a mapping, got {type(d).__name__}")
        version = d.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise BadInput(f"recipe {d.get('name')!r} has schema_version {version}; this "
                           f"l4opt reads up to {SCHEMA_VERSION}: upgrade l4opt")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BadInput(f"recipe {d.get('name')!r}: unknown keys {sorted(unknown)}; "
                           f"known keys: {sorted(known)}")
        if "name" not in d:
            raise BadInput("a recipe needs a 'name'")
        return cls(**d)

    def save(self, path: str | Path) -> Path:
        """Write the recipe as JSON (or YAML for a .yaml/.yml path)."""
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise BadInput(f"cannot read recipe file {path}: {exc.strerror}") from exc
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                d = yaml.safe_load(text)
            else:
                d = json.loads(text)
        except Exception as exc:
            raise BadInput(f"recipe file {path} is not valid {path.suffix[1:] or 'JSON'}: "
                           f"{exc}") from exc
        return cls.from_dict(d)


def check_l4(fmt: str) -> None:
    """Refuse a format the L4 (sm_89) cannot run, saying why and what to use instead."""
    key = str(fmt).lower()
    for bad, why in REFUSED.items():
        if key == bad or key.startswith(bad) or key.replace("_", "-").startswith(bad):
            raise UnsupportedOnL4(f"{fmt!r} cannot run on the NVIDIA L4 (sm_89, Ada): {why}; "
                                  f"{L4_ALTERNATIVE}")


BUILTIN: dict[str, Recipe] = {r.name: r for r in (
    Recipe("baseline", "none", "fp16", None,
           "no quantization; the FP32 export converted to FP16 for deployment"),
    Recipe("fp8", "onnx-ptq", "fp8", "max",
           "FP8 E4M3 per-tensor, max calibration, ModelOpt ONNX PTQ"),
    Recipe("fp8-torch", "torch-ptq", "fp8", "max",
           "FP8 E4M3 via mtq.quantize (FP8_DEFAULT_CFG), exported with TensorRT FP8 ops"),
    Recipe("int8", "onnx-ptq", "int8", "entropy",
           "INT8, entropy calibration, ModelOpt ONNX PTQ"),
    Recipe("int8-max", "torch-ptq", "int8", "max",
           "INT8 per-channel weights, max calibration, mtq.quantize (INT8_DEFAULT_CFG)"),
    Recipe("int8-percentile", "torch-ptq", "int8", "percentile",
           "INT8, activations at the 99.99th percentile of their histogram, mtq.quantize"),
    Recipe("int8-smoothquant", "torch-ptq", "int8", "smoothquant",
           "INT8 SmoothQuant (alpha 0.5), mtq.quantize (INT8_SMOOTHQUANT_CFG)"),
)}
DEFAULT = tuple(BUILTIN)


def names() -> list[str]:
    return list(BUILTIN)


def get(name) -> Recipe:
    """A built-in recipe by name, a recipe file (.json/.yaml), or a Recipe unchanged."""
    if isinstance(name, Recipe):
        return name
    key = str(name).strip()
    if key in BUILTIN:
        return BUILTIN[key]
    if key.endswith((".json", ".yaml", ".yml")):
        return Recipe.load(key)
    check_l4(key)
    raise BadInput(f"unknown recipe {key!r}; built-in recipes: {', '.join(names())} "
                   f"(or a recipe file ending in .json/.yaml)")


def resolve(recipes) -> list[Recipe]:
    """Recipes from names, files, Recipe objects or one comma-separated string; checked up front."""
    if recipes is None:
        recipes = DEFAULT
    if isinstance(recipes, (str, Recipe)):
        recipes = [r for r in str(recipes).split(",") if r.strip()] \
            if isinstance(recipes, str) else [recipes]
    out = [get(r) for r in recipes]
    if not out:
        raise BadInput(f"no recipes given; built-in recipes: {', '.join(names())}")
    seen = {}
    for r in out:
        if r.name in seen and seen[r.name] != r:
            raise BadInput(f"two different recipes are named {r.name!r}")
        seen[r.name] = r
    return list(seen.values())

