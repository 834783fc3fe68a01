"""A workload from what a user types: a built-in name, 'pkg.module:make_workload' or
'path/to/file.py:make_workload' (a callable returning an l4opt.Workload, or a Workload).

Options (calib_samples, eval_samples, ...) are checked against the factory's signature before
it is called, so an option the workload does not take is refused by name, not a TypeError."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from l4opt.errors import BadInput

# option checks live in workloads: workloads.load uses them without importing this module
from l4opt.spec.workloads import _option, accepted_options, check_options  # noqa: F401

FORMS = ("a built-in name ({builtins}), 'pkg.module:make_workload' or "
         "'path/to/file.py:make_workload' (a callable returning an l4opt.Workload, or a "
         "Workload object)")


def _forms() -> str:
    from l4opt.spec import workloads

    return FORMS.format(builtins=", ".join(workloads.names()))


_USER_MODULES: dict[str, object] = {}  # modules a workload spec named, by module name


def ship_by_value() -> None:
    """Ray pickles functions by reference to their module, and Ray workers cannot import a
    user's file (or a module found only from the driver's folder): have Ray's cloudpickle
    carry the modules the user's workload came from by value."""
    if not _USER_MODULES:
        return
    from ray import cloudpickle

    for mod in _USER_MODULES.values():
        cloudpickle.register_pickle_by_value(mod)


def _import_file(path: Path):
    """Import a .py file as a module of its own (its folder importable for its siblings),
    afresh each time so an edited file is what runs."""
    name = "l4opt_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"cannot import {path}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return mod


def _import_from_cwd(name: str):
    """Import a module by name, the current directory on the path as uvicorn does, so
    'pkg.module:fn' run from the folder holding pkg/ finds it."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _user_error(where: str, exc: BaseException) -> BadInput:
    """A user's code raised: say where and what, with the innermost line of *their* file."""
    import traceback

    pkg = Path(__file__).resolve().parents[1]  # the l4opt package: its frames are not theirs
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if pkg not in Path(f.filename).resolve().parents]
    at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return BadInput(f"{where} raised {type(exc).__name__}: {exc}{at}")


def resolve_object(spec: str):
    """The object named by 'pkg.module:attr' or 'file.py:attr' (attr may be dotted)."""
    mod_part, _, attr = spec.rpartition(":")
    if not mod_part or not attr:
        raise BadInput(f"workload {spec!r}: give it as {_forms()}")
    is_file = mod_part.endswith(".py") or "/" in mod_part or "\\" in mod_part
    if is_file:
        path = Path(mod_part).expanduser().resolve()
        if not path.is_file():
            raise BadInput(f"workload {spec!r}: no file {mod_part} (from {Path.cwd()})")
        try:
            mod = _import_file(path)
        except BadInput:
            raise
        except Exception as exc:
            raise _user_error(f"importing {mod_part}", exc) from exc
    else:
        try:
            mod = _import_from_cwd(mod_part)
        except ModuleNotFoundError as exc:
            if exc.name and (mod_part == exc.name or mod_part.startswith(exc.name + ".")):
                raise BadInput(f"workload {spec!r}: no module named {exc.name!r} in {Path.cwd()} "
                               f"or on the Python path; install it, run from the folder that "
                               f"holds it, or give a file as 'path/to/file.py:{attr}'") from exc
            raise _user_error(f"importing {mod_part}", exc) from exc
        except Exception as exc:
            raise _user_error(f"importing {mod_part}", exc) from exc
    _USER_MODULES[mod.__name__] = mod
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            have = sorted(n for n in dir(mod) if not n.startswith("_"))[:20]
            raise BadInput(f"workload {spec!r}: {mod_part} has no {attr!r}; it defines: "
                           f"{', '.join(have) or 'nothing public'}")
        obj = getattr(obj, part)
    return obj


def load_workload(spec, options: dict | None = None, *, cli: bool = False):
    """A Workload from a built-in name, 'pkg.module:fn', 'file.py:fn' or a Workload object.

    `options` (e.g. {"calib_samples": 256}) go to the factory and are checked against its
    signature first; a Workload object takes none. `cli` words errors with --option names."""
    from l4opt.spec import workloads
    from l4opt.spec.workloads import Workload

    options = {k: v for k, v in (options or {}).items() if v is not None}
    if isinstance(spec, Workload):
        obj, what = spec, spec.name
    elif not isinstance(spec, str) or not spec.strip():
        raise BadInput(f"workload must be {_forms()}; got {spec!r}")
    elif spec in workloads.BUILTIN:
        fn = workloads.BUILTIN[spec]
        check_options(spec, fn, options, cli)
        return fn(**options)
    elif ":" not in spec:
        hint = (f"; to use a workload defined in {spec}, name its factory: "
                f"'{spec}:make_workload'" if spec.endswith(".py") else "")
        raise BadInput(f"unknown workload {spec!r}: give {_forms()}{hint}")
    else:
        obj, what = resolve_object(spec), spec
    if isinstance(obj, Workload):
        if options:
            raise BadInput(f"workload {what!r} is a Workload object and takes no options "
                           f"({', '.join(_option(k, cli) for k in options)}); make it a "
                           f"function with those parameters to set them")
        return obj
    if not callable(obj):
        raise BadInput(f"workload {what!r} is a {type(obj).__name__}, not a Workload or a "
                       f"callable returning one")
    check_options(what, obj, options, cli)
    try:
        out = obj(**options)
    except BadInput:
        raise
    except Exception as exc:
        raise _user_error(f"workload factory {what!r}", exc) from exc
    if not isinstance(out, Workload):
        raise BadInput(f"workload factory {what!r} returned a {type(out).__name__}, not an "
                       f"l4opt.Workload")
    return out
