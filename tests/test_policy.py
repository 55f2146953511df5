"""The GNN policy: batching, export to ONNX, one-pass decisions (fusiongym.agents.policy/export/fusion_policy)."""

from __future__ import annotations

import os
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from fusiongym.agents import FusionPolicy
from fusiongym.agents.export import export_gnn, op_types, policy_metadata
from fusiongym.agents.fusion_policy import FEATURE_SCALE, FloatColumns, greedy_groups, half_scaled
from fusiongym.agents.policy import FusionGNNPolicy, GraphBatch, TorchEngine
from fusiongym.envs import FusionEnv
from fusiongym.envs.observation import OP_VOCAB
from fusiongym.graphs import get_workload, synthetic, zoo
from fusiongym.reward import Plan, get_backend, is_legal

MAX_BYTES = 300 * 1024


@pytest.fixture(scope="module")
def model():
    """A seeded, untrained policy whose stop logit is pushed down, so most edges get fused."""
    from sb3_contrib import MaskablePPO

    env = FusionEnv([synthetic(n_nodes=60, seed=3)], max_nodes=2048, max_edges=2048)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ppo = MaskablePPO(FusionGNNPolicy, env, n_steps=16, batch_size=16, seed=0, device="cpu")
    with torch.no_grad():
        ppo.policy.gnn.stop_head.net[-1].bias.fill_(-5.0)
        ppo.policy.gnn.edge_head.out.weight.mul_(100.0)       # spread the edge logits
        ppo.policy.gnn.schedule_head.weight.mul_(100.0)
    return ppo


def _metadata(model) -> dict:
    backend = get_backend("analytical", device="cpu")
    return policy_metadata(model.policy.gnn, len(OP_VOCAB), list(backend.schedules),
                           {"command": "test", "config": {"device": "cpu", "seed": 0}, "backend": backend.describe()})


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_gnn(model.policy.gnn, tmp_path_factory.mktemp("policy") / "policy.onnx", _metadata(model))


def graphs() -> list:
    return [synthetic(n_nodes=60, seed=3), synthetic(n_nodes=300, seed=1),
            get_workload("mixtral_moe/smoke").sample(np.random.default_rng(0))]


def test_padded_batch_and_encoding_agree(model):
    """The training adapter (padded observations) and the inference encoding give the same outputs."""
    env = FusionEnv([synthetic(n_nodes=60, seed=3)], max_nodes=2048, max_edges=2048)
    obs, _ = env.reset(seed=0)
    obs_t, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        row = model.policy.extract_features(obs_t, model.policy.features_extractor)[0].numpy()  # [A + 1]
    policy = FusionPolicy(TorchEngine(model.policy.gnn), _metadata(model))
    edge, schedule, stop, value = policy.engine.run(policy.encode([env.graph]))
    n, e, s = env.graph.num_nodes, env.graph.num_edges, 6
    np.testing.assert_allclose(row[:e], edge, atol=1e-5)
    np.testing.assert_allclose(row[2048:2048 + n * s].reshape(n, s), schedule, atol=1e-5)
    np.testing.assert_allclose([row[-2], row[-1]], [stop[0], value[0]], atol=1e-5)


def test_group_state_reaches_the_network(model):
    """After merges, each node's group-size input is log2 of its group's size in the env."""
    env = FusionEnv([synthetic(n_nodes=60, seed=3)], max_nodes=2048, max_edges=2048)
    obs, _ = env.reset(seed=0)
    for _ in range(12):
        obs, *_ = env.step(int(np.flatnonzero(env.action_masks()[:2048])[0]))
    batch = GraphBatch(model.policy.obs_to_tensor(obs)[0], model.policy.features_extractor.layout)
    sizes = np.zeros(env.graph.num_nodes)
    for group in env.plan.groups:
        sizes[group] = len(group)
    column = FloatColumns(6).group_size
    np.testing.assert_allclose(batch.floats[:, column].numpy(), np.log2(sizes) / 6, atol=1e-6)
    internal = batch.edge_x[:, 1].numpy() > 0
    assert internal.sum() == (obs["edge_state"] == 2).sum() >= 12


@pytest.mark.parametrize("engine", ["kernels", "onnxruntime"])
def test_export_matches_torch_outputs_and_plans(model, exported, engine):
    onnx_policy = FusionPolicy.load(exported, engine=engine)
    torch_policy = FusionPolicy(TorchEngine(model.policy.gnn), onnx_policy.metadata)
    assert not any("Scatter" in op for op in op_types(exported))
    batch = onnx_policy.encode(graphs())                         # three graphs in one batch
    for ours, reference in zip(onnx_policy.engine.run(batch), torch_policy.engine.run(batch)):
        np.testing.assert_allclose(ours, reference, atol=1e-4)
    merged = 0
    for graph in graphs():
        plan, reference = onnx_policy.decide(graph), torch_policy.decide(graph)
        assert plan.canonical() == reference.canonical()
        merged += graph.num_nodes - plan.num_groups
    assert merged > 50                                           # the test exercises real fusion


@pytest.mark.parametrize("hidden,layers", [(8, 2), (12, 1), (24, 3)])
def test_kernel_engine_matches_torch_at_other_widths(hidden, layers, tmp_path):
    """H = 8 takes the kernel's constant-width path, 12 and 24 its run-time-width loops
    (3H not a multiple of 8, or wider than its registers); any layer count."""
    from sb3_contrib import MaskablePPO

    env = FusionEnv([synthetic(n_nodes=60, seed=3)], max_nodes=2048, max_edges=2048)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ppo = MaskablePPO(FusionGNNPolicy, env, n_steps=16, batch_size=16, seed=1, device="cpu",
                          policy_kwargs={"features_extractor_kwargs": {"hidden": hidden, "layers": layers}})
    path = export_gnn(ppo.policy.gnn, tmp_path / "policy.onnx", _metadata(ppo))
    fast = FusionPolicy.load(path)
    torch_policy = FusionPolicy(TorchEngine(ppo.policy.gnn), fast.metadata)
    batch = fast.encode(graphs())
    for ours, reference in zip(fast.engine.run(batch), torch_policy.engine.run(batch)):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)


def test_features_round_through_float16_like_numpy():
    """``half_scaled`` (C, F16C where the CPU has it) equals numpy's float16 cast times the
    scale bit for bit; arrays shorter than 8 take the portable rounding."""
    rng = np.random.default_rng(0)
    special = np.array([0.0, 5.96e-8, 2.98e-8, 2.99e-8, 6.1e-5, 6.103515625e-05, 1.00048828125, 1.000732421875,
                        65504.0, 65519.99, 65520.0, 7e4, np.inf, -3.0], dtype=np.float32)
    values = np.concatenate([rng.uniform(0, 64, 10_000), np.exp(rng.uniform(-30, 12, 10_000)), special])
    for chunk in [values.astype(np.float32), *np.array_split(special, 3)]:
        with np.errstate(over="ignore"):
            expected = chunk.astype(np.float16).astype(np.float32) * np.float32(FEATURE_SCALE)
        np.testing.assert_array_equal(half_scaled(chunk), expected)


def test_kernel_engine_decides_like_onnxruntime_with_the_shipped_policy():
    """The fast engine computes the exported graph's numbers from its weights: same outputs
    (up to summation order) and the same plans on full-size zoo graphs and a 10k-edge graph."""
    with resources.as_file(resources.files("fusiongym.agents").joinpath("pretrained", "policy.onnx")) as path:
        fast, reference = FusionPolicy.load(path), FusionPolicy.load(path, engine="onnxruntime")
    cases = [zoo.load("resnet50", "full", batch=1, image=224), zoo.load("bert", "small", batch=2, seq=64),
             synthetic(n_nodes=9_400, seed=0)]
    batch = fast.encode(cases)
    for ours, expected in zip(fast.engine.run(batch), reference.engine.run(batch)):
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    for graph in cases:
        assert fast.decide(graph).canonical() == reference.decide(graph).canonical()


def test_threads_sharing_one_policy_get_the_plans_of_a_lone_caller():
    """The kernels release the GIL; each thread has its own scratch arrays."""
    from concurrent.futures import ThreadPoolExecutor

    policy = FusionPolicy.pretrained()
    cases = [synthetic(n_nodes=3_000, seed=seed) for seed in range(4)] * 3
    alone = [policy.decide(graph).canonical() for graph in cases]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda graph: policy.decide(graph).canonical(), cases))
    assert together == alone


def test_a_file_from_another_exporter_names_the_missing_weights(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported))
    next(init for init in model.graph.initializer if init.name == "gnn.encoder.op.weight").name = "embedding"
    onnx.save(model, str(tmp_path / "renamed.onnx"))
    with pytest.raises(ValueError, match=r"lacks the weights \['gnn.encoder.op.weight'\].*engine='onnxruntime'"):
        FusionPolicy.load(tmp_path / "renamed.onnx")


def test_unknown_engine_is_refused_with_the_choices(exported):
    with pytest.raises(ValueError, match="kernels, onnxruntime"):
        FusionPolicy.load(exported, engine="tensorrt")


def test_file_size_and_metadata(exported):
    assert os.path.getsize(exported) <= MAX_BYTES
    policy = FusionPolicy.load(exported)
    meta = policy.metadata
    assert meta["op_vocab"] == list(OP_VOCAB) and meta["schedules"][0] == "default"
    assert meta["training"]["command"] == "test" and meta["training"]["seed"] == 0
    assert exported.with_suffix(".json").exists()


def test_pretrained_policy_ships_small_with_its_provenance():
    policy = FusionPolicy.pretrained()
    folder = resources.files("fusiongym.agents").joinpath("pretrained")
    assert sum(item.stat().st_size for item in Path(str(folder)).iterdir()) <= MAX_BYTES
    training = policy.metadata["training"]
    assert training["command"].startswith("fusiongym train ") and training["seed"] is not None


@pytest.mark.parametrize("backend_options", [{}, {"max_group_size": 3}, {"device": "h100_sxm"}])
def test_decide_always_returns_a_legal_plan(backend_options):
    policy = FusionPolicy.pretrained()
    backend = get_backend("analytical", **backend_options)
    cases = [synthetic(n_nodes=2000, seed=0), synthetic(n_nodes=50, seed=7),
             zoo.load("resnet18", "small", batch=1), get_workload("mixtral_moe/smoke").sample(np.random.default_rng(2))]
    for graph in cases:
        plan = policy.decide(graph, backend)
        verdict = is_legal(graph, plan, backend)
        assert verdict, verdict.reason
        assert set(plan.schedules) <= set(backend.schedules)
    assert is_legal(cases[2], policy.decide(cases[2]), get_backend("analytical"))


@pytest.mark.parametrize("limit", [8, 64])
def test_greedy_merges_exactly_the_env_legal_ones(limit):
    """Greedy convexity and size checks agree with the env's exact partition masks."""
    rng = np.random.default_rng(limit)
    for seed in range(6):
        graph = synthetic(n_nodes=150, seed=seed)
        logits = rng.normal(size=graph.num_edges)
        edges = graph.arrays.edge_index.astype(np.int64)
        labels = greedy_groups(graph.num_nodes, edges[0], edges[1], logits, threshold=-0.5, max_group_size=limit)
        env = FusionEnv([graph], max_nodes=256, max_edges=256, schedule_actions=False,
                        backend=get_backend("analytical", max_group_size=limit))
        env.reset(seed=0)
        refused = 0
        for edge in np.argsort(-logits, kind="stable"):
            if logits[edge] > -0.5 and env.action_masks()[edge]:
                env.step(int(edge))
            elif logits[edge] > -0.5 and env.plan.group_of(graph.num_nodes)[edges[0, edge]] != \
                    env.plan.group_of(graph.num_nodes)[edges[1, edge]]:
                refused += 1                      # between two groups, yet illegal: size or convexity
        ours = Plan.from_assignment(graph, labels)
        assert sorted(ours.groups) == sorted(env.plan.groups)
        assert refused > 0 and ours.num_groups < graph.num_nodes / 2


def test_greedy_asks_the_backend_check_and_passes_its_errors_on():
    graph = synthetic(n_nodes=120, seed=3)
    edges = graph.arrays.edge_index.astype(np.int64)
    logits = np.random.default_rng(0).normal(size=graph.num_edges)
    asked = []

    def at_most_three(members_a, members_b):
        asked.append(len(members_a) + len(members_b))
        return len(members_a) + len(members_b) <= 3

    labels = greedy_groups(graph.num_nodes, edges[0], edges[1], logits, threshold=-1.0, allowed=at_most_three)
    assert asked and max(asked) > 3                      # it asked about merges it then refused
    assert np.bincount(labels).max() == 3 and np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert labels[0] == 0 and np.all(np.diff(np.maximum.accumulate(labels)) <= 1)   # numbered by first node

    def broken(members_a, members_b):
        raise RuntimeError("constraint failed")

    with pytest.raises(RuntimeError, match="constraint failed"):
        greedy_groups(graph.num_nodes, edges[0], edges[1], logits, threshold=-1.0, allowed=broken)
    with pytest.raises(ValueError, match="outside"):
        greedy_groups(3, np.array([0, 1]), np.array([1, 5]), np.array([1.0, 1.0]), threshold=0.0)


def test_a_run_time_instance_gets_the_plan_of_the_instantiated_graph(exported, tmp_path):
    """``decide`` on ``ShapeProgram(template).instance(dims)`` (no graph built) plans exactly as
    on ``template.instantiate(dims)``, on the analytical model and through a backend's own
    group check (which needs the graph's nodes); the graph hash is computed when read."""
    import pickle

    from fusiongym.graphs import ShapeProgram

    policy = FusionPolicy.load(exported)
    template = zoo.template("llama", "small")
    program = ShapeProgram(template)
    load = {"device_load": {"compute": 0.5, "bandwidth": 0.3}}
    for dims in ({"batch": 1, "seq": 40}, {"batch": 3, "seq": 200}):
        graph, instance = template.instantiate(dims, load), program.instance(dims, load)
        expected, plan = policy.decide(graph), policy.decide(instance)
        assert plan.num_groups < graph.num_nodes                       # it fused
        assert instance._graph is None                                 # not built for the decision
        assert np.array_equal(plan.group_of(graph.num_nodes), expected.group_of(graph.num_nodes))
        assert plan.schedules == expected.schedules and plan.graph_hash == graph.hash
        assert is_legal(graph, plan, policy.default_backend())
        assert pickle.loads(pickle.dumps(plan)).graph_hash == graph.hash
    inductor = get_backend("torch", device="cpu", store=tmp_path / "store.db")   # checks each merge on the nodes
    plan = policy.decide(instance, inductor)
    assert instance._graph is not None and plan.num_groups < graph.num_nodes
    assert plan.canonical() == policy.decide(graph, inductor).canonical()
