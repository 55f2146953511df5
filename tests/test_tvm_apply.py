"""Plans applied to real Relax modules: numerically exact, and TVM's own FuseOps reproduced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm_ffi
from tvm import relax, tirx

from fusiongym.graphs import ComputeGraph, from_torch, zoo
from fusiongym.reward import IllegalPlanError, Plan
from fusiongym.reward.tvm_apply import (analyze, apply_plan, bind_dims, fuse_tir, group_bindings, group_module,
                                        kernel_of, validate, wrap_groups)
from fusiongym.reward.tvm_default import tvm_default_plan

BATCH = torch.export.Dim("batch", min=1, max=64)
SEQ = torch.export.Dim("seq", min=2, max=128)


class SmallCNN(torch.nn.Module):
    """conv-bn-relu, a residual conv block, global pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv1(x)))
        y = torch.relu(self.conv2(y) + y)
        return self.fc(y.mean((2, 3)))


class TransformerBlock(torch.nn.Module):
    """Pre-norm attention (qkv split into heads) and an MLP, both residual."""

    def __init__(self, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads = heads
        self.norm = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                       torch.nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.qkv(self.norm(x)).chunk(3, -1))
        attention = torch.softmax(q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5, -1) @ v
        x = x + self.proj(attention.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(x)


@pytest.fixture(scope="module")
def cnn_template() -> ComputeGraph:
    return from_torch(SmallCNN(), (torch.randn(2, 3, 16, 16),), dynamic_shapes={"x": {0: BATCH}})


@pytest.fixture(scope="module")
def cnn(cnn_template: ComputeGraph) -> ComputeGraph:
    return cnn_template.instantiate({"batch": 4})


@pytest.fixture(scope="module")
def block_template() -> ComputeGraph:
    return from_torch(TransformerBlock(), (torch.randn(2, 8, 32),), dynamic_shapes={"x": {0: BATCH, 1: SEQ}})


@pytest.fixture(scope="module")
def block(block_template: ComputeGraph) -> ComputeGraph:
    return block_template.instantiate({"batch": 2, "seq": 16})


def nodes_between(graph: ComputeGraph, first_op: str, last_op: str, occurrence: int = 0) -> list[int]:
    """The contiguous (hence convex) run of nodes from the ``occurrence``-th ``first_op`` to
    the next ``last_op`` after it."""
    starts = [n.id for n in graph.nodes if n.op == first_op]
    start = starts[occurrence]
    end = next(n.id for n in graph.nodes[start + 1:] if n.op == last_op)
    return list(range(start, end + 1))


def plan_with_group(graph: ComputeGraph, group: list[int]) -> Plan:
    labels = [group[0] if n in group else n for n in range(graph.num_nodes)]
    return Plan.from_assignment(graph, labels)


def test_bind_dims_makes_main_concrete(cnn: ComputeGraph, cnn_template: ComputeGraph) -> None:
    x = bind_dims(cnn)["main"].params[0]
    assert [int(d) for d in x.ty.shape.values] == [4, 3, 16, 16]
    assert bind_dims(cnn_template).same_as(cnn_template.relax_module)  # a template stays symbolic


def test_all_singletons_equal_the_unfused_module(cnn: ComputeGraph) -> None:
    report = validate(cnn, Plan.singletons(cnn))
    assert report.ok, report.details
    assert report.max_abs_error == 0.0  # same kernels, same order of arithmetic


@pytest.mark.parametrize("model", ["resnet18", "llama", "mixtral_moe", "vit"])
def test_all_singletons_equal_the_unfused_module_on_zoo_models(model: str) -> None:
    """The zoo's small models, lifted weight transforms and routing inputs included."""
    graph = zoo.load(model, "small")
    report = validate(graph, Plan.singletons(graph))
    assert report.ok and report.num_outputs >= 1, report.details
    assert report.max_abs_error == 0.0


def test_conv_bias_bn_relu_group_validates(cnn: ComputeGraph) -> None:
    group = nodes_between(cnn, "conv2d", "relu")
    assert [cnn.nodes[n].op for n in (group[0], group[-1])] == ["conv2d", "relu"] and len(group) > 3
    report = validate(cnn, plan_with_group(cnn, group))
    assert report.ok, report.details


def test_matmul_to_matmul_group_fuseops_never_forms_validates(block: ComputeGraph) -> None:
    group = nodes_between(block, "matmul", "matmul", occurrence=1)  # q@k ... softmax ... @v
    assert sum(block.nodes[n].op == "matmul" for n in group) == 2
    assert all(sum(block.nodes[n].op == "matmul" for n in g) < 2 for g in tvm_default_plan(block).groups)
    report = validate(block, plan_with_group(block, group))
    assert report.ok, report.details


def test_random_interval_plans_validate(block: ComputeGraph) -> None:
    """Contiguous runs in topological order are convex; cuts land inside tuple outputs too."""
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, block.num_nodes), size=6, replace=False))
    labels = np.searchsorted(cuts, np.arange(block.num_nodes), side="right")
    report = validate(block, Plan.from_assignment(block, labels.tolist()))
    assert report.ok, report.details


def test_non_convex_plan_is_refused(cnn: ComputeGraph) -> None:
    first, second = cnn.edges[0].src, cnn.edges[0].dst
    path_end = next(e.dst for e in cnn.edges if e.src == second)
    with pytest.raises(IllegalPlanError, match="non-convex"):
        apply_plan(cnn, plan_with_group(cnn, [first, path_end]))


def test_group_module_stands_alone(cnn: ComputeGraph) -> None:
    group = nodes_between(cnn, "conv2d", "relu")
    mod = group_module(cnn, group)
    name, kernel = kernel_of(mod)
    assert name.startswith("fused_conv2d")
    params = mod["main"].params
    assert len(params) == len(kernel.params) - 1  # every input a parameter; the kernel writes one output
    assert all(isinstance(d, tirx.IntImm) for p in params for d in p.ty.shape.values)


def _fuseops_kernels_match(graph: ComputeGraph) -> None:
    """TVM's FuseOps decision read back as a plan and re-applied gives TVM's exact kernels.

    The fused PrimFuncs, each counted once per group that runs it, form equal multisets
    under structural equality: every TVM kernel is made by ``apply_plan`` as many times,
    and ``apply_plan`` makes no fused kernel TVM lacks.
    """
    plan = tvm_default_plan(graph)
    fused = [(group, name) for group, name in enumerate(plan.meta["kernels"]) if name is not None]
    assert fused, "FuseOps fused nothing: the test would prove nothing"
    assert all(len(plan.groups[group]) == 1 for group, name in enumerate(plan.meta["kernels"]) if name is None)
    tvm_mod = relax.transform.FuseTIR()(relax.transform.FuseOps()(bind_dims(graph)))
    wrapped, our_names = wrap_groups(analyze(graph), group_bindings(graph, plan))
    ours = fuse_tir(wrapped)   # the module apply_plan returns, with each group's kernel name
    theirs_kernels = [(name, tvm_mod[name]) for _, name in fused]
    our_kernels = [(our_names[group], ours[our_names[group]]) for group, _ in fused]
    assert not _unmatched(theirs_kernels, our_kernels), "TVM kernels apply_plan does not make as often"
    assert not _unmatched(our_kernels, theirs_kernels), "kernels of apply_plan TVM does not make as often"


def _unmatched(kernels: list[tuple[str, tirx.PrimFunc]], others: list[tuple[str, tirx.PrimFunc]]) -> list[str]:
    """Names of the ``kernels`` left after pairing each with a distinct structurally equal one
    of ``others``: empty when ``kernels`` is a sub-multiset of ``others``."""
    free = [func for _, func in others]
    left = []
    for name, func in kernels:
        match = next((k for k, other in enumerate(free) if tvm_ffi.structural_equal(func, other)), None)
        if match is None:
            left.append(name)
        else:
            free.pop(match)
    return left


@pytest.mark.parametrize("graph_name", ["cnn", "cnn_template", "block", "block_template"])
def test_tvm_default_plan_reproduces_fuseops(graph_name: str, request: pytest.FixtureRequest) -> None:
    _fuseops_kernels_match(request.getfixturevalue(graph_name))


@pytest.mark.slow
@pytest.mark.parametrize("model", zoo.names())
def test_tvm_default_plan_reproduces_fuseops_on_zoo(model: str) -> None:
    """Every zoo model imports (a failure fails here too) and its FuseOps kernels come back."""
    _fuseops_kernels_match(zoo.load(model, "small"))


@pytest.mark.slow
def test_moe_with_an_idle_expert_validates() -> None:
    """An expert that gets no tokens leaves the graph but stays in the module (empty tensors)."""
    dims = zoo.default_dims("mixtral_moe", "small")
    dims["tokens"] -= dims["tokens_e0"]
    dims["tokens_e0"] = 0
    graph = zoo.load("mixtral_moe", "small", **dims)
    assert graph.num_nodes < zoo.template("mixtral_moe", "small").num_nodes
    report = validate(graph, tvm_default_plan(graph))
    assert report.ok, report.details
