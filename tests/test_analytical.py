"""Analytical backend: hand-computed rooflines, fusion, waves, load, schedules, speed paths,
device profiles and calibration."""

from __future__ import annotations

import math
from dataclasses import fields, replace

import numpy as np
import pytest

from fusiongym.graphs import ComputeGraph, Edge, OpKind, OpNode, SymbolRange, TensorSpec, zoo
from fusiongym.reward import Plan, get_backend
from fusiongym.graphs.workloads import LoadShare
from fusiongym.reward.analytical import (CPU_SCHEDULE_MODELS, GPU_SCHEDULE_MODELS, KIND_BANDWIDTH_EFFICIENCY,
                                         KIND_COMPUTE_EFFICIENCY, AnalyticalBackend, build_graph_costs, load_of)
from fusiongym.reward.calibrate import PRIOR_LOG_STD, Sample, collect_samples, fit_cpu_profile, kendall_tau, mape
from fusiongym.reward.devices import (CPU_SCHEDULES, GPU_SCHEDULES, OP_CLASSES, DeviceProfile, ProfileError,
                                      get_profile, load_profile, op_class, save_profile)

MiB = 2**20

# A CPU with round numbers so that the expected latencies below can be worked out by hand.
TOY_CPU = DeviceProfile(name="toy_cpu", kind="cpu", fp32_flops_per_s=100e9, memory_bandwidth_bytes_per_s=10e9,
                        compute_units=2, launch_overhead_us=1.0, parallel_launch_us=4.0,
                        cache_bytes=2 * MiB, vector_width=8)


@pytest.fixture(autouse=True)
def no_calibrated_profile(tmp_path, monkeypatch):
    """Keep a fitted profile in the user's cache from changing the numbers under test."""
    monkeypatch.setenv("FUSIONGYM_CPU_PROFILE", str(tmp_path / "absent.json"))


def f32(*shape: int, param: bool = False) -> TensorSpec:
    return TensorSpec(tuple(shape), "float32", is_param=param)


def matmul_graph(m: int, k: int, n: int, context: dict | None = None) -> ComputeGraph:
    """One matmul of a graph input [m, k] with a weight [k, n]."""
    node = OpNode(0, "matmul", OpKind.OUT_ELEMWISE_FUSABLE, (f32(m, k), f32(k, n, param=True)), (f32(m, n),),
                  flops=2 * m * k * n)
    return ComputeGraph([node], [], outputs=[(0, 0)], name=f"matmul{m}x{k}x{n}", context=context)


def chain_graph(rows: int = 1024, cols: int = 1024, kind: OpKind = OpKind.ELEMWISE,
                context: dict | None = None) -> ComputeGraph:
    """relu(x) -> exp -> multiply by a weight; the last output leaves the graph."""
    x = f32(rows, cols)
    nodes = [
        OpNode(0, "relu", kind, (x,), (x,), flops=x.numel),
        OpNode(1, "exp", kind, (x,), (x,), flops=x.numel),
        OpNode(2, "multiply", kind, (x, f32(rows, cols, param=True)), (x,), flops=x.numel),
    ]
    return ComputeGraph(nodes, [Edge(0, 1), Edge(1, 2)], outputs=[(2, 0)], name="chain", context=context)


def random_graph(seed: int, num_nodes: int = 60) -> ComputeGraph:
    """A random DAG with multi-output nodes, tensors read twice, params and several outputs."""
    rng = np.random.default_rng(seed)
    kinds = list(OpKind)
    nodes: list[OpNode] = []
    edges: list[Edge] = []
    for node_id in range(num_nodes):
        inputs: list[TensorSpec] = []
        if node_id == 0 or rng.random() < 0.1:
            inputs.append(f32(int(rng.integers(1, 64)), 32))  # a graph input
        sources = set(rng.integers(0, node_id, size=int(rng.integers(1, 3))).tolist()) if node_id else set()
        for src in sorted(sources):
            output = int(rng.integers(len(nodes[src].outputs)))
            spec = nodes[src].outputs[output]
            inputs += [spec, spec] if rng.random() < 0.15 else [spec]
            edges.append(Edge(src, node_id, output))
        if rng.random() < 0.3:
            inputs.append(f32(32, int(rng.integers(1, 64)), param=True))
        outputs = tuple(f32(int(rng.integers(1, 4096)), int(rng.integers(1, 64)))
                        for _ in range(1 + int(rng.random() < 0.2)))
        flops = int(rng.integers(0, 10**7))
        kind = kinds[int(rng.integers(len(kinds)))]
        nodes.append(OpNode(node_id, f"op{node_id}", kind, tuple(inputs), outputs, flops=flops))
    consumed = {(e.src, e.src_output) for e in edges}
    outputs = [(n.id, i) for n in nodes for i in range(len(n.outputs))
               if (n.id, i) not in consumed or rng.random() < 0.05]
    return ComputeGraph(nodes, edges, outputs, name=f"random{seed}")


def class_mix_graph(seed: int) -> ComputeGraph:
    """``random_graph`` with its ops named in turn as a convolution, a matmul, a transcendental op and an add."""
    graph = random_graph(seed, 80)
    names = ("conv2d", "matmul", "gelu", "add")
    nodes = [replace(node, op=names[node.id % len(names)]) for node in graph.nodes]
    return ComputeGraph(nodes, list(graph.edges), list(graph.outputs), name=f"classes{seed}")


# -------------------------------------------------------------------- profiles
def test_profiles_carry_the_datasheet_numbers():
    h100, a100, l4 = get_profile("h100_sxm"), get_profile("a100"), get_profile("l4")
    assert h100.compute_units == 132 and h100.memory_bandwidth_bytes_per_s == 3.35e12
    assert h100.fp32_flops_per_s == 67e12
    assert h100.half_flops_per_s == pytest.approx(989e12, rel=1e-3)
    assert a100.compute_units == 108 and a100.memory_bandwidth_bytes_per_s == 2.039e12
    assert a100.fp32_flops_per_s == 19.5e12
    assert a100.half_flops_per_s == 312e12
    assert (l4.compute_units, l4.memory_bandwidth_bytes_per_s, l4.fp32_flops_per_s) == (58, 300e9, 30.3e12)
    assert l4.half_flops_per_s == 121e12
    cpu = get_profile("cpu")
    assert cpu.kind == "cpu" and cpu.compute_units == 2 and cpu.vector_width == 8
    assert cpu.fp32_flops_per_s == 160e9 and cpu.memory_bandwidth_bytes_per_s == 15e9
    assert all(p.kind == "gpu" and p.schedules == GPU_SCHEDULES for p in (h100, a100, l4))
    assert cpu.schedules == CPU_SCHEDULES


def test_schedule_menus_match_the_tvm_backend_names():
    assert CPU_SCHEDULES == ("default", "parallel", "parallel_vectorize", "tiled_16", "tiled_32", "tiled_64")
    assert GPU_SCHEDULES == ("default", "threads_64", "threads_128", "threads_512")
    assert tuple(CPU_SCHEDULE_MODELS) == CPU_SCHEDULES and tuple(GPU_SCHEDULE_MODELS) == GPU_SCHEDULES
    assert AnalyticalBackend("h100_sxm").schedules == GPU_SCHEDULES


def test_unknown_profile_lists_the_known_ones():
    known = r"unknown device profile 'tpu'; known: \['a100', 'cpu', 'h100_sxm', 'l4'\]"
    with pytest.raises(ProfileError, match=known):
        get_profile("tpu")


def test_profile_rejects_schedules_of_the_other_kind():
    with pytest.raises(ProfileError, match="'threads_64' is not on the cpu menu"):
        replace(TOY_CPU, schedule_efficiency=(("threads_64", 1.0),))


def test_profile_json_round_trip_and_calibrated_cpu_profile(tmp_path, monkeypatch):
    fitted = replace(TOY_CPU, name="cpu", schedule_efficiency=(("tiled_32", 1.3),))
    path = save_profile(fitted, tmp_path / "p.json")
    assert load_profile(path) == fitted
    monkeypatch.setenv("FUSIONGYM_CPU_PROFILE", str(tmp_path / "calibrated.json"))
    assert get_profile("cpu").fp32_flops_per_s == 160e9  # nothing calibrated yet
    save_profile(fitted)  # default path: the calibrated CPU profile
    assert get_profile("cpu") == fitted
    assert get_profile("cpu", use_calibrated=False).fp32_flops_per_s == 160e9
    assert AnalyticalBackend("cpu").profile == fitted


def test_ops_fall_into_the_classes_a_profile_may_time_apart():
    assert OP_CLASSES == ("other", "window", "matmul", "transcendental")
    assert [op_class(op) for op in ("conv2d", "conv1d", "max_pool2d", "adaptive_avg_pool2d")] == ["window"] * 4
    assert [op_class(op) for op in ("matmul", "dense")] == ["matmul"] * 2
    assert [op_class(op) for op in ("softmax", "gelu", "silu", "exp")] == ["transcendental"] * 4
    assert [op_class(op) for op in ("add", "reshape", "layer_norm", "op7")] == ["other"] * 4


def test_profile_class_efficiency_round_trips_and_is_checked(tmp_path):
    fitted = replace(TOY_CPU, class_efficiency=(("tiled_16", "window", 0.4), ("default", "matmul", 2.5)))
    assert load_profile(save_profile(fitted, tmp_path / "p.json")) == fitted
    assert fitted.to_dict()["class_efficiency"] == {"default": {"matmul": 2.5}, "tiled_16": {"window": 0.4}}
    assert fitted.class_factor("tiled_16", "window") == 0.4 and fitted.class_factor("tiled_32", "window") == 1.0
    assert "class_efficiency" not in TOY_CPU.to_dict()    # a profile without factors keeps its dict and digest
    assert fitted.digest() != TOY_CPU.digest()
    for triple in (("tiled_16", "other", 2.0), ("threads_64", "window", 1.0), ("tiled_16", "vector", 1.0)):
        with pytest.raises(ProfileError, match="needs a schedule of the cpu menu"):
            replace(TOY_CPU, class_efficiency=(triple,))
    with pytest.raises(ProfileError, match="efficiency of 'matmul' ops under 'default' must be > 0"):
        replace(TOY_CPU, class_efficiency=(("default", "matmul", 0.0),))
    with pytest.raises(ProfileError, match="class_efficiency must map schedule"):
        DeviceProfile.from_dict({**TOY_CPU.to_dict(), "class_efficiency": {"tiled_16": 0.4}})


def test_class_factor_scales_only_its_class_under_its_schedule():
    graph = class_mix_graph(0)
    base = AnalyticalBackend(TOY_CPU)
    scaled = AnalyticalBackend(replace(TOY_CPU, class_efficiency=(("tiled_16", "matmul", 2.0),)))
    for node in graph.nodes:
        for schedule in ("tiled_16", "tiled_32"):
            before, after = (b.group_terms(graph, [node.id], schedule) for b in (base, scaled))
            share = 0.5 if node.op == "matmul" and schedule == "tiled_16" else 1.0
            assert after.compute_us == pytest.approx(before.compute_us * share, rel=1e-12)
            assert after.memory_us == pytest.approx(before.memory_us * share, rel=1e-12)
    plan = Plan.singletons(graph, "tiled_16")
    assert scaled.latency(graph, plan).total_us < base.latency(graph, plan).total_us


def test_registry_builds_the_analytical_backend():
    backend = get_backend("analytical", device="a100")
    assert isinstance(backend, AnalyticalBackend) and backend.device == "a100"
    assert backend.deterministic and not backend.platform_dependent


# ------------------------------------------------------------ hand-computed rooflines
def test_single_matmul_roofline_by_hand():
    graph = matmul_graph(256, 512, 256)
    backend = AnalyticalBackend(TOY_CPU)
    flops = 2 * 256 * 512 * 256
    moved_bytes = (256 * 512 + 512 * 256 + 256 * 256) * 4  # input, weight, output
    assert KIND_COMPUTE_EFFICIENCY[OpKind.OUT_ELEMWISE_FUSABLE] == 0.75
    assert KIND_BANDWIDTH_EFFICIENCY[OpKind.OUT_ELEMWISE_FUSABLE] == 0.8
    # parallel_vectorize: all cores, SIMD: 100 GFLOP/s x 0.75; both cores saturate DRAM, but an
    # unblocked matmul re-reads operands (x 0.5): 10 GB/s x 0.8 x 0.5. 65536 outputs in
    # 1024-element chunks = 64 tiles on 2 cores: no idle wave. Overhead: launch + fork/join.
    terms = backend.group_terms(graph, [0], "parallel_vectorize")
    assert terms.compute_us == pytest.approx(flops / (100e9 * 0.75) * 1e6, rel=1e-12)   # 894.78 µs
    assert terms.memory_us == pytest.approx(moved_bytes / (10e9 * 0.8 * 0.5) * 1e6, rel=1e-12)  # 327.68 µs
    assert terms.wave_factor == 1.0 and terms.bound == "compute"
    assert backend.group_latency(graph, [0], "parallel_vectorize").us == pytest.approx(
        flops / 75e9 * 1e6 + 1.0 + 4.0, rel=1e-12)
    # default: one core, scalar: 100 GFLOP/s / 2 cores / 8 lanes; one core draws 60 % of
    # the bandwidth and scalar loops half of that.
    default = backend.group_latency(graph, [0], "default")
    assert default.us == pytest.approx(flops / (100e9 / 16 * 0.75) * 1e6 + 1.0, rel=1e-12)  # 14317.6 µs
    assert default.origin == "estimated" and default.spread == 0.0
    assert backend.group_terms(graph, [0], "default").memory_us == pytest.approx(
        moved_bytes / (10e9 * 0.6 * 0.5 * 0.8 * 0.5) * 1e6, rel=1e-12)


def test_fusing_an_elementwise_chain_removes_exactly_the_intermediate_bytes():
    graph = chain_graph(1024, 1024)
    backend = AnalyticalBackend(TOY_CPU)
    tensor_bytes = 1024 * 1024 * 4
    bandwidth = 10e9 * 0.9  # parallel_vectorize, elementwise streaming
    unfused = [backend.group_terms(graph, [n], "parallel_vectorize") for n in range(3)]
    fused = backend.group_terms(graph, [0, 1, 2], "parallel_vectorize")
    tensor_us = tensor_bytes / bandwidth * 1e6  # 466.0 µs per 4 MiB tensor moved
    assert [t.memory_us for t in unfused] == pytest.approx([2 * tensor_us, 2 * tensor_us, 3 * tensor_us])
    # fused: reads x and the weight, writes the result (12 MiB instead of 28 MiB)
    assert fused.memory_us == pytest.approx(3 * tensor_us, rel=1e-12)   # 1398.1 µs
    removed = sum(t.memory_us for t in unfused) - fused.memory_us
    assert removed == pytest.approx(4 * tensor_us, rel=1e-12)  # 2 intermediate tensors, written + read
    assert fused.compute_us == pytest.approx(3 * 1024 * 1024 / (100e9 * 0.5) * 1e6, rel=1e-12)  # 62.9 µs
    assert fused.bound == "memory" and fused.wave_factor == 1.0
    assert fused.total_us == pytest.approx(3 * tensor_us + 5.0, rel=1e-12)
    # a partial fusion keeps the tensor that leaves the group
    assert backend.group_terms(graph, [1, 2], "parallel_vectorize").memory_us == pytest.approx(3 * tensor_us)


def test_a_tensor_read_twice_is_read_once_from_inside_the_group():
    x = f32(256, 256)
    nodes = [OpNode(0, "exp", OpKind.ELEMWISE, (x,), (x,), flops=x.numel),
             OpNode(1, "multiply", OpKind.ELEMWISE, (x, x), (x,), flops=x.numel)]  # exp(x) * exp(x)
    graph = ComputeGraph(nodes, [Edge(0, 1)], outputs=[(1, 0)])
    backend = AnalyticalBackend(TOY_CPU)
    per_byte_us = 1e6 / (10e9 * 0.9)
    alone = backend.group_terms(graph, [1], "parallel_vectorize")
    fused = backend.group_terms(graph, [0, 1], "parallel_vectorize")
    assert alone.memory_us == pytest.approx(3 * x.size_bytes * per_byte_us)  # reads exp(x) twice, writes
    assert fused.memory_us == pytest.approx(2 * x.size_bytes * per_byte_us)  # reads x, writes


def test_opaque_and_reduction_groups_are_slower_than_elementwise():
    backend = AnalyticalBackend("h100_sxm")
    us = {kind: backend.group_latency(chain_graph(kind=kind), [0, 1, 2], "default").us
          for kind in (OpKind.ELEMWISE, OpKind.COMM_REDUCE, OpKind.OPAQUE)}
    assert us[OpKind.ELEMWISE] < us[OpKind.COMM_REDUCE] < us[OpKind.OPAQUE]


def test_half_precision_matmul_uses_tensor_cores_only_with_dlight_default():
    node = OpNode(0, "matmul", OpKind.OUT_ELEMWISE_FUSABLE,
                  (TensorSpec((4096, 4096), "bfloat16"), TensorSpec((4096, 4096), "bfloat16", True)),
                  (TensorSpec((4096, 4096), "bfloat16"),), flops=2 * 4096**3)
    graph = ComputeGraph([node], [], outputs=[(0, 0)])
    backend = AnalyticalBackend("h100_sxm")
    assert backend.group_terms(graph, [0], "default").compute_us == pytest.approx(
        2 * 4096**3 / (989.4e12 * 0.75) * 1e6)
    assert backend.group_terms(graph, [0], "threads_128").compute_us == pytest.approx(
        2 * 4096**3 / (67e12 * 0.75 * 0.3) * 1e6)


# ------------------------------------------------------------------ waves and load
def test_wave_quantization_charges_the_idle_units_of_the_last_wave():
    backend = AnalyticalBackend("h100_sxm")
    wave_blocks = 132 * 16  # threads_128: 16 resident 128-thread blocks per SM
    full = chain_graph(wave_blocks, 128)          # exactly one wave of blocks
    one_more = chain_graph(wave_blocks + 1, 128)  # one block spills into a second wave
    tiny = chain_graph(1, 128)                    # one block on 132 SMs
    assert backend.group_terms(full, [0, 1, 2], "threads_128").wave_factor == 1.0
    assert backend.group_terms(one_more, [0, 1, 2], "threads_128").wave_factor == pytest.approx(
        2 * wave_blocks / (wave_blocks + 1))
    assert backend.group_terms(tiny, [0, 1, 2], "threads_128").wave_factor == wave_blocks
    full_us = backend.group_latency(full, [0, 1, 2], "threads_128").us - 2.5
    more_us = backend.group_latency(one_more, [0, 1, 2], "threads_128").us - 2.5
    assert more_us == pytest.approx(2 * full_us, rel=1e-12)  # 0.05 % more data, twice the time
    cpu = AnalyticalBackend(TOY_CPU)  # parallel CPU chunk of 1024 elements, 2 cores
    assert cpu.group_terms(chain_graph(1, 1024), [0], "parallel").wave_factor == 2.0
    assert cpu.group_terms(chain_graph(3, 1024), [0], "parallel").wave_factor == pytest.approx(4 / 3)
    assert cpu.group_terms(chain_graph(1, 1024), [0], "default").wave_factor == 1.0


def test_half_the_bandwidth_doubles_a_memory_bound_group():
    for device, schedule in ((TOY_CPU, "parallel_vectorize"), ("h100_sxm", "default"), ("l4", "threads_512")):
        backend = AnalyticalBackend(device)
        idle = chain_graph(2048, 1024)
        loaded = chain_graph(2048, 1024, context={"device_load": {"bandwidth": 0.5}})
        overhead = backend.group_terms(idle, [0, 1, 2], schedule).overhead_us
        assert backend.group_terms(idle, [0, 1, 2], schedule).bound == "memory"
        idle_us = backend.group_latency(idle, [0, 1, 2], schedule).us - overhead
        loaded_us = backend.group_latency(loaded, [0, 1, 2], schedule).us - overhead
        assert loaded_us == pytest.approx(2 * idle_us, rel=1e-12)


@pytest.mark.parametrize("device", [TOY_CPU, "h100_sxm", "a100", "l4"])
def test_latency_grows_monotonically_with_device_load(device):
    backend = AnalyticalBackend(device)
    shapes = [(1, 128), (67, 128), (2112, 128), (4096, 1024)]
    for schedule in backend.schedules:
        for key in ("compute", "bandwidth", "both"):
            for rows, cols in shapes:
                us = []
                for share in np.linspace(0.0, 0.9, 10):
                    load = float(share) if key == "both" else {key: float(share)}
                    graphs = (chain_graph(rows, cols, context={"device_load": load}),
                              matmul_graph(rows, 256, cols, context={"device_load": load}))
                    us.append([backend.group_latency(g, list(range(g.num_nodes)), schedule).us
                               for g in graphs])
                us = np.array(us)  # [loads, 2]
                assert (np.diff(us, axis=0) >= -1e-9 * us[1:]).all(), (schedule, key, rows, cols)
    assert us[-1, 1] > us[0, 1] and us[-1, 0] > us[0, 0]  # 90 % of both taken: slower


def test_compute_load_slows_a_compute_bound_matmul_by_the_units_taken():
    backend = AnalyticalBackend("h100_sxm")
    idle = backend.group_terms(matmul_graph(8192, 8192, 8448), [0], "default")
    loaded = matmul_graph(8192, 8192, 8448, {"device_load": {"compute": 0.5}})
    half = backend.group_terms(loaded, [0], "default")
    assert idle.bound == "compute" and half.memory_us == idle.memory_us
    assert half.wave_factor / idle.wave_factor == pytest.approx(2.0, rel=0.01)  # 66 of 132 SMs left


def test_backend_load_overrides_the_graph_context():
    graph = chain_graph(2048, 1024, context={"device_load": 0.0})
    plain = AnalyticalBackend(TOY_CPU).group_terms(graph, [0, 1, 2], "parallel_vectorize")
    overridden = AnalyticalBackend(TOY_CPU, load={"bandwidth": 0.75})
    loaded = overridden.group_terms(graph, [0, 1, 2], "parallel_vectorize")
    assert loaded.memory_us == pytest.approx(4 * plain.memory_us)
    with pytest.raises(ValueError, match="outside \\[0, 0.9\\]"):
        LoadShare.parse({"compute": 0.95})
    with pytest.raises(ValueError, match="'compute'/'bandwidth'"):
        LoadShare.parse({"cpu": 0.5})


# ---------------------------------------------------------------------- schedules
def test_cpu_schedules_are_ordered_sensibly_for_a_big_matmul():
    backend = AnalyticalBackend("cpu")
    graph = matmul_graph(1024, 1024, 1024)
    us = {s: backend.group_latency(graph, [0], s).us for s in CPU_SCHEDULES}
    assert us["default"] > us["parallel"] > us["parallel_vectorize"] > us["tiled_32"]
    assert us["default"] / us["parallel_vectorize"] > 10  # 2 cores x 8 lanes
    # an elementwise op gains nothing from cache blocking: tiling only adds overhead
    chain = chain_graph(1024, 1024)
    chain_us = {s: backend.group_latency(chain, [0], s).us for s in CPU_SCHEDULES}
    assert chain_us["tiled_32"] > chain_us["parallel_vectorize"]


def test_cache_blocking_helps_only_when_the_tile_fits_the_cache():
    backend = AnalyticalBackend("cpu")  # 1 MiB of cache per core
    graph = matmul_graph(512, 2048, 512)
    fits = backend.group_terms(graph, [0], "tiled_16")    # (2*16*2048 + 16*16) * 4 B = 257 KiB
    spills = backend.group_terms(graph, [0], "tiled_64")  # (2*64*2048 + 64*64) * 4 B = 1040 KiB
    assert spills.memory_us / fits.memory_us == pytest.approx(1 / 0.3, rel=1e-9)


def test_gpu_default_is_best_for_matmul_and_thread_variants_for_memory_bound_ops():
    backend = AnalyticalBackend("a100")
    matmul = matmul_graph(4096, 4096, 4096)
    chain = chain_graph(8192, 1024)
    matmul_us = {s: backend.group_latency(matmul, [0], s).us for s in GPU_SCHEDULES}
    chain_us = {s: backend.group_latency(chain, [0, 1, 2], s).us for s in GPU_SCHEDULES}
    assert min(matmul_us, key=matmul_us.get) == "default"
    assert chain_us["threads_512"] < chain_us["default"]


# ------------------------------------------------------- vectorized == scalar path
@pytest.mark.parametrize("device", ["cpu", "h100_sxm"])
def test_evaluate_equals_group_latency_for_random_plans(device):
    backend = AnalyticalBackend(device)
    rng = np.random.default_rng(1)
    for seed in range(4):
        graph = random_graph(seed)
        for groups in (graph.num_nodes, 20, 5, 1):
            labels = rng.permutation(np.arange(graph.num_nodes) % groups)
            schedules = rng.integers(0, len(backend.schedules), size=groups)
            fast = backend.evaluate(graph, labels, schedules)
            members = [np.flatnonzero(labels == g).tolist() for g in range(groups)]
            slow = [backend.group_latency(graph, nodes, backend.schedules[s]).us
                    for nodes, s in zip(members, schedules)]
            assert fast.shape == (groups,)
            np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_batched_evaluate_equals_plan_by_plan():
    backend = AnalyticalBackend("l4")
    graph = random_graph(7)
    rng = np.random.default_rng(2)
    labels = np.stack([rng.permutation(np.arange(graph.num_nodes) % 12) for _ in range(5)])   # [5, N]
    schedules = rng.integers(0, len(backend.schedules), size=(5, 12))                         # [5, 12]
    batch = backend.evaluate(graph, labels, schedules)
    assert batch.shape == (5, 12)
    for row in range(5):
        single = backend.evaluate(graph, labels[row], schedules[row])
        np.testing.assert_allclose(batch[row], single, rtol=1e-12)


def test_latency_of_a_plan_sums_its_groups():
    backend = AnalyticalBackend("cpu")
    graph = chain_graph(512, 512)
    plan = Plan([[0, 1], [2]], ["tiled_16", "parallel"], graph.hash)
    report = backend.latency(graph, plan)
    expected = [backend.group_latency(graph, [0, 1], "tiled_16").us,
                backend.group_latency(graph, [2], "parallel").us]
    assert report.group_us == pytest.approx(expected, rel=1e-12)
    assert report.total_us == pytest.approx(sum(expected), rel=1e-12)
    assert report.origins == ["estimated"] * 2 and report.spread == 0.0 and report.device == "cpu"
    unfused = backend.latency(graph, Plan.singletons(graph, "parallel"))
    assert report.total_us < unfused.total_us


def test_evaluate_rejects_labels_beyond_the_schedule_list():
    backend = AnalyticalBackend("cpu")
    graph = chain_graph(64, 64)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        backend.evaluate(graph, np.array([0, 1, 2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="group_of \\[N=3\\]"):
        backend.evaluate(graph, np.array([0, 1]), np.array([0, 0]))
    with pytest.raises(ValueError, match="group 1 has schedule 9 outside 0..5"):
        backend.evaluate(graph, np.array([0, 1, 1]), np.array([0, 9]))


def assert_same_costs(expected, actual) -> None:
    for field in fields(expected):
        want, got = getattr(expected, field.name), getattr(actual, field.name)
        if isinstance(want, np.ndarray):
            assert want.dtype == got.dtype and np.array_equal(want, got), field.name   # bit for bit
        else:
            assert want == got, field.name


def twin_inputs_template() -> ComputeGraph:
    """relu(x[n, 4]) + y[m, 4]: the add reads two copies of relu's output exactly when n == m."""
    x, y = TensorSpec(("n", 4), "float32"), TensorSpec(("m", 4), "float32")
    nodes = [OpNode(0, "relu", OpKind.ELEMWISE, (x,), (x,), "n * 4"),
             OpNode(1, "add", OpKind.BROADCAST, (x, y), (x,), "n * 4"),
             OpNode(2, "split", OpKind.INJECTIVE, (x,), (TensorSpec(("n", 2), "float16"),) * 2, 0)]
    return ComputeGraph(nodes, [Edge(0, 1), Edge(1, 2)], [(2, 0), (2, 1)], name="twins",
                        symbols=[SymbolRange("n", 1, 64), SymbolRange("m", 1, 64)])


@pytest.mark.parametrize("device", ["cpu", "h100_sxm"])
def test_costs_on_a_shared_structure_equal_costs_built_alone(device):
    """The backend reads a graph's cost structure once per structure_key (instances of one
    template) and computes only the numbers per instance: the same costs as a graph built
    node by node, with no key, costed from scratch; shape-dependent copies included."""
    backend = AnalyticalBackend(device)
    cases = [(zoo.template("resnet50"), {"batch": b, "image": i}) for b, i in ((1, 224), (9, 288), (64, 384))]
    cases += [(zoo.template("llama"), {"batch": b, "seq": s}) for b, s in ((1, 16), (4, 300))]
    cases += [(zoo.template("vit"), {"batch": b}) for b in (2, 33)]
    cases += [(zoo.template("bert"), {"batch": b, "seq": s}) for b, s in ((1, 16), (16, 128))]
    moe = zoo.template("mixtral_moe")
    cases += [(moe, {"tokens": 16, **{f"tokens_e{e}": c for e, c in enumerate(counts)}})
              for counts in ([4] * 8, [16, 16] + [0] * 6, [0, 10, 10, 0, 0, 12, 0, 0])]
    cases += [(twin_inputs_template(), {"n": n, "m": m}) for n, m in ((3, 3), (3, 5), (7, 7))]
    loads = ({}, {"device_load": {"compute": 0.5, "bandwidth": 0.2}}, {"device_load": 0.8})
    for position, (template, dims) in enumerate(cases):
        context = loads[position % len(loads)]
        graph, alone = template.instantiate(dims, context), template.instantiate_node_by_node(dims, context)
        assert alone.structure_key is None
        assert_same_costs(build_graph_costs(alone, backend.profile, backend._models, load_of(alone.context)),
                          backend._costs(graph))
    assert len(backend._structure) == 8          # one per template and live-node pattern (3 of the MoE)


def test_group_constraint_refuses_big_and_disconnected_groups():
    backend = AnalyticalBackend("cpu", max_group_size=2)
    graph = chain_graph(64, 64)
    assert backend.group_constraint(graph, [0, 1]) is None
    assert backend.group_constraint(graph, [0, 1, 2]) == "group of 3 nodes exceeds max_group_size=2"
    assert "not weakly connected" in backend.group_constraint(graph, [0, 2])


@pytest.fixture(scope="module")
def torch_graph() -> ComputeGraph:
    """A small real model through torch.export and TVM's frontend (imports TVM once)."""
    torch = pytest.importorskip("torch")
    from fusiongym.graphs import from_torch

    module = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.LayerNorm(128), torch.nn.GELU(),
                                 torch.nn.Linear(128, 32))
    return from_torch(module, (torch.randn(8, 64),), name="mlp")


def test_imported_torch_model_evaluates_consistently(torch_graph):
    backend = AnalyticalBackend("cpu")
    singletons = backend.latency(torch_graph, Plan.singletons(torch_graph, "parallel_vectorize"))
    by_group = sum(backend.group_latency(torch_graph, [n], "parallel_vectorize").us
                   for n in range(torch_graph.num_nodes))
    assert singletons.total_us == pytest.approx(by_group, rel=1e-12)
    everything = Plan([list(range(torch_graph.num_nodes))], ["parallel_vectorize"], torch_graph.hash)
    assert backend.latency(torch_graph, everything).total_us < singletons.total_us


# ---------------------------------------------------------------------- calibration
def test_kendall_tau_with_ties_and_mape():
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)  # 4 concordant / sqrt(5 * 5)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    x, y = rng.random(1500), rng.random(1500)
    brute = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i in range(60) for j in range(i + 1, 60))
    assert kendall_tau(x[:60], y[:60]) == pytest.approx(brute / (60 * 59 / 2))
    assert abs(kendall_tau(x, y)) < 0.05
    assert mape([110.0, 90.0], [100.0, 100.0]) == pytest.approx(0.1)


def _true_cpu_profile() -> DeviceProfile:
    base = get_profile("cpu", use_calibrated=False)
    return replace(base, fp32_flops_per_s=64e9, memory_bandwidth_bytes_per_s=25.5e9, launch_overhead_us=2.3,
                   parallel_launch_us=7.0,
                   schedule_efficiency=(("parallel", 0.8), ("tiled_32", 1.3), ("tiled_64", 0.7)))


def _recovery_graphs() -> list[ComputeGraph]:
    """Random DAGs, a large matmul and a long chain: every parameter has groups that show it."""
    return [random_graph(seed, 80) for seed in range(3)] + [matmul_graph(512, 512, 512), chain_graph(256, 1024)]


def test_calibration_recovers_a_known_profile():
    truth = _true_cpu_profile()
    graphs = _recovery_graphs()
    samples = collect_samples(graphs, AnalyticalBackend(truth), max_groups=300, seed=0)
    assert len(samples) == 300 and any(len(s.nodes) > 1 for s in samples)
    assert {s.schedule for s in samples} == set(CPU_SCHEDULES)
    assert samples == collect_samples(graphs, AnalyticalBackend(truth), max_groups=300, seed=0)  # seeded
    fitted, report = fit_cpu_profile(samples, prior_log_std=None)   # least squares: the structure is exact
    assert fitted.fp32_flops_per_s == pytest.approx(64e9, rel=1e-6)
    assert fitted.memory_bandwidth_bytes_per_s == pytest.approx(25.5e9, rel=1e-6)
    assert fitted.launch_overhead_us == pytest.approx(2.3, rel=1e-6)
    assert fitted.parallel_launch_us == pytest.approx(7.0, rel=1e-6)
    for schedule in CPU_SCHEDULES:
        assert fitted.efficiency_of(schedule) == pytest.approx(truth.efficiency_of(schedule), rel=1e-6)
    assert report.mape_after < 1e-9 < report.mape_before
    assert report.kendall_tau_after > report.kendall_tau_before and report.kendall_tau_after > 0.999
    assert report.num_samples == 300 and report.parameters["launch_overhead_us"] == pytest.approx(2.3)
    refit = AnalyticalBackend(fitted)
    sample = samples[0]
    assert refit.group_latency(sample.graph, list(sample.nodes), sample.schedule).us == pytest.approx(
        sample.measured_us, rel=1e-9)


def test_calibration_tolerates_measurement_noise():
    truth = _true_cpu_profile()
    graphs = [random_graph(seed, 80) for seed in range(3)] + [matmul_graph(512, 512, 512), chain_graph(1, 64)]
    rng = np.random.default_rng(3)
    samples = [Sample(s.graph, s.nodes, s.schedule, s.measured_us * float(np.exp(rng.normal(0, 0.05))))
               for s in collect_samples(graphs, AnalyticalBackend(truth), max_groups=600, seed=1)]
    fitted, report = fit_cpu_profile([(s.graph, s.nodes, s.schedule, s.measured_us) for s in samples])
    assert fitted.fp32_flops_per_s == pytest.approx(64e9, rel=0.1)
    assert fitted.memory_bandwidth_bytes_per_s == pytest.approx(25.5e9, rel=0.1)
    assert fitted.launch_overhead_us == pytest.approx(2.3, rel=0.2)  # tiny kernels pin the overheads
    assert fitted.parallel_launch_us == pytest.approx(7.0, rel=0.2)
    assert report.mape_after < 0.06 and report.rms_log_error_after < report.rms_log_error_before


def test_calibration_keeps_what_the_samples_do_not_show():
    truth = _true_cpu_profile()
    graphs = [random_graph(seed, 80) for seed in range(2)] + [chain_graph(1, 64)]
    samples = [s for s in collect_samples(graphs, AnalyticalBackend(truth), max_groups=300, seed=4)
               if s.schedule == "default"]
    fitted, report = fit_cpu_profile(samples)
    base = get_profile("cpu", use_calibrated=False)
    assert fitted.launch_overhead_us == pytest.approx(2.3, rel=0.05)   # the prior pulls a little toward 1.0
    assert fitted.parallel_launch_us == base.parallel_launch_us  # no parallel schedule measured
    assert all(fitted.efficiency_of(s) == 1.0 for s in CPU_SCHEDULES)
    assert set(report.log_std_error) == {"fp32_flops_per_s", "memory_bandwidth_bytes_per_s", "launch_overhead_us"}


def test_calibration_prior_recovers_what_the_samples_determine_and_reports_its_errors():
    """The default fit (the posterior mode under PRIOR_LOG_STD) of the exact samples above: the
    parameters the samples pin down land within 2 %, and the reported errors say which those are."""
    truth = _true_cpu_profile()
    samples = collect_samples(_recovery_graphs(), AnalyticalBackend(truth), max_groups=300, seed=0)
    fitted, report = fit_cpu_profile(samples)
    assert fitted.fp32_flops_per_s == pytest.approx(64e9, rel=0.02)
    assert fitted.memory_bandwidth_bytes_per_s == pytest.approx(25.5e9, rel=0.02)
    for schedule in CPU_SCHEDULES:
        assert fitted.efficiency_of(schedule) == pytest.approx(truth.efficiency_of(schedule), rel=0.02)
    assert report.mape_after < 0.01
    assert max(report.log_std_error[f"schedule_efficiency.{s}"] for s in CPU_SCHEDULES if s != "default") < 0.01
    # tiny kernels are few here: the launch overhead is the one parameter the samples leave loose
    assert report.log_std_error["launch_overhead_us"] > 50 * report.log_std_error["fp32_flops_per_s"]


def test_calibration_recovers_class_factors_when_asked():
    """``op_classes=True`` fits a factor per op class under each schedule: from exact samples of a
    profile that has them, least squares recovers them; without it the report names none."""
    truth = replace(_true_cpu_profile(), class_efficiency=(
        ("default", "window", 2.5), ("parallel", "matmul", 0.6), ("tiled_16", "matmul", 3.0),
        ("tiled_16", "window", 0.4), ("tiled_64", "transcendental", 0.5)))
    graphs = [class_mix_graph(seed) for seed in range(3)] + [chain_graph(256, 1024)]
    samples = collect_samples(graphs, AnalyticalBackend(truth), max_groups=400, seed=0)
    fitted, report = fit_cpu_profile(samples, prior_log_std=None, op_classes=True)
    assert fitted.fp32_flops_per_s == pytest.approx(64e9, rel=1e-6)
    for schedule in CPU_SCHEDULES:
        assert fitted.efficiency_of(schedule) == pytest.approx(truth.efficiency_of(schedule), rel=1e-6)
        for name in OP_CLASSES[1:]:
            assert fitted.class_factor(schedule, name) == pytest.approx(truth.class_factor(schedule, name), rel=1e-6)
    assert report.mape_after < 1e-9
    assert "class_efficiency.tiled_16.matmul" in report.log_std_error
    assert report.parameters["class_efficiency"]["tiled_16"]["window"] == pytest.approx(0.4, rel=1e-6)
    plain, plain_report = fit_cpu_profile(samples, prior_log_std=None)
    assert plain.class_efficiency == () and not any(k.startswith("class") for k in plain_report.log_std_error)
    assert plain_report.mape_after > 0.05      # one efficiency per schedule cannot fit these samples


def test_calibration_prior_holds_a_parameter_no_sample_determines():
    """Large matmuls are compute-bound on every schedule, so no sample says anything about the
    bandwidth: least squares reports it undetermined (an infinite error) and leaves it where the
    solver stopped; the prior holds it at the base profile's, with the prior's own error."""
    truth, base = _true_cpu_profile(), get_profile("cpu", use_calibrated=False)
    graphs = [matmul_graph(n, n, n) for n in (128, 160, 192, 256, 320, 384, 448, 512)]
    samples = collect_samples(graphs, AnalyticalBackend(truth), max_groups=48, seed=0)
    assert len(samples) == 48
    for profile in (truth, base):   # the premise: compute-bound on both profiles
        terms = [AnalyticalBackend(profile).group_terms(s.graph, s.nodes, s.schedule) for s in samples]
        assert all(t.compute_us > t.memory_us for t in terms)
    _, least_squares = fit_cpu_profile(samples, prior_log_std=None)
    assert least_squares.log_std_error["memory_bandwidth_bytes_per_s"] == math.inf
    assert least_squares.log_std_error["fp32_flops_per_s"] < 1e-6 and least_squares.prior_log_std is None
    fitted, report = fit_cpu_profile(samples)
    assert fitted.memory_bandwidth_bytes_per_s == pytest.approx(base.memory_bandwidth_bytes_per_s, rel=1e-9)
    assert report.log_std_error["memory_bandwidth_bytes_per_s"] == pytest.approx(PRIOR_LOG_STD, rel=1e-6)
    assert report.prior_log_std == PRIOR_LOG_STD
    assert fitted.fp32_flops_per_s == pytest.approx(64e9, rel=0.02) and report.mape_after < 0.02


def test_calibration_errors_when_the_base_profile_fits_every_sample_exactly():
    """Elementwise chains timed by the base profile itself: no residual is left and no sample
    is compute-bound. The peak's error is the prior's own, or infinite without one; the
    bandwidth's and launch overhead's are zero to rounding (no division by a zero residual)."""
    base = get_profile("cpu", use_calibrated=False)
    backend = AnalyticalBackend(base)
    graphs = [chain_graph(rows, 64) for rows in (1, 4, 16, 64, 256, 1024, 4096)]
    samples = [Sample(g, (v,), "default", backend.group_latency(g, [v], "default").us) for g in graphs for v in range(3)]
    _, least_squares = fit_cpu_profile(samples, prior_log_std=None)
    _, with_prior = fit_cpu_profile(samples)
    assert least_squares.log_std_error["fp32_flops_per_s"] == math.inf
    assert with_prior.log_std_error["fp32_flops_per_s"] == pytest.approx(PRIOR_LOG_STD, rel=1e-9)
    for report in (least_squares, with_prior):
        assert report.log_std_error["memory_bandwidth_bytes_per_s"] < 1e-9
        assert report.log_std_error["launch_overhead_us"] < 1e-9


def test_calibration_needs_enough_samples():
    graph = chain_graph(64, 64)
    with pytest.raises(ValueError, match="cannot determine"):
        fit_cpu_profile([Sample(graph, (0,), "default", 5.0)])
    with pytest.raises(ValueError, match="no measured groups"):
        fit_cpu_profile([])
    with pytest.raises(ValueError, match="prior_log_std must be positive"):
        fit_cpu_profile([Sample(graph, (0,), "default", 5.0)] * 10, prior_log_std=0.0)
