"""FusionEnv-v0: legality, rewards, replay, API checkers, vector envs, memory bound, rendering."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from fusiongym.envs import (DEFAULT_MAX_NODES, GLOBAL_FEATURES, MAX_EPISODE_STEPS, OP_VOCAB, FusionEnv,
                            validate_results)
from fusiongym.envs.backends import make_backend, recorded_backend
from fusiongym.graphs import ComputeGraph, Edge, OpKind, OpNode, TensorSpec, synthetic
from fusiongym.graphs.workloads import get_workload, load_suite
from fusiongym.reward import Plan, get_backend, is_legal
from fusiongym.reward.devices import CPU, save_profile

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- graphs
def _node(node_id: int, op: str, kind: OpKind, producers: list[int], nodes: list[OpNode], numel: int = 4096,
          flops_per_elem: float = 1.0) -> OpNode:
    inputs = tuple(nodes[p].outputs[0] for p in producers) or (TensorSpec((numel,), "float32"),)
    return OpNode(node_id, op, kind, inputs, (TensorSpec((numel,), "float32"),), numel * flops_per_elem)


def graph_from_edges(num_nodes: int, edges: list[tuple[int, int]], name: str, seed: int = 0) -> ComputeGraph:
    """A DAG with the given edges and a mix of op kinds (node ids must be topological)."""
    rng = np.random.default_rng(seed)
    kinds = [("add", OpKind.ELEMWISE), ("matmul", OpKind.OUT_ELEMWISE_FUSABLE), ("reshape", OpKind.INJECTIVE),
             ("mean", OpKind.COMM_REDUCE), ("multiply", OpKind.BROADCAST)]
    nodes: list[OpNode] = []
    for v in range(num_nodes):
        op, kind = kinds[int(rng.integers(len(kinds)))]
        numel = int(2 ** rng.integers(8, 16))
        nodes.append(_node(v, op, kind, sorted(u for u, w in edges if w == v), nodes, numel,
                           64.0 if kind == OpKind.OUT_ELEMWISE_FUSABLE else 1.0))
    return ComputeGraph(nodes, [Edge(u, v) for u, v in sorted(set(edges))], [(num_nodes - 1, 0)], name=name)


def random_dag(num_nodes: int, extra_edges: int, seed: int) -> ComputeGraph:
    """A connected random DAG with many skip edges: convexity is often at stake."""
    rng = np.random.default_rng(seed)
    edges = {(int(rng.integers(max(0, v - 4), v)), v) for v in range(1, num_nodes)}
    for _ in range(extra_edges):
        u = int(rng.integers(0, num_nodes - 1))
        edges.add((u, int(rng.integers(u + 1, min(num_nodes, u + 12)))))
    return graph_from_edges(num_nodes, sorted(edges), f"dag-{num_nodes}-{seed}", seed)


@pytest.fixture(scope="module")
def small_graph() -> ComputeGraph:
    return synthetic(n_nodes=60, seed=3)


@pytest.fixture(scope="module")
def triangle() -> ComputeGraph:
    """a -> b -> c and a -> c: merging a with c while b is separate is non-convex."""
    return graph_from_edges(3, [(0, 1), (1, 2), (0, 2)], "triangle")


def make_env(workloads, **kwargs) -> FusionEnv:
    kwargs.setdefault("max_nodes", 256)
    kwargs.setdefault("max_edges", 512)
    return FusionEnv(workloads=workloads, **kwargs)


def edge_id(graph: ComputeGraph, src: int, dst: int) -> int:
    return next(i for i, e in enumerate(graph.edges) if (e.src, e.dst) == (src, dst))


def reference_fuse_mask(env: FusionEnv) -> np.ndarray:
    """[E] bool: legality of every merge, decided from scratch with ``is_legal``."""
    graph, plan = env.graph, env.plan
    label = plan.group_of(graph.num_nodes)
    verdict = np.zeros(graph.num_edges, dtype=bool)
    for e, edge in enumerate(graph.edges):
        x, y = label[edge.src], label[edge.dst]
        if x != y:
            merged = np.where(label == y, x, label)
            verdict[e] = bool(is_legal(graph, Plan.from_assignment(graph, merged), env.backend))
    return verdict


def rollout(env: FusionEnv, rng: np.random.Generator, seed: int, fuse_only: bool = False):
    """One episode of uniformly random legal actions; returns (rewards, infos, first obs)."""
    obs, info = env.reset(seed=seed)
    rewards, infos = [], [info]
    for _ in range(env.layout.n):
        mask = env.action_masks()
        if fuse_only:
            mask[env.max_edges:-1] = False
        action = int(rng.choice(np.flatnonzero(mask)))
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            return rewards, infos, obs
    raise AssertionError("episode did not end within the action-space size")


# ---------------------------------------------------------------------- registration
def test_make_without_import_and_cheap_package_import():
    """Fresh interpreters: make() imports fusiongym itself; the package import loads no torch/TVM."""
    make = ("import gymnasium as gym\n"
            "assert 'FusionEnv-v0' not in gym.registry\n"
            "env = gym.make('fusiongym:FusionEnv-v0', workloads='smoke')\n"
            "print(env.spec.max_episode_steps)\n")
    result = subprocess.run([sys.executable, "-c", make], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == str(MAX_EPISODE_STEPS) == str(4 * DEFAULT_MAX_NODES)
    cheap = ("import sys, fusiongym\n"
             "heavy = sorted(m for m in ('torch', 'tvm', 'fusiongym.envs') if m in sys.modules)\n"
             "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", cheap], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr


def test_registration_is_idempotent():
    import importlib

    import fusiongym

    importlib.reload(fusiongym)
    assert "FusionEnv-v0" in gym.registry


# ------------------------------------------------------------------ backends by name
def test_backend_by_name_on_each_device_word(small_graph):
    assert make_env([small_graph], backend="analytical", device="h100_sxm").backend.profile.name == "h100_sxm"
    with pytest.raises(ValueError, match="unknown device profile 'cuda'"):
        make_env([small_graph], backend="analytical", device="cuda")
    with pytest.raises(ValueError, match="backend 'tvm' runs on device 'cpu'.*or 'cuda', not 'h100_sxm'"):
        make_env([small_graph], backend="tvm", device="h100_sxm")
    with pytest.raises(ValueError, match="unknown torch device 'h100_sxm'"):
        make_env([small_graph], backend="torch", device="h100_sxm")
    assert make_backend("torch", "cpu").device_kind == "cpu"
    with pytest.raises(ValueError, match="backend_options.*given by name"):
        make_env([small_graph], backend=get_backend("analytical"), backend_options={"max_group_size": 2})


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_tvm_backend_by_name_measures_a_step_on_the_device_it_names(device):
    """Real TVM on a 3-op graph: gym.make(backend="tvm", device=...) reaches TVMBackend's target."""
    import torch
    import tvm

    if device == "cuda" and not tvm.cuda(0).exist:
        pytest.skip("needs a CUDA GPU; none is visible to TVM")

    from fusiongym.graphs import from_torch
    from fusiongym.reward.timing import TimingProtocol

    graph = from_torch(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), (torch.randn(2, 8),))
    fast = TimingProtocol(warmup=1, min_repeat_ms=1.0, repeats=5, max_remeasure=0)
    env = gym.make("FusionEnv-v0", workloads=[graph], backend="tvm", device=device, max_nodes=8, max_edges=8,
                   backend_options={"protocol": fast})
    backend = env.unwrapped.backend
    assert backend.name == "tvm" and backend.target.kind.name == {"cpu": "llvm", "cuda": "cuda"}[device]
    assert env.unwrapped.reward_flags == {"deterministic": False, "platform_dependent": True}
    _, info = env.reset(seed=0)
    fuse = int(np.flatnonzero(info["action_mask"][:graph.num_edges])[0])
    _, _, _, truncated, info = env.step(fuse)
    assert info["latency_us"] > 0 and info["num_groups"] == graph.num_nodes - 1 and not truncated
    assert make_backend("tvm", "cuda").target.kind.name == "cuda"   # builds without a GPU


def test_calibrated_cpu_profile_makes_rewards_platform_dependent(small_graph, tmp_path, monkeypatch):
    fitted = replace(CPU, memory_bandwidth_bytes_per_s=9e9, source="fitted by fusiongym.reward.calibrate (test)")
    monkeypatch.setenv("FUSIONGYM_CPU_PROFILE", str(save_profile(fitted, tmp_path / "cpu_profile.json")))
    env = make_env([small_graph], device="cpu")
    assert env.backend.profile == fitted
    assert env.reward_flags == {"deterministic": True, "platform_dependent": True}
    assert make_env([small_graph], device="h100_sxm").reward_flags["platform_dependent"] is False
    assert make_env([small_graph], backend=get_backend("analytical", device=fitted)).reward_flags == {
        "deterministic": True, "platform_dependent": False}    # an explicit profile prices alike anywhere
    monkeypatch.setenv("FUSIONGYM_CPU_PROFILE", str(tmp_path / "absent.json"))
    assert make_env([small_graph], device="cpu").reward_flags["platform_dependent"] is False


# --------------------------------------------------------------------------- legality
@pytest.mark.parametrize("num_nodes, extra, seed, max_group_size", [(30, 25, 1, 64), (60, 70, 2, 5), (45, 90, 4, 8)])
def test_incremental_mask_equals_from_scratch_legality(num_nodes, extra, seed, max_group_size):
    graph = random_dag(num_nodes, extra, seed)
    env = make_env([graph], backend=get_backend("analytical", device="cpu", max_group_size=max_group_size))
    rng = np.random.default_rng(seed)
    for episode in range(2):
        env.reset(seed=episode)
        while True:
            fuse_mask = env.action_masks()[:graph.num_edges]
            np.testing.assert_array_equal(fuse_mask, reference_fuse_mask(env))
            if not fuse_mask.any():
                break
            env.step(int(rng.choice(np.flatnonzero(fuse_mask))))
        assert is_legal(graph, env.plan, env.backend)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_masked_rollouts_stay_legal_and_end(small_graph, seed):
    env = make_env([small_graph, random_dag(50, 40, seed)])
    rng = np.random.default_rng(seed)
    for episode in range(3):
        rewards, infos, obs = rollout(env, rng, seed=100 * seed + episode)
        assert len(rewards) <= 3 * env.graph.num_nodes
        assert is_legal(env.graph, env.plan, env.backend)
        assert infos[-1]["num_groups"] == env.plan.num_groups
        np.testing.assert_array_equal(obs["node_group"][:env.graph.num_nodes],
                                      [group[0] for group in _groups_by_node(env.plan, env.graph.num_nodes)])


def _groups_by_node(plan: Plan, num_nodes: int) -> list[list[int]]:
    by_node: list[list[int]] = [[] for _ in range(num_nodes)]
    for group in plan.groups:
        for v in group:
            by_node[v] = group
    return by_node


def test_illegal_actions_raise_with_the_reason(triangle):
    env = make_env([triangle], max_nodes=4, max_edges=4)
    env.reset(seed=0)
    a_c, a_b, b_c = edge_id(triangle, 0, 2), edge_id(triangle, 0, 1), edge_id(triangle, 1, 2)
    mask = env.action_masks()
    assert not mask[a_c] and mask[a_b] and mask[b_c]
    with pytest.raises(ValueError, match="non-convex.*group 1"):
        env.step(a_c)
    with pytest.raises(ValueError, match="out of range"):
        env.step(env.layout.n)
    with pytest.raises(ValueError, match="out of range"):
        env.step(-1)
    with pytest.raises(ValueError, match="only 3 edges"):
        env.step(3)
    with pytest.raises(ValueError, match="only 3 nodes"):
        env.step(env.layout.schedule(3, 0))
    env.step(a_b)                     # {a, b} -> c: now a -> c and b -> c are both legal
    assert env.action_masks()[a_c] and env.action_masks()[b_c]
    env.step(env.layout.schedule(1, 2))
    with pytest.raises(ValueError, match="already has its schedule set"):
        env.step(env.layout.schedule(0, 1))
    env.step(a_c)
    with pytest.raises(ValueError, match="inside group 0"):
        env.step(b_c)


def test_backend_constraint_masks_and_explains():
    chain = graph_from_edges(4, [(0, 1), (1, 2), (2, 3)], "chain")
    env = make_env([chain], backend=get_backend("analytical", device="cpu", max_group_size=2))
    env.reset(seed=0)
    env.step(edge_id(chain, 0, 1))
    too_big = edge_id(chain, 1, 2)
    assert not env.action_masks()[too_big] and env.action_masks()[edge_id(chain, 2, 3)]
    with pytest.raises(ValueError, match="cannot fuse.*max_group_size=2"):
        env.step(too_big)


def test_unfusable_kinds_mask_merges_with_opaque_ops_and_explain():
    """TVM FuseOps never fuses an opaque op; the analytical backend can follow that rule."""
    nodes: list[OpNode] = []
    for v, (op, kind) in enumerate([("add", OpKind.ELEMWISE), ("sort", OpKind.OPAQUE), ("exp", OpKind.ELEMWISE),
                                    ("add", OpKind.ELEMWISE)]):
        nodes.append(_node(v, op, kind, [v - 1] if v else [], nodes))
    chain = ComputeGraph(nodes, [Edge(0, 1), Edge(1, 2), Edge(2, 3)], [(3, 0)], name="opaque-chain")
    env = make_env([chain], backend="analytical", backend_options={"unfusable_kinds": ["opaque"]})
    env.reset(seed=0)
    mask = env.action_masks()
    assert not mask[edge_id(chain, 0, 1)] and not mask[edge_id(chain, 1, 2)] and mask[edge_id(chain, 2, 3)]
    with pytest.raises(ValueError, match=r"cannot fuse.*node 1 \(sort\) is of kind 'opaque'.*unfusable_kinds"):
        env.step(edge_id(chain, 1, 2))
    assert not is_legal(chain, Plan([[0, 1], [2, 3]], ["default"] * 2, chain.hash), env.backend)
    assert recorded_backend(env.state["backend"]).unfusable_kinds == {OpKind.OPAQUE}
    loaded = make_env([chain], backend="analytical", backend_options={"load": {"compute": 0.5}})
    loaded.reset(seed=0)
    assert recorded_backend(loaded.state["backend"]).load_override == loaded.backend.load_override
    from fusiongym.agents import FusionPolicy
    merge_check = FusionPolicy._merge_check(chain, env.backend)    # the policy's merge loop honours the rule too
    assert merge_check is not None and not merge_check([0], [1]) and merge_check([2], [3])
    assert make_env([chain]).reset(seed=0)[1]["action_mask"][:3].all()          # off by default
    with pytest.raises(ValueError, match="unknown op kind 'sorting'.*'opaque'"):
        get_backend("analytical", unfusable_kinds=["sorting"])


def test_graph_over_the_limits_names_limit_size_and_fix(small_graph):
    with pytest.raises(ValueError, match=r"60 nodes and \d+ edges.*max_nodes=32.*raise them"):
        make_env([small_graph], max_nodes=32)
    chain = graph_from_edges(3, [(0, 1), (1, 2)], "chain")
    env = make_env([chain])
    with pytest.raises(ValueError, match="300 nodes.*max_nodes=256"):
        env.reset(options={"graph": synthetic(n_nodes=300, seed=0)})
    assert env.reset(options={"graph": chain})[1]["num_groups"] == 3


# ---------------------------------------------------------------------------- rewards
@pytest.mark.parametrize("seed", [0, 5])
def test_latency_delta_rewards_sum_to_the_latency_removed(small_graph, seed):
    env = make_env([small_graph])
    rewards, infos, _ = rollout(env, np.random.default_rng(seed), seed=seed)
    first, last = infos[0], infos[-1]
    assert first["latency_us"] == first["unfused_latency_us"]
    removed = (first["latency_us"] - last["latency_us"]) / last["unfused_latency_us"]
    assert abs(sum(rewards) - removed) <= 1e-9
    fresh = env.backend.latency(env.graph, env.plan).total_us
    assert abs(fresh - last["latency_us"]) <= 1e-9 * fresh
    assert Plan.from_json(json.dumps(last["plan"])).canonical() == env.plan.canonical()


def test_schedule_action_sets_the_backend_latency(small_graph):
    env = make_env([small_graph])
    env.reset(seed=0)
    before = env.latency_us
    node, schedule = 5, env.backend.schedules.index("parallel_vectorize")
    group_before = env.backend.group_latency(small_graph, [node], "default").us
    group_after = env.backend.group_latency(small_graph, [node], "parallel_vectorize").us
    obs, reward, *_ = env.step(env.layout.schedule(node, schedule))
    assert env.latency_us == pytest.approx(before - group_before + group_after, rel=1e-12)
    assert reward == pytest.approx((group_before - group_after) / before, rel=1e-9)
    assert obs["node_schedule"][node] == schedule + 1
    assert not env.action_masks()[env.layout.schedule(node, 0)]
    assert env.plan.schedules[node] == "parallel_vectorize"


def test_without_schedule_actions_only_fuse_and_stop(small_graph):
    env = make_env([small_graph], schedule_actions=False)
    assert env.action_space.n == env.max_edges + 1
    rewards, infos, obs = rollout(env, np.random.default_rng(0), seed=0)
    assert set(infos[-1]["plan"]["schedules"]) == {"default"} and not obs["node_schedule"].any()


def test_sparse_rewards_pay_only_at_the_end(small_graph):
    env = make_env([small_graph], reward="neg_latency")
    rewards, infos, _ = rollout(env, np.random.default_rng(0), seed=0)
    assert all(r == 0.0 for r in rewards[:-1])
    assert rewards[-1] == pytest.approx(-infos[-1]["latency_us"] / infos[-1]["unfused_latency_us"])
    assert env.reward_flags == {"deterministic": True, "platform_dependent": False}


def test_tvm_default_needs_a_graph_imported_through_tvm(small_graph):
    for kwargs in ({"start": "tvm_default"}, {"reward": "speedup_vs_tvm"}):
        env = make_env([small_graph], **kwargs)
        with pytest.raises(ValueError, match="no Relax module"):
            env.reset(seed=0)
    with pytest.raises(ValueError, match="unknown reward"):
        make_env([small_graph], reward="bogus")


@pytest.mark.slow
def test_zoo_workload_from_tvm_default_start_replays_from_its_context():
    """Imports resnet18 through torch.export and TVM (~20 s): the real path end to end."""
    env = FusionEnv(workloads=["resnet18/train"], start="tvm_default", reward="speedup_vs_tvm")
    rewards, infos, _ = rollout(env, np.random.default_rng(0), seed=0)
    first, last = infos[0], infos[-1]
    assert first["latency_us"] == first["tvm_default_latency_us"] < first["unfused_latency_us"]
    assert first["num_groups"] < env.graph.num_nodes and is_legal(env.graph, env.plan, env.backend)
    assert rewards[-1] == pytest.approx(last["tvm_default_latency_us"] / last["latency_us"] - 1.0)
    state = json.loads(json.dumps(env.state))
    assert state["context"]["dims"] and state["context"]["device_load"] and state["start_plan"]
    assert validate_results([{"state": state, "latency_us": env.latency_us}], env.backend) == []
    plan, latency = env.replay(state)
    assert latency == env.latency_us and plan.canonical() == env.plan.canonical()


# ------------------------------------------------------------------ state and replay
def test_state_replay_reproduces_plan_and_latency_exactly(small_graph):
    env = make_env([small_graph, random_dag(40, 30, 7)])
    rng = np.random.default_rng(11)
    for seed in range(3):
        rollout(env, rng, seed=seed)
        state = json.loads(json.dumps(env.state))      # JSON round trip
        plan, latency = env.replay(state)
        assert plan.canonical() == env.plan.canonical()
        assert latency == env.latency_us
        assert state["actions"][-1] == ["stop"] or not env.action_masks()[:-1].any()


def test_validate_results_flags_only_results_that_do_not_reproduce(small_graph):
    env = make_env([small_graph])
    records = []
    for seed in range(2):
        rollout(env, np.random.default_rng(seed), seed=seed)
        records.append({"state": env.state, "latency_us": env.latency_us, "graph": small_graph.to_json()})
    assert validate_results(records, env.backend) == []
    tampered = [dict(records[0], latency_us=records[0]["latency_us"] * 1.01)]
    [mismatch] = validate_results(tampered, env.backend)
    assert mismatch.index == 0 and "measured" in mismatch.reason
    assert mismatch.measured_us == pytest.approx(records[0]["latency_us"], rel=1e-9)
    broken = dict(records[0], state=dict(records[0]["state"], actions=[["fuse", 10**6]]))
    assert "out of range" in validate_results([broken], env.backend)[0].reason


def assert_same_step(expected: tuple, actual: tuple) -> None:
    """Observations (every key, bit for bit), rewards, flags and infos of two env calls."""
    for want, got in zip(expected, actual):
        if isinstance(want, dict):
            assert want.keys() == got.keys()
            for key in want:
                assert np.array_equal(want[key], got[key]), key
                assert np.asarray(want[key]).dtype == np.asarray(got[key]).dtype, key
        else:
            assert want == got


@pytest.mark.parametrize("workload, options", [
    ("resnet50/test", {}), ("llama/train", {"max_group_size": 3}),
    ("mixtral_moe/train", {"unfusable_kinds": ["opaque"]}), ("vit/test", {}), ("bert/train", {"max_group_size": 2}),
])
def test_resets_of_new_instances_equal_resets_built_from_scratch(workload, options):
    """Across instances of a template an env reuses the graph structure, the singletons start
    and the backend's cost structure (by ``structure_key``): each episode equals one on the
    same graph built node by node (no key: everything computed from scratch), step by step."""
    env = make_env(workload, backend_options=options, max_nodes=512, max_edges=1024)
    rng = np.random.default_rng(0)
    for seed in range(4):
        observed = env.reset(seed=seed)
        graph = env.graph
        assert graph.structure_key is not None
        extra = {key: value for key, value in graph.context.items() if key != "dims"}
        rebuilt = get_workload(workload).template().instantiate_node_by_node(graph.context["dims"], extra)
        fresh = make_env(rebuilt, backend_options=options, max_nodes=512, max_edges=1024)
        assert_same_step(fresh.reset(seed=seed), observed)
        assert np.array_equal(fresh.action_masks(), env.action_masks()) and fresh.graph.hash == graph.hash
        for _ in range(4):
            action = int(rng.choice(np.flatnonzero(env.action_masks()[:-1])))
            assert_same_step(fresh.step(action), env.step(action))
    assert len(env._structure_of) == len({e.graph.structure_key for e in env._cache.values()})


def test_reset_options_pin_the_episode(small_graph, triangle):
    env = make_env([small_graph, triangle])
    _, info = env.reset(seed=0, options={"workload": "triangle"})
    assert env.graph is triangle and info["num_groups"] == 3
    env.reset(seed=0, options={"graph": small_graph})
    assert env.graph is small_graph
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"dimz": {}})
    with pytest.raises(ValueError, match="fixed"):
        env.reset(options={"workload": "triangle", "dims": {"batch": 2}})


def _global(obs: dict, name: str) -> float:
    return float(obs["global"][GLOBAL_FEATURES.index(name)])


def test_reset_options_pin_dims_routing_and_device_load_of_a_workload():
    moe, bert = get_workload("mixtral_moe/smoke"), get_workload("bert/smoke")
    env = make_env([moe, bert])                                   # Workload objects
    obs, _ = env.reset(seed=0, options={"workload": "bert/smoke", "dims": {"batch": 3, "seq": 40},
                                        "device_load": 0.5})
    context = env.graph.context
    assert context["workload"] == env.state["workload"] == "bert/smoke"
    assert context["dims"] == {"batch": 3, "seq": 40} and context["device_load"] == {"compute": 0.5, "bandwidth": 0.5}
    assert _global(obs, "log2_batch") == pytest.approx(np.log2(4), rel=1e-3)
    assert _global(obs, "log2_seq") == pytest.approx(np.log2(41), rel=1e-3)
    assert _global(obs, "load_compute") == _global(obs, "load_bandwidth") == 0.5
    routing = [8, 0, 0, 4, 4, 0, 0, 0]                            # tokens x top_k = 8 x 2 slots
    obs, _ = env.reset(seed=1, options={"workload": "mixtral_moe/smoke", "dims": {"tokens": 8},
                                        "routing": routing, "device_load": {"compute": 0.25, "bandwidth": 0.0}})
    assert env.graph.context["routing"] == routing and env.graph.context["dims"]["tokens_e0"] == 8
    assert _global(obs, "routing_imbalance") == pytest.approx(8 / 2)
    assert _global(obs, "experts_active_share") == pytest.approx(3 / 8)
    assert (_global(obs, "load_compute"), _global(obs, "load_bandwidth")) == (0.25, 0.0)
    again, _ = env.reset(seed=2, options={"workload": "mixtral_moe/smoke", "dims": {"tokens": 8},
                                          "routing": routing, "device_load": {"compute": 0.25, "bandwidth": 0.0}})
    assert env.state["graph_hash"] == env.graph.hash and np.array_equal(again["global"], obs["global"])


@pytest.mark.parametrize("workloads", ["smoke", ["bert/smoke", "llama/smoke"]])
def test_suite_name_and_workload_names_draw_only_their_workloads(workloads):
    names = {w.name for w in load_suite("smoke")} if workloads == "smoke" else set(workloads)
    env = make_env(workloads)
    drawn = set()
    for seed in range(12):
        env.reset(seed=seed)
        drawn.add(env.graph.context["workload"])
        assert env.state["workload"] == env.graph.context["workload"]
    assert drawn == names


# ------------------------------------------------------------------------ observation
def test_observation_dtypes_shapes_and_documentation(small_graph):
    env = make_env([small_graph], max_nodes=64, max_edges=128)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    expected = {"node_op": np.uint16, "node_kind": np.uint8, "node_feat": np.float16, "node_group": np.uint16,
                "node_schedule": np.uint8, "node_mask": np.int8, "edge_index": np.uint16,
                "edge_feat": np.float16, "edge_state": np.uint8, "global": np.float16}
    assert {k: v.dtype.type for k, v in obs.items()} == expected
    n, e = small_graph.num_nodes, small_graph.num_edges
    assert obs["node_mask"].sum() == n and (obs["edge_state"] == 1).sum() == e
    assert set(obs["node_op"][:n]) <= set(range(2, len(OP_VOCAB)))   # synthetic ops are all known
    assert obs["global"][GLOBAL_FEATURES.index("latency_ratio")] == 1.0
    merge = edge_id(small_graph, small_graph.edges[0].src, small_graph.edges[0].dst)
    obs2, *_ = env.step(merge)
    assert obs2["edge_state"][merge] == 2 and obs["edge_state"][merge] == 1   # copies, not views
    doc = (ROOT / "README.md").read_text()
    for key in expected:
        assert f"| `{key}` |" in doc
    for name in GLOBAL_FEATURES:
        assert f"`{name}`" in doc


def test_rollout_buffer_fits_in_one_gib():
    """MaskablePPO's real rollout buffer, 2048 steps x 4 envs at 2048 nodes and 4096 edges with
    the six CPU schedules (the largest menu): observations in their dtypes, a float32 mask."""
    from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer

    env = make_env([synthetic(8, 0)], max_nodes=2048, max_edges=4096, device="cpu")
    obs, _ = env.reset(seed=0)
    buffer = MaskableDictRolloutBuffer(2048, env.observation_space, env.action_space, device="cpu", n_envs=4)
    assert {k: a.dtype for k, a in buffer.observations.items()} == {k: a.dtype for k, a in obs.items()}
    arrays = [*buffer.observations.values(), buffer.actions, buffer.rewards, buffer.returns, buffer.episode_starts,
              buffer.values, buffer.log_probs, buffer.advantages, buffer.action_masks]
    total_bytes = sum(array.nbytes for array in arrays)
    assert total_bytes < 2**30, f"{total_bytes / 2**30:.3f} GiB"


def test_info_carries_latencies_and_group_count_every_step_and_the_plan_at_the_ends(small_graph):
    env = make_env([small_graph])
    _, infos, _ = rollout(env, np.random.default_rng(3), seed=3)
    every_step = {"action_mask", "latency_us", "unfused_latency_us", "tvm_default_latency_us", "num_groups"}
    assert all(set(info) == every_step for info in infos[1:-1]) and len(infos) > 2
    assert set(infos[0]) == set(infos[-1]) == every_step | {"plan"}
    assert len(infos[0]["plan"]["groups"]) == infos[0]["num_groups"] == small_graph.num_nodes
    assert infos[-1]["num_groups"] == len(infos[-1]["plan"]["groups"]) == env.plan.num_groups


def test_time_limit_truncates_an_episode(small_graph):
    env = gym.make("FusionEnv-v0", workloads=[small_graph], max_nodes=64, max_edges=128, max_episode_steps=3)
    _, info = env.reset(seed=0)
    flags = []
    for _ in range(3):
        fuse = np.flatnonzero(info["action_mask"][:small_graph.num_edges])
        _, _, terminated, truncated, info = env.step(int(fuse[0]))
        flags.append((terminated, truncated))
    assert flags == [(False, False), (False, False), (False, True)]
    assert env.unwrapped.plan.num_groups == info["num_groups"] == small_graph.num_nodes - 3


# ------------------------------------------------------------------ API compatibility
def test_gymnasium_and_sb3_check_env(small_graph):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("FusionEnv-v0", workloads=[small_graph], max_nodes=64, max_edges=128, render_mode="ansi")
    check_env(env.unwrapped)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unconventional shape.*")  # 2-D keys: GNN policies
        sb3_check_env(env.unwrapped)


def _make_small(graph: ComputeGraph):
    return lambda: gym.make("FusionEnv-v0", workloads=[graph], max_nodes=64, max_edges=128)


def test_subproc_and_async_vector_envs(small_graph):
    from stable_baselines3.common.vec_env import SubprocVecEnv

    vec = SubprocVecEnv([_make_small(small_graph), _make_small(random_dag(40, 20, 1))], start_method="fork")
    vec.reset()
    rng = np.random.default_rng(0)
    for _ in range(5):
        masks = np.stack(vec.env_method("action_masks"))
        _, rewards, dones, infos = vec.step(np.array([rng.choice(np.flatnonzero(m)) for m in masks]))
        assert rewards.shape == (2,) and "latency_us" in infos[0]
    stop = len(masks[0]) - 1                                     # the last action: the plan is final
    observations, _, dones, infos = vec.step(np.array([stop, stop]))
    assert dones.all() and all("terminal_observation" in info for info in infos)
    assert (observations["edge_state"][0] != 2).all()            # reset automatically: no edge inside a group
    vec.close()

    async_env = gym.vector.AsyncVectorEnv([_make_small(small_graph)] * 2, context="fork")
    async_env.reset(seed=0)
    for _ in range(5):
        masks = np.stack(async_env.call("action_masks"))
        _, rewards, *_ = async_env.step(np.array([rng.choice(np.flatnonzero(m)) for m in masks]))
        assert rewards.shape == (2,)
    _, _, terminated, _, _ = async_env.step(np.array([stop, stop]))
    assert terminated.all()
    observations, rewards, terminated, _, _ = async_env.step(np.array([0, 0]))  # next-step autoreset
    assert not terminated.any() and (rewards == 0).all() and (observations["edge_state"] != 2).all()
    async_env.close()


def test_maskable_ppo_trains_a_few_steps(small_graph):
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    vec = DummyVecEnv([_make_small(small_graph)])
    model = MaskablePPO("MultiInputPolicy", vec, n_steps=32, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=32)
    assert model.num_timesteps >= 32


# ---------------------------------------------------------------------------- render
def test_render_ansi_table_and_rgb_array(small_graph):
    env = make_env([small_graph], render_mode="ansi")
    env.reset(seed=0)
    env.step(0)
    text = env.render()
    assert "group" in text and "schedule" in text and "µs" in text
    assert len([line for line in text.splitlines() if line.strip()[:1].isdigit()]) == env.plan.num_groups
    image = make_env([small_graph], render_mode="rgb_array")
    image.reset(seed=0)
    frame = image.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and frame.shape[0] > 50
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 3   # something was drawn
