"""ShapeProgram: a template's arrays at new dims without building the graph (fusiongym.graphs.shape_program)."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from fusiongym.graphs import (ComputeGraph, Edge, GraphError, OpKind, OpNode, ShapeProgram, SymbolRange, TensorSpec,
                              synthetic, zoo)
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


# ------------------------------------------------- compiled instantiate (ShapeProgram.graph)
ZOO_DIMS = {   # several instances per template: dims, and routings with idle experts
    "resnet50": [{"batch": b, "image": i} for b, i in ((1, 224), (7, 256), (64, 384), (3, 320))],
    "llama": [{"batch": b, "seq": s} for b, s in ((1, 16), (2, 77), (8, 512), (3, 17))],
    "vit": [{"batch": b} for b in (1, 5, 64)],
    "bert": [{"batch": b, "seq": s} for b, s in ((1, 16), (4, 100), (16, 512))],
}
LOADS = (None, {"device_load": {"compute": 0.0, "bandwidth": 0.0}}, LOAD, {"device_load": 0.45, "note": "x"})


def assert_same_instance(fast, reference):
    """The compiled instance equals the node-by-node one in everything observable."""
    assert fast.to_json() == reference.to_json() and fast == reference
    assert list(fast.context) == list(reference.context) and fast.source == reference.source
    assert fast.canonical_json() == reference.canonical_json()
    assert fast._arrays is not None                          # attached, not recomputed
    assert_same_arrays(GraphArrays.of(reference), fast.arrays)
    assert fast.hash == reference.hash                       # skeleton join == JSON dump
    assert reference.structure_key is None and fast.structure_key is not None


def moe_dims(tokens: int, counts: list[int]) -> dict[str, int]:
    return {"tokens": tokens, **{f"tokens_e{e}": c for e, c in enumerate(counts)}}


@pytest.mark.parametrize("name", sorted(ZOO_DIMS))
def test_compiled_instantiate_equals_node_by_node_instantiate(name):
    template = zoo.template(name)
    keys = set()
    for position, dims in enumerate(ZOO_DIMS[name]):
        context = LOADS[position % len(LOADS)]
        fast = template.instantiate(dims, context)
        assert_same_instance(fast, template.instantiate_node_by_node(dims, context))
        keys.add(fast.structure_key)
    assert len(keys) == 1                                    # one structure for every instance


def test_compiled_moe_instances_with_routing_equal_node_by_node_ones():
    template = zoo.template("mixtral_moe")
    experts = sum(name.startswith("tokens_e") for name in template.symbols)
    rng = np.random.default_rng(0)
    keys = {}
    for tokens in (16, 40, 300):
        for alpha in (0.1, 0.5, 5.0):                          # skewed routings leave experts idle
            counts = rng.multinomial(2 * tokens, rng.dirichlet(np.full(experts, alpha))).tolist()
            dims, context = moe_dims(tokens, counts), {"routing": counts, **LOAD}
            fast = template.instantiate(dims, context)
            assert_same_instance(fast, template.instantiate_node_by_node(dims, context))
            keys.setdefault(fast.num_nodes, set()).add(fast.structure_key)
    idle = moe_dims(16, [16, 16] + [0] * (experts - 2))
    fast, slow = template.instantiate(idle), template.instantiate_node_by_node(idle)
    assert_same_instance(fast, slow)
    assert fast.structure_key != template.instantiate(moe_dims(16, [4] * experts)).structure_key


def test_an_instance_changed_before_hashing_is_hashed_from_its_nodes():
    template = zoo.template("llama", "small")
    dims = {"batch": 2, "seq": 40}
    reference = template.instantiate_node_by_node(dims)
    changed = template.instantiate(dims)
    changed.nodes[3] = replace(changed.nodes[3], flops=12345)
    reference.nodes[3] = replace(reference.nodes[3], flops=12345)
    assert changed.hash == reference.hash and changed.structure_key is None
    rewired = template.instantiate(dims)
    rewired.outputs.append((0, 0))
    assert rewired.structure_key is None and rewired.hash == ComputeGraph.from_json(rewired.to_json()).hash
    recontexted = template.instantiate(dims)
    recontexted.context["device_load"] = 0.3                 # the context is read when hashed
    assert recontexted.hash == template.instantiate(dims, {"device_load": 0.3}).hash
    assert recontexted.structure_key is not None


def tiny_template(dtype: str = "float32", attrs: dict | None = None, max_n: int = 64) -> ComputeGraph:
    """x[n, 4] -> relu -> add(relu(x), y[m, 4]); FLOPs as expressions."""
    x, y = TensorSpec(("n", 4), dtype), TensorSpec(("m", 4), dtype)
    nodes = [OpNode(0, "relu", OpKind.ELEMWISE, (x,), (x,), "n * 4", attrs=attrs or {}),
             OpNode(1, "add", OpKind.BROADCAST, (x, y), (x,), "n * 4")]
    return ComputeGraph(nodes, [Edge(0, 1)], [(1, 0)], name="tiny",
                        symbols=[SymbolRange("n", 1, max_n), SymbolRange("m", 1, 64)])


def test_a_template_string_that_looks_like_a_placeholder_keeps_the_dump():
    template = tiny_template(attrs={"note": "\ue000e0\ue001"})
    fast = template.instantiate({"n": 3, "m": 5})
    assert fast._recipe.canonical_json(fast.context) is None  # no skeleton: the holes would not count
    assert fast.hash == template.instantiate_node_by_node({"n": 3, "m": 5}).hash


def test_arrays_are_left_to_graph_arrays_of_when_float_sums_could_round():
    template = tiny_template("float64", max_n=2**62)
    fast = template.instantiate({"n": 2**52 + 1, "m": 3})
    assert fast._arrays is None
    assert_same_arrays(GraphArrays.of(template.instantiate_node_by_node({"n": 2**52 + 1, "m": 3})), fast.arrays)


def test_a_template_with_a_dtype_of_unknown_size_instantiates_node_by_node():
    template = tiny_template("complex32")
    graph = template.instantiate({"n": 3, "m": 5})
    assert graph._recipe is None and graph.hash == template.instantiate_node_by_node({"n": 3, "m": 5}).hash
