"""l4opt.spec.shapes: every named axis resolved once, from the batch, dims or the data; refusals
name what was wrong and how to give it."""
from __future__ import annotations

import numpy as np
import pytest

import models
from l4opt.errors import BadInput
from l4opt.spec.shapes import Shapes, batch_axes, deploy_batch, for_workload, resolve
from l4opt.spec.workloads import InputSpec

TEXT = [InputSpec("ids", ("batch", "seq"), "int64"), InputSpec("mask", ("batch", "seq"), "int64")]


def ids(n, seq):
    return np.zeros((n, seq), np.int64)


def test_dims_give_named_axes_and_the_batch_takes_the_deployment_batch():
    s = resolve(TEXT, 4, dims={"seq": 16})
    assert s == Shapes(4, {"batch": 4, "seq": 16}, {"ids": [4, 16], "mask": [4, 16]})
    assert s.describe() == "batch 4; ids 4x16, mask 4x16"
    assert s.to_dict() == {"batch": 4, "axes": {"batch": 4, "seq": 16},
                           "inputs": {"ids": [4, 16], "mask": [4, 16]}}


def test_data_gives_axes_dims_are_not_given_for_and_dims_win_over_data():
    data = {"ids": ids(10, 12), "mask": ids(10, 12)}
    assert resolve(TEXT, 2, data=data).inputs == {"ids": [2, 12], "mask": [2, 12]}
    assert resolve(TEXT, 2, dims={"seq": 32}, data=data).axes["seq"] == 32


def test_fixed_axes_stay_and_row_input_dicts_resolve_like_inputspecs():
    rows = [{"name": "image", "shape": ["n", 3, "h", 8]}]
    s = resolve(rows, 5, dims={"h": 6})
    assert s.inputs == {"image": [5, 3, 6, 8]} and s.axes == {"n": 5, "h": 6}


def test_two_inputs_with_differently_named_batch_axes_both_take_the_batch():
    specs = [InputSpec("a", ("b1", 3)), InputSpec("b", ("b2", "seq"))]
    assert resolve(specs, 7, dims={"seq": 2}).inputs == {"a": [7, 3], "b": [7, 2]}


def test_unknown_dim_name_is_refused_naming_it_and_the_known_axes():
    with pytest.raises(BadInput, match=r"\['sequence'\] name no axis.*\['seq'\]"):
        resolve(TEXT, 2, dims={"sequence": 8})


def test_batch_axis_given_as_a_dim_is_refused():
    with pytest.raises(BadInput, match=r"'batch'.*is the batch axis.*--batch"):
        resolve(TEXT, 2, dims={"batch": 8, "seq": 4})


def test_inconsistent_sizes_in_the_data_are_refused_with_the_sizes():
    with pytest.raises(BadInput, match=r"axis 'seq' has different sizes.*'ids': 12.*'mask': 13"):
        resolve(TEXT, 2, data={"ids": ids(4, 12), "mask": ids(4, 13)})


def test_an_axis_with_no_value_anywhere_is_refused_with_the_way_to_give_it():
    with pytest.raises(BadInput, match=r"input 'ids' has a named axis 'seq' \(axis 1\).*--dim seq=N"):
        resolve(TEXT, 2)
    with pytest.raises(BadInput, match="--dim seq=N"):   # data that does not carry the axis
        resolve(TEXT, 2, data={"other": ids(2, 3)})


@pytest.mark.parametrize("batch", [0, -1, True, 2.0, "8", None])
def test_batch_must_be_a_positive_whole_number(batch):
    with pytest.raises(BadInput, match="batch must be a positive whole number"):
        resolve(TEXT, batch, dims={"seq": 4})


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "128"])
def test_dim_values_must_be_positive_whole_numbers(value):
    with pytest.raises(BadInput, match=r"dimension seq=.* must be a positive whole number"):
        resolve(TEXT, 2, dims={"seq": value})


def test_batch_axes():
    assert batch_axes(TEXT) == {"batch"}
    assert batch_axes([InputSpec("a", ("n", 3)), InputSpec("b", (4, "seq")),
                       {"name": "c", "shape": ["m"]}]) == {"n", "m"}
    assert batch_axes([InputSpec("s", ())]) == set()


def test_for_workload_uses_the_deploy_batch_else_the_optimum_and_the_data():
    w = models.transformer_workload(seq=6)
    assert deploy_batch(w) == w.batch_range[1] == 4
    s = for_workload(w)
    assert s.inputs == {"tokens": [4, 6, 8]} and s.batch == 4
    w.deploy_batch = 3
    assert for_workload(w).inputs == {"tokens": [3, 6, 8]}
    assert for_workload(w, batch=1).inputs == {"tokens": [1, 6, 8]}


def test_for_workload_dims_override_the_workloads_dims_and_its_data():
    w = models.lstm_workload(seq=5, dims={"seq": 9})
    assert for_workload(w).axes == {"batch": 4, "seq": 9}
    assert for_workload(w, dims={"seq": 11}).inputs == {"x": [4, 11, 4]}
    assert w.dims == {"seq": 9}   # not modified by the call
    with pytest.raises(BadInput, match="name no axis"):
        for_workload(w, dims={"time": 3})


@pytest.mark.parametrize("name", sorted(models.FACTORIES))
def test_every_shared_model_runs_at_the_shapes_resolved_for_it(name):
    import torch

    w = models.FACTORIES[name]()
    w.validate()
    s = for_workload(w, batch=3)
    feed = [torch.zeros(s.inputs[i.name], dtype=getattr(torch, i.dtype)) for i in w.inputs]
    with torch.no_grad():
        out = w.module()(*feed)
    outs = out if isinstance(out, tuple) else (out,)
    assert len(outs) == len(w.output_names) and all(o.shape[0] == 3 for o in outs)
