"""Tests of run-time use: the pretrained policy plans, TorchInductor or TVM builds, outputs equal eager."""

from __future__ import annotations

import copy
from importlib import resources

import pytest
import torch
from torch import nn

from fusiongym.agents import FusionPolicy
from fusiongym.graphs import ComputeGraph, Edge, OpKind, OpNode, TensorSpec
from fusiongym.agents.jit import PlannedModule, eager_region, group_order, import_model, policy_backend, tvm_compile
from fusiongym.reward import Plan

TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class TransformerBlock(nn.Module):
    """Pre-norm attention + GELU MLP; the residuals read the block's input directly."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(batch, seq, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / (dim // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(batch, seq, dim))
        return x + self.mlp(self.norm2(x))


def _models() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    cnn = SmallCNN().eval()
    with torch.no_grad():   # non-trivial batch-norm statistics, so a wrong epsilon or order shows
        cnn.features[1].running_mean.uniform_(-1, 1)
        cnn.features[1].running_var.uniform_(0.5, 2.0)
    return {"cnn": (cnn, (torch.randn(2, 3, 16, 16),)),
            "transformer": (TransformerBlock().eval(), (torch.randn(2, 8, 32),))}


MODELS = _models()


@pytest.fixture(scope="module")
def policy() -> FusionPolicy:
    """The shipped policy with its stop logit lowered by 2: as shipped it fuses nothing on
    these tiny models (every fuse logit stays below its stop logit there), and the tests
    need plans with fused regions."""
    import onnx

    from fusiongym.agents.kernel_engine import KernelEngine, onnx_weights

    shipped = FusionPolicy.pretrained()
    with resources.as_file(resources.files("fusiongym.agents").joinpath("pretrained", "policy.onnx")) as path:
        weights = onnx_weights(onnx.load(str(path)))
    weights["gnn.stop_head.net.2.bias"] = weights["gnn.stop_head.net.2.bias"] - 2.0
    return FusionPolicy(KernelEngine(weights, len(shipped.schedules)), shipped.metadata, name="pretrained")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_compile_with_the_policy_equals_eager(name: str, policy: FusionPolicy) -> None:
    model, inputs = MODELS[name]
    torch._dynamo.reset()
    backend = policy_backend(policy)
    compiled = torch.compile(model, backend=backend, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs), **TOLERANCE)
        other = torch.randn_like(inputs[0])
        torch.testing.assert_close(compiled(other), model(other), **TOLERANCE)   # same shapes: no re-plan
    assert len(backend.plans) == 1
    plan = backend.plans[0]
    assert 1 <= plan.num_groups < sum(len(g) for g in plan.groups)   # the policy fused something
    assert plan.meta["method"] == "policy:pretrained"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_tvm_compile_with_the_policy_equals_eager(name: str, policy: FusionPolicy) -> None:
    model, inputs = MODELS[name]
    run = tvm_compile(model, inputs, policy)
    with torch.no_grad():
        torch.testing.assert_close(run(*inputs), model(*inputs), **TOLERANCE)
    assert run.plan.num_groups < sum(len(g) for g in run.plan.groups)   # the policy fused something


@pytest.fixture
def exact_cuda_math():
    """Full fp32 on the GPU while a test runs: eager convs default to TF32 on Ampere and later,
    which differs from a region's fp32 kernel by ~1e-3."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_compile_with_the_policy_on_cuda_equals_eager(name: str, policy: FusionPolicy, exact_cuda_math) -> None:
    model, inputs = MODELS[name]
    model, inputs = copy.deepcopy(model).cuda(), tuple(x.cuda() for x in inputs)
    torch._dynamo.reset()
    backend = policy_backend(policy, device="cuda")
    compiled = torch.compile(model, backend=backend, dynamic=False)
    with torch.no_grad():
        result = compiled(*inputs)
        torch.testing.assert_close(result, model(*inputs), **TOLERANCE)
    assert result.device.type == "cuda"
    assert 1 <= backend.plans[0].num_groups < sum(len(g) for g in backend.plans[0].groups)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(MODELS))
def test_tvm_compile_for_cuda_with_the_policy_equals_eager(name: str, policy: FusionPolicy) -> None:
    model, inputs = MODELS[name]
    run = tvm_compile(model, inputs, policy, target="cuda")
    with torch.no_grad():
        torch.testing.assert_close(run(*inputs), model(*inputs), **TOLERANCE)
    assert run.plan.num_groups < sum(len(g) for g in run.plan.groups)


def test_groups_run_in_dependency_order_not_by_first_node() -> None:
    spec = TensorSpec((4,), "float32")
    nodes = [OpNode(i, "relu", OpKind.ELEMWISE, (spec,), (spec,), 4) for i in range(3)]
    graph = ComputeGraph(nodes, [Edge(1, 2)], [(0, 0), (2, 0)])
    plan = Plan([[0, 2], [1]], ["default", "default"], graph.hash)   # group 0 reads group 1
    assert group_order(graph, plan) == [1, 0]


def test_regions_cut_across_residual_edges_equal_eager() -> None:
    model, inputs = MODELS["transformer"]
    imported = import_model(model, inputs)
    graph = imported.graph
    half = graph.num_nodes // 2   # a prefix and a suffix: convex, with residual tensors crossing the cut
    planned = PlannedModule(imported, Plan.from_assignment(graph, [0] * half + [1] * (graph.num_nodes - half)),
                            compiler=eager_region)   # eager regions: the wiring is tested, not Inductor
    assert len(planned.regions[0].outputs) > 1
    with torch.no_grad():
        torch.testing.assert_close(planned(*inputs), model(*inputs), **TOLERANCE)


def test_dynamic_shapes_are_refused_with_the_fix(policy: FusionPolicy) -> None:
    model, inputs = MODELS["cnn"]
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=policy_backend(policy), dynamic=True)
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="dynamic=False"):
        compiled(*inputs)
