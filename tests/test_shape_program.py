"""ShapeProgram: a template's arrays at new dims without building the graph (fusiongym.graphs.shape_program)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from fusiongym.graphs import GraphError, ShapeProgram, synthetic, zoo
from fusiongym.graphs.ir import GraphArrays

LOAD = {"device_load": {"compute": 0.4, "bandwidth": 0.2}}


def assert_same_arrays(expected: GraphArrays, actual: GraphArrays) -> None:
    for field in fields(GraphArrays):
        want, got = getattr(expected, field.name), getattr(actual, field.name)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.shape == want.shape, field.name
            assert np.array_equal(got, want), field.name          # bit for bit, not approximately
        else:
            assert got == want, field.name


@pytest.mark.parametrize("name, dims", [
    ("resnet18", {"batch": 3, "image": 96}),
    ("llama", {"batch": 2, "seq": 77}),
    ("vit", {"batch": 5}),
])
def test_instance_has_the_arrays_context_and_hash_of_instantiate(name, dims):
    template = zoo.template(name, "small")
    program = ShapeProgram(template)
    for scale in (1, 2):                                  # the same program at two shapes
        shaped = {key: value * scale for key, value in dims.items()}
        graph = template.instantiate(shaped, LOAD)
        instance = program.instance(shaped, LOAD)
        assert_same_arrays(graph.arrays, instance.arrays)
        assert instance.context == graph.context and instance.num_edges == graph.num_edges
        assert instance._graph is None                    # nothing built until asked
        assert instance.hash == graph.hash and instance.materialize().to_json() == graph.to_json()


def test_moe_experts_without_tokens_drop_out_as_in_instantiate():
    template = zoo.template("mixtral_moe", "small")
    program = ShapeProgram(template)
    experts = sorted(name for name in template.symbols if name.startswith("tokens_e"))
    nodes = []
    for idle in ([], [experts[1], experts[3]], experts[1:]):
        dims = {"tokens": 12, **{name: 0 if name in idle else 6 for name in experts}}
        graph = template.instantiate(dims)
        instance = program.instance(dims)
        assert_same_arrays(graph.arrays, instance.arrays)
        assert instance.hash == graph.hash
        nodes.append(instance.num_nodes)
    assert nodes[0] > nodes[1] > nodes[2]                 # idle experts and the ops only they used go
    assert len(program._live_parts) == 2                  # one cached pattern per set of idle experts


def test_a_concrete_graph_is_its_own_program():
    graph = synthetic(n_nodes=300, seed=3)
    instance = ShapeProgram(graph).instance({})
    assert_same_arrays(graph.arrays, instance.arrays)
    assert instance.hash == graph.instantiate({}).hash


def test_bad_dims_are_refused_as_instantiate_refuses_them():
    program = ShapeProgram(zoo.template("llama", "small"))
    with pytest.raises(GraphError, match="outside its range"):
        program.instance({"batch": 10_000, "seq": 16})
    with pytest.raises(GraphError, match="unknown dim 'height'"):
        program.instance({"batch": 1, "seq": 16, "height": 3})
    with pytest.raises(GraphError, match=r"needs values for dims \['seq'\]"):
        program.instance({"batch": 1})
