"""Tests of the torch op mapping and the TorchInductor backend (real Inductor, real SQLite)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fusiongym.graphs import TensorSpec, zoo
from fusiongym.reward import Plan, get_backend, timing
from fusiongym.reward.fingerprint import cpu_fingerprint
from fusiongym.reward.store import MeasurementStore
from fusiongym.reward.torch_backend import TorchBackend, TorchBackendError
from fusiongym.reward.torch_ops import (TENSOR, UnsupportedOpError, build_region, infer_operands, torch_op,
                                        unsupported_reason)

CORE_MODELS = ["bert", "densenet", "efficientnet", "llama", "mixtral_moe", "mobilenet_v2", "regnet", "resnet18", "resnet50",
               "swin", "vit", "whisper"]
QUICK = timing.TimingProtocol(warmup=1, min_repeat_ms=2.0, repeats=5, max_remeasure=0)


@pytest.mark.parametrize("name", CORE_MODELS)
def test_every_zoo_node_maps_and_runs_with_its_shapes(name: str) -> None:
    graph = zoo.load(name, "small")
    assert unsupported_reason(graph, range(graph.num_nodes)) is None
    operands = infer_operands(graph)
    for node in graph.nodes:
        region = build_region(graph, [node.id], operands)
        outputs = region.module(*region.random_inputs())
        for (n, k), tensor in zip(region.outputs, outputs):
            spec = graph.nodes[n].outputs[k]
            assert tuple(tensor.shape) == tuple(spec.shape), (node.op, node.attrs)
            assert str(tensor.dtype).removeprefix("torch.") == spec.dtype, (node.op, node.attrs)


@pytest.mark.slow
@pytest.mark.parametrize("name", CORE_MODELS)
def test_zoo_models_run_op_by_op_equal_eager_torch(name: str) -> None:
    """Every node of the model, through its torch mapping with the Relax call's exact operands,
    composes to the eager model's output: each mapped op has TVM's graph semantics."""
    from fusiongym.agents.jit import PlannedModule, eager_region, import_model

    model = zoo.build(name, "small")
    imported = import_model(model.module, model.example_inputs, name)
    planned = PlannedModule(imported, Plan.singletons(imported.graph), compiler=eager_region)   # semantics only
    with torch.no_grad():
        torch.testing.assert_close(planned(*model.example_inputs), model.module(*model.example_inputs),
                                   rtol=1e-4, atol=1e-4)


def test_scalar_operands_and_slices_follow_the_relax_call() -> None:
    graph = zoo.load("llama", "small")
    node = next(n for n in graph.nodes if n.op == "add" and len(n.inputs) == 1)
    x = torch.randn(*node.inputs[0].shape)
    torch.testing.assert_close(torch_op(node, (TENSOR, 0.25))(x), x + 0.25)
    torch.testing.assert_close(torch_op(dataclasses.replace(node, op="subtract"), (1.0, TENSOR))(x), 1.0 - x)
    # Relax mod truncates toward zero (C fmod), floor_mod rounds down (Python %): they differ below zero.
    torch.testing.assert_close(torch_op(dataclasses.replace(node, op="mod"), (TENSOR, 0.25))(x), torch.fmod(x, 0.25))
    torch.testing.assert_close(torch_op(dataclasses.replace(node, op="floor_mod"), (TENSOR, 0.25))(x), x % 0.25)
    sliced = dataclasses.replace(node, op="strided_slice", attrs={},
                                 inputs=(TensorSpec((2, 4, 16), "float32"),), outputs=(TensorSpec((2, 4, 8), "float32"),))
    y = torch.randn(2, 4, 16)
    torch.testing.assert_close(torch_op(sliced, (TENSOR, [2], [8], [2**63 - 1], [1]))(y), y[..., 8:])
    torch.testing.assert_close(torch_op(sliced)(y), y[..., :8])   # bounds unknown: same size from 0


def test_unsupported_op_names_op_model_and_fix() -> None:
    graph = zoo.load("resnet18", "small")
    node = dataclasses.replace(graph.nodes[0], op="fft2d")
    with pytest.raises(UnsupportedOpError, match=r"resnet18.*'fft2d'.*Fix"):
        torch_op(node, model="resnet18")
    with pytest.raises(UnsupportedOpError, match="layout"):
        torch_op(dataclasses.replace(graph.nodes[0], attrs={**graph.nodes[0].attrs, "kernel_layout": "OIHWX"}))


def test_inferred_wiring_uses_every_edge_once_per_reader() -> None:
    graph = zoo.load("bert", "small")
    operands = infer_operands(graph)
    for edge in graph.edges:
        assert any(o.node == edge.src and o.output == edge.src_output for o in operands[edge.dst])
    assert all(len(ops) == len(node.inputs) for ops, node in zip(operands, graph.nodes))


@pytest.mark.slow
def test_fused_region_is_measured_stored_and_hit(tmp_path) -> None:
    graph = zoo.load("resnet18", "small", batch=1, image=64)
    group = [0, 1, 2]   # conv2d -> subtract -> divide (batch norm): one Inductor region
    assert [graph.nodes[n].op for n in group] == ["conv2d", "subtract", "divide"]
    store = MeasurementStore(tmp_path / "m.db")
    backend = get_backend("torch", store=store, protocol=QUICK, measure_load=False)
    first = backend.group_latency(graph, group, "default")
    assert first.origin == "measured" and first.us > 0
    rows = list(store.iter_all())
    assert len(rows) == 1
    row = rows[0]
    assert row.key.backend == f"torch-inductor-cpu-{timing.AVAILABLE_CORES}t"
    assert row.key.device == cpu_fingerprint()
    assert row.key.backend_version.startswith(f"torch-{torch.__version__}/triton-")
    assert row.meta["torch"] == torch.__version__ and row.meta["ops"] == ["conv2d", "subtract", "divide"]
    again = TorchBackend(store=store, protocol=QUICK, measure_load=False).group_latency(graph, group, "default")
    assert again.origin == "cached" and again.us == first.us
    assert store.stats.hits == 1
    report = backend.latency(graph, Plan([group, list(range(3, graph.num_nodes))],
                                         ["default", "default"], graph.hash))
    assert report.origins[0] == "cached" and report.backend == "torch"


def test_cuda_backend_without_gpu_says_so(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the error path is for machines without one")
    backend = TorchBackend(device="cuda", store=tmp_path / "m.db")
    graph = zoo.load("resnet18", "small")
    with pytest.raises(TorchBackendError, match="device='cpu'"):
        backend.group_latency(graph, [0], "default")


@pytest.mark.gpu
def test_cuda_region_timed_with_events_and_slowed_by_gpu_load(tmp_path) -> None:
    from fusiongym.reward.gpu_load import GpuLoad
    from fusiongym.reward.torch_backend import measure_cuda

    graph = zoo.load("resnet50", "small", batch=8, image=128)
    backend = TorchBackend(device="cuda", store=tmp_path / "m.db", measure_load=False)
    latency = backend.group_latency(graph, [0, 1, 2, 3], "default")
    assert latency.origin == "measured" and latency.us > 0
    compiled = backend.compiled_region(graph, [0, 1, 2, 3])
    args = compiled.region.random_inputs("cuda")
    idle = measure_cuda(compiled.run, args, backend.protocol).median_us
    with GpuLoad(0.9):
        loaded = measure_cuda(compiled.run, args, backend.protocol).median_us
    assert loaded > idle


@pytest.mark.slow
def test_compare_writes_the_three_plans_of_a_case(tmp_path) -> None:
    """`fusiongym compare` on one small case: policy regions, Inductor alone, TVM's default plan."""
    import csv
    import json

    from fusiongym.scripts.cli import main

    code = main(["compare", "--device", "cpu", "--suite", "test", "--workloads", "llama_long/test",
                 "--max-dims", "batch=1,seq=16,tokens=16", "--threads", "1", "--out", str(tmp_path),
                 "--store", str(tmp_path / "measurements.db")])
    assert code == 0
    with open(tmp_path / "compare" / "test-small-cpu.csv", newline="") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"policy", "inductor_default", "tvm_default"}
    assert all(float(row["latency_us"]) > 0 for row in rows.values())
    assert len({row["graph_hash"] for row in rows.values()}) == 1
    assert rows["inductor_default"]["num_groups"] == "1" and int(rows["policy"]["num_groups"]) > 1
    policy_plan = json.loads(rows["policy"]["plan"])
    assert len(policy_plan["groups"]) == int(rows["policy"]["num_groups"])
    report = (tmp_path / "compare" / "COMPARE-test-small-cpu.md").read_text()
    assert "--workloads llama_long/test" in report and "torch" in report
    assert not any(path.name.endswith(".tmp") for path in (tmp_path / "compare").iterdir())
