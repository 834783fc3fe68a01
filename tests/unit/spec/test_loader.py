"""l4opt.spec.loader.load_workload: built-in names, 'file.py:fn', 'pkg.module:fn' and Workload
objects; options checked against the factory's signature; a user's error reported at their line."""
from __future__ import annotations

import textwrap
import uuid

import pytest

import models
from l4opt.errors import BadInput
from l4opt.spec.loader import load_workload
from l4opt.spec.workloads import Workload

# a self-contained user file: a factory with an option, a Workload object, junk, a raiser
USER = '''
import numpy as np
from l4opt.spec.workloads import InputSpec, Metric, Workload


def make(n: int = 8, width: int = 3):
    import torch
    x = np.zeros((n, width), np.float32)
    return Workload(name=f"user-{n}", model=torch.nn.Linear(width, 2),
                    inputs=[InputSpec("x", ("batch", width))], calib_data={"x": x},
                    eval_data={"x": x}, metric=Metric("zero", lambda o, r, l: 0.0))


OBJ = make(4)
NUMBER = 42


def junk():
    return {"not": "a workload"}


def needs(size):
    return make(size)


def boom(depth: int = 1):
    raise RuntimeError("the user's factory broke")  # BOOM


def calls_l4opt():
    from l4opt.pipeline.drift import tensor_metrics
    return tensor_metrics(np.zeros((2, 3)), np.zeros((2, 4)))  # CALLS


class Holder:
    make = staticmethod(make)
'''


@pytest.fixture
def user_file(tmp_path):
    p = tmp_path / "user_wl.py"
    p.write_text(USER)
    return p


def line_of(path, marker):
    return next(i for i, s in enumerate(path.read_text().splitlines(), 1) if marker in s)


@pytest.mark.parametrize("name", ["digits-cnn", "minilm"])
def test_builtin_with_an_unknown_option_is_refused_naming_it_before_building(name):
    with pytest.raises(BadInput, match=rf"workload '{name}' does not take bogus \(it takes: .*calib_samples"):
        load_workload(name, {"bogus": 1})
    with pytest.raises(BadInput, match=r"does not take --bogus-opt \(it takes: .*--calib-samples"):
        load_workload(name, {"bogus_opt": 1}, cli=True)


def test_builtin_sample_count_below_one_is_refused():
    with pytest.raises(BadInput, match="calib_samples must be a positive whole number"):
        load_workload("digits-cnn", {"calib_samples": 0})


@pytest.mark.parametrize("spec", ["nope", "", None, 3])
def test_unknown_or_malformed_specs_are_refused_with_the_forms(spec):
    with pytest.raises(BadInput, match=r"minilm, digits-cnn.*pkg\.module:make_workload"):
        load_workload(spec)


def test_a_bare_py_file_gets_the_hint_to_name_its_factory():
    with pytest.raises(BadInput, match=r"'my_model\.py:make_workload'"):
        load_workload("my_model.py")


def test_file_factory_loads_with_options_and_none_options_are_dropped(user_file):
    w = load_workload(f"{user_file}:make", {"n": 16, "width": None})
    assert isinstance(w, Workload) and w.name == "user-16"
    assert w.calib_data["x"].shape == (16, 3)
    assert load_workload(f"{user_file}:Holder.make").name == "user-8"   # dotted attribute


def test_file_factory_with_an_unknown_option_is_refused_naming_what_it_takes(user_file):
    with pytest.raises(BadInput, match=r"does not take --depth \(it takes: --n, --width\)"):
        load_workload(f"{user_file}:make", {"depth": 2}, cli=True)


def test_file_factory_missing_a_required_parameter_is_refused(user_file):
    with pytest.raises(BadInput, match="needs size"):
        load_workload(f"{user_file}:needs")
    assert load_workload(f"{user_file}:needs", {"size": 5}).name == "user-5"


def test_a_workload_object_takes_no_options(user_file):
    assert load_workload(f"{user_file}:OBJ").name == "user-4"
    with pytest.raises(BadInput, match=r"is a Workload object and takes no options \(n\)"):
        load_workload(f"{user_file}:OBJ", {"n": 3})
    w = models.mlp_workload(real_data=False)
    assert load_workload(w) is w
    with pytest.raises(BadInput, match=r"takes no options \(--calib-samples\)"):
        load_workload(w, {"calib_samples": 8}, cli=True)


def test_junk_is_refused(user_file):
    with pytest.raises(BadInput, match=r"returned a dict, not an l4opt\.Workload"):
        load_workload(f"{user_file}:junk")
    with pytest.raises(BadInput, match=r"is a int, not a Workload or a callable"):
        load_workload(f"{user_file}:NUMBER")
    with pytest.raises(BadInput, match=r"has no 'nothing'; it defines: .*make"):
        load_workload(f"{user_file}:nothing")
    with pytest.raises(BadInput, match="no file"):
        load_workload(f"{user_file.parent / 'absent.py'}:make")


def test_a_raising_factory_is_a_badinput_at_the_users_file_and_line(user_file):
    with pytest.raises(BadInput) as e:
        load_workload(f"{user_file}:boom")
    msg = str(e.value)
    assert "raised RuntimeError: the user's factory broke" in msg
    assert f"{user_file}:{line_of(user_file, '# BOOM')}" in msg


def test_a_file_that_fails_to_import_is_a_badinput_at_its_line(tmp_path):
    p = tmp_path / "broken_wl.py"
    p.write_text("x = 1\nraise ImportError('needs a package')\n")
    with pytest.raises(BadInput, match=rf"importing .*broken_wl\.py raised ImportError: needs a package at {p}:2"):
        load_workload(f"{p}:make")


def test_an_error_raised_inside_l4opt_is_reported_at_the_users_calling_line(user_file):
    with pytest.raises(BadInput) as e:
        load_workload(f"{user_file}:calls_l4opt")
    assert f"{user_file}:{line_of(user_file, '# CALLS')}" in str(e.value)


def test_pkg_module_factory_from_a_package_on_sys_path(tmp_path, monkeypatch):
    pkg = f"l4opt_test_pkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / pkg / "sub").mkdir(parents=True)
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "sub" / "__init__.py").write_text("")
    (tmp_path / pkg / "sub" / "wl.py").write_text(USER)
    monkeypatch.syspath_prepend(str(tmp_path))
    w = load_workload(f"{pkg}.sub.wl:make", {"n": 6})
    assert w.name == "user-6" and w.calib_data["x"].shape == (6, 3)
    with pytest.raises(BadInput, match=rf"no module named '{pkg}.sub.absent'"):
        load_workload(f"{pkg}.sub.absent:make")
    (tmp_path / pkg / "sub" / "bad.py").write_text(textwrap.dedent("""
        import l4opt_surely_not_installed_xyz
    """))
    with pytest.raises(BadInput, match=r"importing .*bad raised ModuleNotFoundError"):
        load_workload(f"{pkg}.sub.bad:make")
