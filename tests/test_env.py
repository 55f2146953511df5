"""FusionEnv-v0: legality, rewards, replay, API checkers, vector envs, memory bound, rendering."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from fusiongym.envs import (DEFAULT_MAX_NODES, GLOBAL_FEATURES, MAX_EPISODE_STEPS, OP_VOCAB, FusionEnv,
                            validate_results)
from fusiongym.graphs import ComputeGraph, Edge, OpKind, OpNode, TensorSpec, synthetic
from fusiongym.reward import Plan, get_backend, is_legal

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
    """SB3 stores 2048 steps x 4 envs of every key in its dtype, plus a float32 action mask."""
    steps = 2048 * 4
    for device in ("cpu", "h100_sxm"):
        env = make_env([synthetic(8, 0)], max_nodes=2048, max_edges=4096, device=device)
        obs_bytes = sum(int(np.prod(space.shape)) * space.dtype.itemsize for space in env.observation_space.values())
        mask_bytes = env.action_space.n * np.dtype(np.float32).itemsize
        assert (obs_bytes + mask_bytes) * steps < 2**30, (device, obs_bytes, mask_bytes)
        obs, _ = env.reset(seed=0)
        assert sum(a.nbytes for a in obs.values()) == obs_bytes


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
    vec.close()

    async_env = gym.vector.AsyncVectorEnv([_make_small(small_graph)] * 2, context="fork")
    async_env.reset(seed=0)
    for _ in range(5):
        masks = np.stack(async_env.call("action_masks"))
        _, rewards, *_ = async_env.step(np.array([rng.choice(np.flatnonzero(m)) for m in masks]))
        assert rewards.shape == (2,)
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
