"""Print the Python API of an installed/unpacked TensorRT bindings module as JSON.

Run it in a subprocess with PYTHONPATH at an unpacked tensorrt-cu12-bindings wheel and
LD_LIBRARY_PATH at the stand-in libraries built from stub.c (see README.md): the module then
imports without TensorRT's native libraries or a GPU, and everything printed (classes, enum
members, methods, properties, pybind11 signatures) is that version's real Python API.

    PYTHONPATH=wheel/ LD_LIBRARY_PATH=stubs/ python dump_api.py [module] [--probe-null-factories] > api.json

Only reading is done, except with --probe-null-factories: then Builder(logger) and
Runtime(logger) are constructed once, to record how the bindings report the NULL the
stand-in factories return ("null_factories": {"Builder": "TypeError: ..."}).

Output:
    {"module": "tensorrt_bindings", "version": "10.13.3.9.post1",
     "functions": {name: {"overloads": [sig, ...], "params": [...], "doc": first line}},
     "classes": {Name: {"members": [every non-dunder attribute],
                        "methods": {name: {"params": [names, self excluded],
                                           "doc": first signature line,
                                           "overloads": [{"params": [...],
                                                          "required": [...],
                                                          "returns": "tensorrt.X",
                                                          "deprecated": bool}],
                                           "deprecated": bool (every overload is)}},
                        "properties": {name: {"returns": ..., "settable": bool,
                                              "deprecated": bool}},
                        "overridable": {name: [params]},   # from the class docstring example
                        "bases": [...], "deprecated": bool}},
     "enums": {Name or Outer.Name: {"members": {MEMBER: {"value": int, "str": str(member),
                                                         "doc": text, "deprecated": bool}},
                                    "attributes": [non-member attributes: name, value, ...]}},
     "attributes": {name: repr}}   # other module-level values (DataType aliases, __version__...)

Signatures are pybind11's: "name(self: tensorrt.X, arg: type = default) -> ret"; overloaded
functions list every "N. name(...)" line. Module paths inside types are normalised to
"tensorrt." whatever the package is called (tensorrt_bindings.tensorrt.X -> tensorrt.X).
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
import sys

# TensorRT marks a deprecated API by a line of its description that starts with
# "[DEPRECATED]" ("Deprecated in TensorRT 10.8. ..."); a mention inside a sentence (another
# API's deprecation) does not count.
DEPRECATED = re.compile(r"^\s*(?:\[DEPRECATED\]|Deprecated (?:in|since) TensorRT)", re.M)


def norm_type(t: str) -> str:
    return re.sub(r"\btensorrt(?:_bindings)?(?:\.tensorrt)?\.", "tensorrt.", t.strip())


def split_top(s: str) -> list[str]:
    """Split a parameter list on commas outside brackets and quotes."""
    out, depth, cur, quote = [], 0, [], None
    for ch in s:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def parse_sig(line: str, name: str):
    """'name(self: X, a: int, b: bool = False) -> bool' -> overload dict, or None."""
    m = re.match(rf"^\s*(?:\d+\.\s*)?{re.escape(name)}\((.*)\)\s*(?:->\s*(.*))?$", line)
    if not m:
        return None
    params, required, kinds = [], [], {}
    for p in split_top(m.group(1)):
        if p in ("*", "/"):
            continue
        pname = re.split(r"[:=]", p, maxsplit=1)[0].strip()
        if pname == "self":
            continue
        if pname.startswith("**"):
            kinds[pname[2:]] = "var_keyword"
        elif pname.startswith("*"):
            kinds[pname[1:]] = "var_positional"
        pname = pname.lstrip("*")
        params.append(pname)
        if "=" not in p and pname not in kinds:
            required.append(pname)
    return {"params": params, "required": required, "kinds": kinds,
            "returns": norm_type(m.group(2) or "None"), "sig": norm_type(line.strip())}


def describe_callable(obj, name: str) -> dict:
    doc = getattr(obj, "__doc__", None) or ""
    lines = doc.splitlines()
    overloads, sections = [], []
    for line in lines:
        o = parse_sig(line, name)
        if o and not (o["params"] == ["args", "kwargs"] and "Overloaded function" in doc):
            overloads.append(o)
            sections.append([])
        elif sections:
            sections[-1].append(line)
    for o, text in zip(overloads, sections):  # each overload's own description
        o["deprecated"] = bool(DEPRECATED.search("\n".join(text)))
    if not overloads:  # a plain Python function (tensorrt/__init__.py), not a pybind11 one
        try:
            sig = inspect.signature(obj)
            ps = [p for p in sig.parameters.values() if p.name != "self"]
            overloads.append({
                "params": [p.name for p in ps],
                "required": [p.name for p in ps if p.default is p.empty
                             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)],
                "kinds": {p.name: p.kind.name.lower() for p in ps
                          if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)},
                "returns": "?", "sig": f"{name}{sig}"})
        except (TypeError, ValueError):
            pass
    params = []
    for o in overloads:
        params += [p for p in o["params"] if p not in params]
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    return {"params": params, "doc": norm_type(first), "overloads": overloads,
            "deprecated": bool(overloads) and all(o.get("deprecated") for o in overloads)
            if sections else bool(DEPRECATED.search(doc)),
            "text": doc.strip()[:2000]}


def enum_members(cls) -> dict:
    doc = cls.__doc__ or ""
    descr: dict[str, str] = {}
    cur = None
    for line in doc.split("Members:", 1)[-1].splitlines() if "Members:" in doc else []:
        m = re.match(r"^\s{2}(\w+)\s*:\s*(.*)$", line)
        if m:
            cur = m.group(1)
            descr[cur] = m.group(2).strip()
        elif cur and line.strip():
            descr[cur] += " " + line.strip()
    out = {}
    for k, v in cls.__members__.items():
        try:
            value = int(v)
        except (TypeError, ValueError):
            value = None
        d = descr.get(k, "")
        out[k] = {"value": value, "str": str(v), "doc": d,
                  "deprecated": bool(DEPRECATED.search(d))}
        try:
            out[k]["itemsize"] = v.itemsize  # DataType only (a property tensorrt/__init__ adds)
        except AttributeError:
            pass
    attrs = sorted(a for a in dir(cls) if not a.startswith("__") and a not in out)
    return {"members": out, "attributes": attrs, "doc": doc.split("Members:")[0].strip()[:1000]}


def is_enum(obj) -> bool:
    """A pybind11 enum: a class with a __members__ dict."""
    return isinstance(obj, type) and isinstance(getattr(obj, "__members__", None), dict)


def describe_class(cls, name: str, enums: dict) -> dict:
    members = sorted(a for a in dir(cls) if not (a.startswith("__") and a.endswith("__")))
    methods, props, nested = {}, {}, []
    for a in members + ["__init__", "__call__"]:
        raw = None
        for klass in cls.__mro__:
            if a in klass.__dict__:
                raw = klass.__dict__[a]
                break
        if raw is None:
            continue
        if isinstance(raw, property):
            fdoc = (raw.fget.__doc__ if raw.fget else "") or ""
            m = re.search(r"->\s*(.*)$", fdoc.splitlines()[0] if fdoc else "")
            text = (raw.__doc__ or "") if raw.__doc__ != fdoc else ""
            props[a] = {"returns": norm_type(m.group(1)) if m else "?",
                        "settable": raw.fset is not None,
                        "deprecated": bool(DEPRECATED.search(text)), "text": text.strip()[:1000]}
        elif is_enum(raw):
            nested.append(a)
            enums[f"{name}.{a}"] = enum_members(raw)
        elif callable(raw) or isinstance(raw, (staticmethod, classmethod)):
            fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
            if a in ("__init__", "__call__") and getattr(fn, "__objclass__", None) is object:
                continue
            if a == "__init__" and type(fn).__name__ == "wrapper_descriptor":
                continue
            methods[a] = describe_callable(fn, a)
    overridable = {}
    for m in re.finditer(r"def (\w+)\(self(?:,\s*([^)]*))?\)", cls.__doc__ or ""):
        if m.group(1) != "__init__":
            overridable[m.group(1)] = [p.strip() for p in (m.group(2) or "").split(",") if p.strip()]
    return {"members": members, "methods": methods, "properties": props,
            "nested_enums": nested, "overridable": overridable,
            "bases": [b.__name__ for b in cls.__mro__[1:] if b is not object],
            "deprecated": bool(DEPRECATED.search((cls.__doc__ or "").split("\n\n")[0])),
            "doc": (cls.__doc__ or "").strip()[:1500]}


def dump(modname: str | None = None) -> dict:
    names = [modname] if modname else ["tensorrt", "tensorrt_bindings"]
    mod, errors = None, []
    for n in names:
        try:
            mod = importlib.import_module(n)
            if hasattr(mod, "Builder") or hasattr(mod, "Runtime"):
                break
            errors.append(f"{n}: imported but has no Builder/Runtime (a stub package?)")
            mod = None
        except Exception as exc:  # noqa: BLE001 - reported, the caller decides
            errors.append(f"{n}: {type(exc).__name__}: {exc}")
    if mod is None:
        raise SystemExit("cannot import TensorRT's bindings: " + "; ".join(errors))
    out = {"module": mod.__name__, "version": getattr(mod, "__version__", None),
           "functions": {}, "classes": {}, "enums": {}, "attributes": {}}
    for a in sorted(dir(mod)):
        if a.startswith("__") and a != "__version__":
            continue
        obj = getattr(mod, a)
        if is_enum(obj):
            out["enums"][a] = enum_members(obj)
        elif isinstance(obj, type):
            out["classes"][a] = describe_class(obj, a, out["enums"])
        elif callable(obj):
            out["functions"][a] = describe_callable(obj, a)
        elif not inspect.ismodule(obj):
            out["attributes"][a] = repr(obj)
    return out


def probe_null_factories(mod) -> dict:
    """How the bindings report a failed creation: Builder(logger) and Runtime(logger) call
    createInferBuilder/createInferRuntime, which the stand-ins answer with NULL, as the real
    libraries do when CUDA or the driver is unusable. {class: "returned <repr>" | "Error: msg"}."""
    out = {}
    logger = mod.Logger(mod.Logger.WARNING)
    for name in ("Builder", "Runtime"):
        try:
            out[name] = f"returned {getattr(mod, name)(logger)!r}"
        except Exception as exc:  # noqa: BLE001 - that is what is reported
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    api = dump(args[0] if args else None)
    if "--probe-null-factories" in sys.argv:
        api["null_factories"] = probe_null_factories(importlib.import_module(api["module"]))
    json.dump(api, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
