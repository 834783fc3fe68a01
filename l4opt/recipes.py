"""Named, versioned precision recipes and the L4 capability check."""
from __future__ import annotations

import difflib
import fnmatch
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
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
    # ONNX node-name regex (re.match) -> "int8" | "fp8" | "fp16": a per-layer precision map for
    # the ONNX-PTQ path (l4opt.mixed); first matching pattern wins, other layers take `format`
    layer_formats: dict = field(default_factory=dict)
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
        _check_numbers(self)
        object.__setattr__(self, "disabled_layers", _names(self.name, "disabled_layers",
                                                           self.disabled_layers))
        object.__setattr__(self, "nodes_to_exclude", _names(self.name, "nodes_to_exclude",
                                                            self.nodes_to_exclude, regex=True))
        object.__setattr__(self, "layer_formats", _layer_formats(self))

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
        if not d["layer_formats"]:
            d.pop("layer_formats")  # recipes without a map keep the keys they had before
        return d

    def to_dict(self) -> dict:
        d = asdict(self)
        d["disabled_layers"] = list(self.disabled_layers)
        d["nodes_to_exclude"] = list(self.nodes_to_exclude)
        d["layer_formats"] = dict(self.layer_formats)
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


class _FormatMap(dict):
    """layer_formats as a plain dict that hashes (Recipe is a frozen, hashable dataclass)."""

    def __hash__(self):
        return hash(tuple(self.items()))


def _layer_formats(r: "Recipe") -> dict:
    """layer_formats checked: regex keys, values int8/fp8/fp16, only on the ONNX-PTQ path."""
    value = r.layer_formats if r.layer_formats is not None else {}
    if not isinstance(value, dict):
        raise BadInput(f"recipe {r.name!r}: layer_formats must be a mapping of ONNX node-name "
                       f"regex -> int8|fp8|fp16, got {type(value).__name__}")
    if value and r.path != "onnx-ptq":
        raise BadInput(f"recipe {r.name!r}: layer_formats applies to the onnx-ptq path only "
                       f"(this recipe is {r.path}); torch-ptq recipes keep layers in high "
                       f"precision with disabled_layers")
    for k, v in value.items():
        if not isinstance(k, str) or not k.strip():
            raise BadInput(f"recipe {r.name!r}: layer_formats key {k!r} must be a non-empty "
                           f"ONNX node-name regex")
        try:
            re.compile(k)
        except re.error as exc:
            raise BadInput(f"recipe {r.name!r}: layer_formats key {k!r} is not a valid regular "
                           f"expression: {exc}") from exc
        check_l4(str(v))
        if v not in FORMATS:
            raise BadInput(f"recipe {r.name!r}: layer_formats[{k!r}] = {v!r}; choose one of "
                           f"{FORMATS}")
    return _FormatMap(value)


def _check_numbers(r: "Recipe") -> None:
    """percentile in (0, 100], SmoothQuant alpha in [0, 1]: the ranges ModelOpt means."""
    for field_name, v, ok, rng in (
            ("percentile", r.percentile, lambda v: 0 < v <= 100, "(0, 100]"),
            ("smoothquant_alpha", r.smoothquant_alpha, lambda v: 0 <= v <= 1, "[0, 1]")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or not ok(v):
            raise BadInput(f"recipe {r.name!r}: {field_name} must be a number in {rng}, got "
                           f"{v!r}" + (" (a percentile, e.g. 99.99, not a fraction)"
                                       if field_name == "percentile" and v == 0 else ""))


def _names(recipe: str, field_name: str, value, regex: bool = False) -> tuple[str, ...]:
    """A list of layer names/patterns; a bare string is refused (it would be read letter by
    letter or silently as one name the user did not mean as a list)."""
    if isinstance(value, str):
        raise BadInput(f"recipe {recipe!r}: {field_name} must be a list of names, got the "
                       f"string {value!r}; write [{value!r}] (YAML: {field_name}: [{value}])")
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise BadInput(f"recipe {recipe!r}: {field_name} must be a list of names, got "
                       f"{type(value).__name__}")
    out = []
    for v in value:
        if not isinstance(v, str) or not v.strip():
            raise BadInput(f"recipe {recipe!r}: {field_name} holds {v!r}; every entry must be "
                           f"a non-empty name")
        if regex:
            try:
                re.compile(v)
            except re.error as exc:
                raise BadInput(f"recipe {recipe!r}: {field_name} entry {v!r} is not a valid "
                               f"regular expression: {exc}") from exc
        out.append(v)
    return tuple(out)


def _module_matches(pattern: str, name: str) -> bool:
    """As ModelOpt applies a disabled layer: quantizer names '<module>.<quantizer>' matched
    by the wildcard '<pattern>.*' (so 'encoder' covers every module under it)."""
    return fnmatch.fnmatchcase(name, pattern) or \
        fnmatch.fnmatchcase(f"{name}.input_quantizer", f"{pattern}.*")


def unmatched_layers(recipe: "Recipe", module_names=None, onnx_node_names=None) -> list[str]:
    """The recipe's layer names/patterns that match no layer of the model: disabled_layers
    against torch module names, nodes_to_exclude (and layer_formats keys) against ONNX node
    names (re.match, as ModelOpt does). A list not given is not checked."""
    out = []
    if module_names is not None:
        mods = [m for m in module_names if m]
        out += [p for p in recipe.disabled_layers
                if not any(_module_matches(p, m) for m in mods)]
    if onnx_node_names is not None:
        nodes = list(onnx_node_names)
        patterns = list(recipe.nodes_to_exclude) + list(getattr(recipe, "layer_formats", {}) or {})
        out += [p for p in patterns if not any(re.match(p, n) for n in nodes)]
    return out


def check_layers(recipe: "Recipe", module_names=None, onnx_node_names=None) -> None:
    """Raise BadInput naming every layer of the recipe that matches nothing in the model, with
    the closest real names, so a typo never silently quantizes the layer it meant to keep."""
    bad = unmatched_layers(recipe, module_names, onnx_node_names)
    if not bad:
        return
    mods, nodes = list(module_names or []), list(onnx_node_names or [])
    lines = []
    for p in bad:
        pool = mods if p in recipe.disabled_layers else nodes
        kind = "torch module" if pool is mods else "ONNX node"
        close = difflib.get_close_matches(p, pool, n=3, cutoff=0.5)
        lines.append(f"{p!r} matches no {kind}" +
                     (f" (close: {', '.join(close)})" if close else ""))
    raise BadInput(f"recipe {recipe.name!r}: {len(bad)} layer name(s) match nothing in the "
                   f"model: " + "; ".join(lines) + ". Fix the names (disabled_layers are torch "
                   f"module names or wildcards, nodes_to_exclude ONNX node-name regexes)")


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

