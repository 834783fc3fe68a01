"""Named, versioned precision recipes and the L4 capability check."""
from __future__ import annotations

import difflib
import fnmatch
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from l4opt.errors import BadInput, UnsupportedOnL4

RECIPE_SCHEMA = 2  # 2: `path` renamed `route` (files with `path` still load)
ROUTES = ("none", "torch-ptq", "onnx-ptq")
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
    """How a trial quantizes: the ModelOpt route, the format, the calibration algorithm.

    `disabled_layers` (torch module name patterns) and `nodes_to_exclude` (ONNX node name
    regexes) keep chosen layers in high precision; the search writes both.
    """

    name: str
    route: str = "none"  # the ModelOpt route: none, torch-ptq or onnx-ptq
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
    schema_version: int = RECIPE_SCHEMA

    def __post_init__(self):
        _check_choices(self)
        _check_numbers(self)
        object.__setattr__(self, "disabled_layers", _names(self.name, "disabled_layers",
                                                           self.disabled_layers))
        object.__setattr__(self, "nodes_to_exclude", _names(self.name, "nodes_to_exclude",
                                                            self.nodes_to_exclude, regex=True))
        object.__setattr__(self, "layer_formats", _layer_formats(self))

    @property
    def quantized(self) -> bool:
        return self.route != "none"

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
        """A recipe from its JSON/YAML mapping, every field type-checked by name. Files written
        before `path` was renamed `route` (schema 1) still load."""
        if not isinstance(d, dict):
            raise BadInput(f"a recipe must be a mapping, got {type(d).__name__}")
        d = dict(d)
        version = d.get("schema_version", RECIPE_SCHEMA)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise BadInput(f"recipe {d.get('name')!r}: schema_version must be a whole number "
                           f"(this l4opt writes {RECIPE_SCHEMA}), got {version!r}")
        if version > RECIPE_SCHEMA:
            raise BadInput(f"recipe {d.get('name')!r} has schema_version {version}; this "
                           f"l4opt reads up to {RECIPE_SCHEMA}: upgrade l4opt")
        if "path" in d and "route" not in d:  # schema 1 called the ModelOpt route `path`
            d["route"] = d.pop("path")
        d["schema_version"] = RECIPE_SCHEMA
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BadInput(f"recipe {d.get('name')!r}: unknown keys {sorted(unknown)}; "
                           f"known keys: {sorted(known)}")
        if "name" not in d:
            raise BadInput("a recipe needs a 'name'")
        for key, kinds, what in _FIELD_TYPES:
            if key in ("disabled_layers", "nodes_to_exclude") and isinstance(d.get(key), str):
                continue  # Recipe says how to write a list instead of a bare string
            if key in d and d[key] is not None and (
                    not isinstance(d[key], kinds) or isinstance(d[key], bool)):
                raise BadInput(f"recipe {d.get('name')!r}: {key} must be {what}, got "
                               f"{type(d[key]).__name__} {d[key]!r}"[:300])
        if not str(d["name"]).strip():
            raise BadInput("a recipe's name must not be empty")
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
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise BadInput(f"cannot read recipe file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise BadInput(f"recipe file {path} is not UTF-8 text ({exc.reason} at byte "
                           f"{exc.start}); save it as UTF-8") from exc
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


# what each field of a recipe file must be (checked on load, naming the field)
_FIELD_TYPES = (("name", str, "a string"), ("route", str, "a string (none, torch-ptq, onnx-ptq)"),
                ("format", str, "a string (fp16, fp8, int8)"),
                ("algorithm", str, "a string (max, entropy, percentile, smoothquant) or null"),
                ("description", str, "a string"), ("percentile", (int, float), "a number"),
                ("smoothquant_alpha", (int, float), "a number"),
                ("high_precision_dtype", str, "a string (fp16 or fp32)"),
                ("disabled_layers", (list, tuple), "a list of names"),
                ("nodes_to_exclude", (list, tuple), "a list of regexes"),
                ("layer_formats", dict, "a mapping of regex -> int8|fp8|fp16"))


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
    if value and r.route != "onnx-ptq":
        raise BadInput(f"recipe {r.name!r}: layer_formats applies to the onnx-ptq path only "
                       f"(this recipe is {r.route}); torch-ptq recipes keep layers in high "
                       f"precision with disabled_layers")
    for k, v in value.items():
        if not isinstance(k, str) or not k.strip():
            raise BadInput(f"recipe {r.name!r}: layer_formats key {k!r} must be a non-empty "
                           f"ONNX node-name regex")
        compile_pattern(k, f"recipe {r.name!r}: layer_formats key")
        check_l4(str(v))
        if v not in FORMATS:
            raise BadInput(f"recipe {r.name!r}: layer_formats[{k!r}] = {v!r}; choose one of "
                           f"{FORMATS}")
    return _FormatMap(value)


def _check_choices(r: "Recipe") -> None:
    """name, route, format, algorithm and high-precision type: each one of its choices."""
    if not isinstance(r.name, str):
        raise BadInput(f"a recipe's name must be a string, got {type(r.name).__name__} "
                       f"{r.name!r}"[:200])
    check_l4(r.format)
    if r.high_precision_dtype not in ("fp16", "fp32"):
        raise BadInput(f"recipe {r.name!r}: high_precision_dtype {r.high_precision_dtype!r}"
                       f" must be 'fp16' or 'fp32'"[:300])
    if r.route not in ROUTES:
        raise BadInput(f"recipe {r.name!r}: route {r.route!r} is not one of {ROUTES}")
    if r.format not in FORMATS:
        raise BadInput(f"recipe {r.name!r}: format {r.format!r} is not one of "
                       f"{FORMATS}")
    if r.algorithm not in ALGORITHMS[r.route]:
        raise BadInput(f"recipe {r.name!r}: algorithm {r.algorithm!r} is not "
                       f"available on the {r.route} route; choose from "
                       f"{ALGORITHMS[r.route]}")
    if r.route == "none" and r.format != "fp16":
        raise BadInput(f"recipe {r.name!r}: an unquantized recipe deploys as fp16")
    if r.route != "none" and r.format == "fp16":
        raise BadInput(f"recipe {r.name!r}: a quantizing recipe needs format fp8 or int8")
    if r.algorithm == "smoothquant" and r.format != "int8":
        raise BadInput(f"recipe {r.name!r}: SmoothQuant is an INT8 algorithm")


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
            compile_pattern(v, f"recipe {recipe!r}: {field_name} entry")
        out.append(v)
    return tuple(out)


# ------------------------------------------------------------------ user regexes, bounded
#
# nodes_to_exclude and layer_formats keys are the user's regexes over ONNX node names. l4opt
# matches them with RE2 (the google-re2 package: linear time, no catastrophic backtracking);
# a pattern RE2 cannot take (backreferences, lookaround) is matched by Python's re in a child
# process under a time limit. And since ModelOpt matches nodes_to_exclude with Python's re,
# check_layers also times every pattern under Python's re against the model's node names
# (bounded_check): one that takes more than PATTERN_TIME_LIMIT seconds is refused with its text.

PATTERN_TIME_LIMIT = 0.3  # seconds per pattern over all of a model's node names (~1 ms when sane)

_CHILD = r"""
import json, re, sys
job = json.loads(sys.stdin.read())
for i, p in enumerate(job["patterns"]):
    print(json.dumps({"start": i}), flush=True)
    c = re.compile(p)
    hits = [j for j, n in enumerate(job["names"]) if c.match(n)]
    print(json.dumps({"done": i, "hits": hits}), flush=True)
"""


def _re2():
    try:
        import re2
    except ImportError:  # google-re2 absent: every pattern is matched under the time limit
        return None
    return re2


def compile_pattern(pattern: str, what: str):
    """The RE2 compilation of a user's node-name regex (None where RE2 cannot take it or is
    not installed: then Python's re, bounded); a pattern Python's re refuses is a BadInput."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise BadInput(f"{what} {pattern!r} is not a valid regular expression: {exc}") from exc
    re2 = _re2()
    if re2 is None:
        return None
    opts = re2.Options()
    opts.log_errors = False
    try:
        return re2.compile(pattern, opts)
    except Exception:  # a Python-only feature (backreference, lookaround): bounded re
        return None


def _bounded_re(patterns: list[str], names: list[str], what: str,
                limit: float = PATTERN_TIME_LIMIT) -> dict[str, set[str]]:
    """Python re.match of each pattern over names in a child process; a pattern that takes
    more than `limit` seconds is refused (BadInput with its text) and the child killed."""
    import selectors
    import subprocess
    import sys

    if not patterns:
        return {}
    proc = subprocess.Popen([sys.executable, "-I", "-c", _CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out: dict[str, set[str]] = {}
    try:
        proc.stdin.write(json.dumps({"patterns": patterns, "names": names}))
        proc.stdin.close()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, deadline = None, None
        while len(out) < len(set(patterns)):
            wait = 30.0 if deadline is None else max(0.0, deadline - time.monotonic())
            line = proc.stdout.readline() if sel.select(wait) else ""
            if not line:
                if current is not None and proc.poll() is None:
                    raise BadInput(
                        f"{what} {patterns[current]!r} takes more than {limit:g} s to match the "
                        f"model's {len(names)} node names (catastrophic backtracking, e.g. a "
                        f"nested repetition like (a+)+): rewrite it without nested repetition")
                raise BadInput(f"{what}: matching the patterns failed (child exited "
                               f"{proc.poll()})")
            msg = json.loads(line)
            if "start" in msg:
                current, deadline = msg["start"], time.monotonic() + limit
            else:
                out[patterns[msg["done"]]] = {names[j] for j in msg["hits"]}
                current, deadline = None, None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return out


def match_table(patterns, names, what: str = "pattern") -> dict[str, set[str]]:
    """{pattern: the names it re.match-es}, for user node-name regexes: RE2 (linear time)
    where it takes the pattern, else Python's re under a time limit per pattern."""
    names = list(dict.fromkeys(names))
    out, slow = {}, []
    for p in dict.fromkeys(patterns):
        c = compile_pattern(p, what)
        if c is None:
            slow.append(p)
        else:
            out[p] = {n for n in names if c.match(n)}
    out.update(_bounded_re(slow, names, what))
    return out


def bounded_check(patterns, names, what: str = "pattern",
                  limit: float = PATTERN_TIME_LIMIT) -> None:
    """Refuse a pattern that Python's re (as ModelOpt runs nodes_to_exclude) cannot match
    against these names within `limit` seconds, with its text."""
    _bounded_re(list(dict.fromkeys(patterns)), list(dict.fromkeys(names)), what, limit)


def _module_matches(pattern: str, name: str) -> bool:
    """As ModelOpt applies a disabled layer: quantizer names '<module>.<quantizer>' matched
    by the wildcard '<pattern>.*' (so 'encoder' covers every module under it)."""
    return fnmatch.fnmatchcase(name, pattern) or \
        fnmatch.fnmatchcase(f"{name}.input_quantizer", f"{pattern}.*")


def unmatched_layers(recipe: "Recipe", module_names=None, onnx_node_names=None) -> list[str]:
    """The recipe's layer names/patterns that match no layer of the model: disabled_layers
    against torch module names, nodes_to_exclude (and layer_formats keys) against ONNX node
    names (re.match, as ModelOpt does; RE2, bounded: match_table). A list not given is not
    checked; a pattern Python's re cannot match within PATTERN_TIME_LIMIT is refused."""
    out = []
    if module_names is not None:
        mods = [m for m in module_names if m]
        out += [p for p in recipe.disabled_layers
                if not any(_module_matches(p, m) for m in mods)]
    if onnx_node_names is not None:
        nodes = list(onnx_node_names)
        patterns = list(recipe.nodes_to_exclude) + list(getattr(recipe, "layer_formats", {}) or {})
        what = f"recipe {recipe.name!r}: node-name pattern"
        bounded_check(patterns, nodes, what)
        table = match_table(patterns, nodes, what)
        out += [p for p in patterns if not table[p]]
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

