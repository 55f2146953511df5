"""ComputeGraph IR, importers, templates and workloads, with the real torch.export + TVM path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fusiongym.graphs import (ComputeGraph, GraphError, OpKind, OpNode, from_relax, from_torch, load_suite,
                              synthetic, zoo)
from fusiongym.graphs.relax_import import UnsupportedOpError
from fusiongym.graphs.torch_import import ModelExportError


class ConvBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1, stride=2)
        self.bn = torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean(dim=(2, 3)))


class Attention(torch.nn.Module):
    def forward(self, q, k, v):
        scores = q @ k.transpose(-1, -2)
        return torch.softmax(scores, dim=-1) @ v


BATCH = torch.export.Dim("batch", min=1, max=64)
SEQ = torch.export.Dim("seq", min=2, max=1024)


@pytest.fixture(scope="module")
def conv_template() -> ComputeGraph:
    return from_torch(ConvBlock(), (torch.randn(2, 3, 32, 32),), {"x": {0: BATCH}}, name="convblock")


@pytest.fixture(scope="module")
def attention_template() -> ComputeGraph:
    q = torch.randn(2, 4, 16, 32)
    spec = {0: BATCH, 2: SEQ}
    return from_torch(Attention(), (q, q.clone(), q.clone()), {"q": spec, "k": spec, "v": spec}, name="attn")


def nodes_by_op(graph: ComputeGraph, op: str):
    return [node for node in graph.nodes if node.op == op]


def test_conv_and_matmul_flops_match_closed_form(conv_template):
    graph = conv_template.instantiate({"batch": 5})
    (conv,) = nodes_by_op(graph, "conv2d")
    # out 5×16×16×16, each output: 3 in-channels × 3×3 window, 2 FLOPs per MAC
    assert conv.flops == 2 * 5 * 16 * 16 * 16 * 3 * 3 * 3
    assert conv.kind == OpKind.OUT_ELEMWISE_FUSABLE
    assert conv.attrs["strides"] == [2, 2]
    (matmul,) = nodes_by_op(graph, "matmul")
    assert matmul.flops == 2 * 5 * 16 * 10
    assert matmul.outputs[0].shape == (5, 10)


def test_attention_flops_scale_with_sequence_squared(attention_template):
    graph = attention_template.instantiate({"batch": 3, "seq": 100})
    matmuls = nodes_by_op(graph, "matmul")
    assert len(matmuls) == 2
    expected = 2 * 3 * 4 * 100 * 100 * 32  # QK^T and PV have the same MAC count
    assert [m.flops for m in matmuls] == [expected, expected]
    (softmax,) = nodes_by_op(graph, "softmax")
    assert softmax.outputs[0].shape == (3, 4, 100, 100)


def test_batch_norm_statistics_are_lifted_out_of_main(conv_template):
    ops = [node.op for node in conv_template.nodes]
    assert "sqrt" not in ops and "expand_dims" not in ops  # weight preprocessing, run once
    assert ops[0] == "conv2d"
    assert all(t.is_param for t in conv_template.nodes[0].inputs[1:])


def test_instantiate_equals_a_fresh_export_at_the_same_shapes(conv_template):
    instantiated = conv_template.instantiate({"batch": 7})
    fresh = from_torch(ConvBlock(), (torch.randn(7, 3, 32, 32),), name="convblock")
    assert [n.op for n in instantiated.nodes] == [n.op for n in fresh.nodes]
    assert [n.outputs for n in instantiated.nodes] == [n.outputs for n in fresh.nodes]
    assert [n.inputs for n in instantiated.nodes] == [n.inputs for n in fresh.nodes]
    assert [n.flops for n in instantiated.nodes] == [n.flops for n in fresh.nodes]
    assert instantiated.edges == fresh.edges


# Non-default run-time sizes for every zoo dim; MoE experts share the top-2 routing of 48 tokens.
ZOO_DIMS = {"batch": 3, "image": 96, "seq": 40, "tokens": 48}
TOP_K = 2


def zoo_dims(template: ComputeGraph) -> dict[str, int]:
    experts = [dim for dim in template.symbols if dim.startswith("tokens_e")]
    per_expert = {dim: TOP_K * ZOO_DIMS["tokens"] // len(experts) for dim in experts}
    return {dim: ZOO_DIMS[dim] for dim in template.symbols if dim not in per_expert} | per_expert


def inputs_at(model: zoo.ZooModel, dims: dict[str, int]) -> tuple[torch.Tensor, ...]:
    """The model's example inputs resized to ``dims`` (zeros: valid token ids and expert indices)."""
    resized = []
    for example, spec in zip(model.example_inputs, model.dynamic_shapes, strict=True):
        shape = list(example.shape)
        for axis, dim in spec.items():
            shape[axis] = dims[dim.__name__]
        resized.append(torch.zeros(shape, dtype=example.dtype))
    return tuple(resized)


def fresh_static_export(name: str, dims: dict[str, int]) -> ComputeGraph:
    model = zoo.build(name, "small")
    return from_torch(model.module, inputs_at(model, dims), name=name)


def node_without_callee(node: OpNode) -> dict:
    record = node.to_dict()
    record["attrs"] = {key: value for key, value in record["attrs"].items() if key != "callee"}
    return record


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_instantiate_equals_a_fresh_static_export(name: str) -> None:
    """Weight transforms sized by dims (position / RoPE tables sliced by seq, a class token
    broadcast over batch) are lifted as at static shapes, and op kinds are the static ones
    (a reshape over symbolic dims is no longer opaque)."""
    template = zoo.template(name, "small")
    dims = zoo_dims(template)
    defaults = template.source["default_dims"]
    assert all(dims[dim] != defaults[dim] for dim in ZOO_DIMS if dim in dims)
    instance, fresh = template.instantiate(dims), fresh_static_export(name, dims)
    assert [n.op for n in instance.nodes] == [n.op for n in fresh.nodes]
    assert [n.kind for n in instance.nodes] == [n.kind for n in fresh.nodes]
    # shapes, FLOPs, bindings; not the PrimFunc names, which each module numbers apart (matmul3 / matmul)
    assert [node_without_callee(n) for n in instance.nodes] == [node_without_callee(n) for n in fresh.nodes]
    assert instance.edges == fresh.edges and instance.outputs == fresh.outputs
    for column in ("flops", "bytes_read", "bytes_written", "param_bytes", "edge_bytes"):
        np.testing.assert_array_equal(getattr(instance.arrays, column), getattr(fresh.arrays, column))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "vit"])
def test_lifted_transforms_over_dims_compute_the_model(name: str) -> None:
    """``main_transform_params(weights, dims)`` computes what the template lifted out of main
    (RoPE tables sliced by seq, a class token broadcast over batch): main on its results
    gives the eager model's output."""
    import tvm
    from tvm import relax

    from fusiongym.graphs.torch_import import _export
    from fusiongym.reward.tvm_apply import flatten_result

    model = zoo.build(name, "small")
    graph = from_torch(model.module, model.example_inputs, model.dynamic_shapes, name=name)
    mod = graph.relax_module
    dims = zoo_dims(graph)
    tvm_sizes = {graph.source["tvm_dims"][dim]: size for dim, size in dims.items()}
    program = _export(model.module, model.example_inputs, model.dynamic_shapes, name)
    weights = [tvm.runtime.tensor(program.state_dict[spec.target].detach().numpy())
               for spec in program.graph_signature.input_specs
               if spec.kind == torch.export.graph_signature.InputKind.PARAMETER]
    (dims_param,) = mod["main_transform_params"].params[1:]
    shape = tvm.runtime.ShapeTuple([tvm_sizes[var.name] for var in dims_param.ty.values])
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    lifted = flatten_result(vm["main_transform_params"](weights, shape))
    inputs = [torch.randint(0, 8, x.shape) if x.dtype == torch.int64 else torch.randn(x.shape)
              for x in inputs_at(model, dims)]
    (output,) = flatten_result(vm["main"](*[tvm.runtime.tensor(x.numpy()) for x in inputs], *lifted))
    with torch.no_grad():
        expected = model.module(*inputs)
    np.testing.assert_allclose(output.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_mean_over_dynamic_dims_counts_no_shape_arithmetic():
    graph = zoo.load("resnet18", "small", batch=3, image=96)
    (mean,) = nodes_by_op(graph, "mean")
    channels, window = mean.outputs[0].shape[1], mean.inputs[0].shape[2] * mean.inputs[0].shape[3]
    assert mean.flops == 3 * channels * (window + 1)  # a window of adds and one divide per output


def test_json_round_trip_is_exact(conv_template):
    graph = conv_template.instantiate({"batch": 3}, {"device_load": {"compute": 0.5, "bandwidth": 0.2}})
    again = ComputeGraph.from_json(graph.to_json())
    assert again == graph
    assert again.hash == graph.hash
    assert ComputeGraph.from_json(conv_template.to_json()) == conv_template


def test_hash_is_identical_across_processes():
    code = ("from fusiongym.graphs import synthetic; import sys; "
            "sys.stdout.write(synthetic(n_nodes=300, seed=4).hash)")
    hashes = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
              for _ in range(2)}
    assert hashes == {synthetic(n_nodes=300, seed=4).hash}


def test_hash_depends_on_shapes_and_context(conv_template):
    small = conv_template.instantiate({"batch": 2})
    assert small.hash != conv_template.instantiate({"batch": 3}).hash
    assert small.hash != conv_template.instantiate({"batch": 2}, {"device_load": 0.5}).hash


def test_conversions_and_summary(conv_template):
    graph = conv_template.instantiate({"batch": 2})
    nxg = graph.to_networkx()
    assert nxg.number_of_nodes() == graph.num_nodes and nxg.number_of_edges() == graph.num_edges
    data = graph.to_pyg()
    assert tuple(data.edge_index.shape) == (2, graph.num_edges)
    assert data.x.shape[0] == graph.num_nodes
    text = graph.summary()
    assert "out-elemwise-fusable" in text and "conv2d" in text and graph.hash in text


def test_instantiate_rejects_unknown_and_out_of_range_dims(conv_template):
    with pytest.raises(GraphError, match="outside its range"):
        conv_template.instantiate({"batch": 65})
    with pytest.raises(GraphError, match="unknown dim"):
        conv_template.instantiate({"batch": 2, "height": 3})
    with pytest.raises(GraphError, match="needs values"):
        conv_template.instantiate({})


def test_unsupported_operator_names_op_and_model():
    class Sorts(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x).S

    with pytest.raises((UnsupportedOpError, ModelExportError), match="Sorts") as raised:
        from_torch(Sorts(), (torch.randn(4, 4),), name="Sorts")
    assert "svd" in str(raised.value)  # the op TVM's frontend does not know


def test_unexportable_model_gives_reason_and_hint():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(ModelExportError, match="Hint") as raised:
        from_torch(DataDependent(), (torch.randn(3),), name="DataDependent")
    assert "data-dependent expression" in str(raised.value)  # torch.export's own reason, before the hint


def test_export_error_names_the_torch_upgrade_when_torch_is_older_than_the_zoo_needs(monkeypatch):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    with pytest.raises(ModelExportError, match=r"This is torch 2\.11\.0\+cu130.*install torch>=2\.13"):
        from_torch(DataDependent(), (torch.randn(3),), name="DataDependent")
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    with pytest.raises(ModelExportError) as raised:
        from_torch(DataDependent(), (torch.randn(3),), name="DataDependent")
    assert "install torch" not in str(raised.value)


def test_from_relax_accepts_a_users_module():
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    program = torch.export.export(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()),
                                  (torch.randn(2, 8),))
    graph = from_relax(from_exported_program(program), name="mlp")
    assert [n.op for n in graph.nodes] == ["permute_dims", "matmul", "add", "relu"]
    assert isinstance(graph.relax_module, tvm.IRModule)
    assert all(node.binding is not None for node in graph.nodes)


def test_moe_zero_token_expert_drops_out():
    template = zoo.template("mixtral_moe", "small")
    experts = sorted(name for name in template.symbols if name.startswith("tokens_e"))
    tokens = 12
    counts = {name: 0 for name in experts}
    counts[experts[0]] = tokens * 2  # every token routed (top-2) to expert 0 only
    graph = template.instantiate({"tokens": tokens, **counts})
    everyone = template.instantiate({"tokens": tokens, **{name: 3 for name in experts}})
    assert graph.num_nodes < everyone.num_nodes
    assert all(t.numel > 0 for node in graph.nodes for t in node.outputs)
    assert graph.outputs and graph.arrays.flops.sum() > 0


def test_unknown_zoo_name_lists_the_names():
    with pytest.raises(ValueError, match="resnet50"):
        zoo.load("resnet51")


def test_synthetic_graph_is_seeded_and_sized():
    graph = synthetic(n_nodes=2000, seed=3)
    assert graph.num_nodes == 2000
    assert graph.hash == synthetic(n_nodes=2000, seed=3).hash != synthetic(n_nodes=2000, seed=4).hash
    kinds = {node.kind for node in graph.nodes}
    assert {OpKind.OUT_ELEMWISE_FUSABLE, OpKind.ELEMWISE, OpKind.INJECTIVE} <= kinds
    with pytest.raises(ValueError, match="20000"):
        synthetic(n_nodes=20_001)


def test_suites_hold_out_test_models_and_ranges():
    train, test = load_suite("train"), load_suite("test")
    train_models = {(w.model, w.variant) for w in train}
    for workload in test:
        if (workload.model, workload.variant) in train_models:  # same model: a held-out shape range
            seen = [w for w in train if w.model == workload.model][0]
            assert any(held_out.min > seen.dims[dim].max for dim, held_out in workload.dims.items()), \
                workload.name
    assert {"resnet50", "vit"} <= {w.model for w in test} - {w.model for w in train}
    extra = {w.model for w in load_suite("train_extra")}   # architectures only the cost model trains on
    assert extra and not extra & {w.model for w in [*train, *test]}


def test_workload_sample_is_seeded_and_pins_context():
    (moe,) = [w for w in load_suite("smoke") if w.routing is not None]
    first = moe.sample(np.random.default_rng(5))
    second = moe.sample(np.random.default_rng(5))
    assert first.hash == second.hash
    assert sum(first.context["routing"]) == first.context["dims"]["tokens"] * moe.routing.top_k
    pinned = moe.sample(np.random.default_rng(6), dims={"tokens": 16}, device_load=0.4)
    assert pinned.context["dims"]["tokens"] == 16
    assert pinned.context["device_load"] == {"compute": 0.4, "bandwidth": 0.4}
    assert json.loads(pinned.to_json())["context"]["workload"] == moe.name


@pytest.mark.slow
def test_resnet50_totals_published_macs():
    graph = zoo.load("resnet50", "full", batch=1, image=224)
    macs = sum(float(n.flops) for n in graph.nodes if n.op in ("conv2d", "matmul")) / 2
    assert macs == pytest.approx(4.1e9, rel=0.03)
    assert zoo.load("resnet50", "full", batch=2, image=224).arrays.flops.sum() == pytest.approx(
        2 * graph.arrays.flops.sum(), rel=1e-9)


def test_load_ranges_beyond_the_model_are_refused():
    from fusiongym.graphs.workloads import LoadRange

    assert LoadRange(0.2, 0.9).max == 0.9
    with pytest.raises(ValueError, match=r"0 <= min <= max <= 0.9"):
        LoadRange(0.0, 0.95)
    with pytest.raises(ValueError, match=r"0 <= min <= max"):
        LoadRange(0.5, 0.2)
    with pytest.raises(ValueError, match="idle_probability"):
        LoadRange(idle_probability=1.5)
