"""``FusionPolicy``: a trained fusion policy deciding a plan in one forward pass.

``FusionPolicy.load("policy.onnx").decide(graph)`` encodes the graph in the start state of
the environment (every op alone, no schedule chosen), runs the exported GNN once (on one
thread: numpy and C kernels over the file's weights, ``KernelEngine``, or onnxruntime) and
builds the plan from the scores:

1. fusions: every edge whose fuse logit beats the stop logit, in decreasing logit order,
   merged when still legal: not inside one group already, within the backend's group
   constraint and convex (``greedy_groups``);
2. schedules: per group, the schedule with the highest logit on any of its nodes, among
   the schedules the backend offers.

There is no re-run of the network per step: the sequential policy (one action per forward
pass, in the env) is what training optimizes; ``decide`` is its one-shot approximation.

This module imports neither torch nor TVM: the leaderboard and compilers load the ONNX file
with numpy, onnx and (for the reference engine) onnxruntime only. ``encode_graphs`` is the
inference twin of ``fusiongym.agents.policy.observation_to_batch``: same schema, same numbers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from fusiongym.envs.observation import (GLOBAL_FEATURES, GLOBAL_HIGH, KIND_CODES, OP_VOCAB, context_features,
                                        edge_log_features, node_log_features, op_ids)
from fusiongym.graphs import ComputeGraph, GraphInstance
from fusiongym.reward import DEFAULT_SCHEDULE, LatencyBackend, Plan, get_backend
from fusiongym.reward.devices import DeviceProfile

from . import _gnn_kernels, _greedy_merge

FORMAT = "fusiongym.FusionPolicy/1"
FEATURE_SCHEMA = "fusiongym.policy-features/1"
METADATA_KEY = "fusiongym"           # key of the metadata JSON in the ONNX metadata_props
PRETRAINED = "policy.onnx"           # file in fusiongym.agents.pretrained

# --- feature schema (FEATURE_SCHEMA), shared with the training adapter in policy.py -------
NUM_KINDS = len(KIND_CODES) + 1      # node_kind codes 0 (padding) .. 7
FEATURE_SCALE = 1.0 / 16.0           # log2 features (FLOPs, bytes) lie in [0, 64], typically < 40
GROUP_SIZE_SCALE = 1.0 / 6.0         # log2(group size); groups have up to 64 nodes
# Global inputs: the observation's "global" vector without the two entries a one-shot
# decision cannot know (log2_unfused_us needs a latency evaluation, nodes_fill the padding).
GLOBAL_SCALES: dict[str, float] = {
    "device_is_gpu": 1.0, "log2_peak_gflops": 1 / 16, "log2_bandwidth_gbs": 1 / 16, "launch_overhead_us": 1 / 8,
    "load_compute": 1.0, "load_bandwidth": 1.0,
    "log2_batch": 1 / 16, "log2_seq": 1 / 16, "log2_image": 1 / 16, "log2_tokens": 1 / 16,
    "routing_imbalance": 1 / 8, "experts_active_share": 1.0, "latency_ratio": 1.0, "groups_ratio": 1.0,
}
GLOBAL_INPUTS: tuple[str, ...] = tuple(GLOBAL_SCALES)
GLOBAL_INDEX = np.array([GLOBAL_FEATURES.index(name) for name in GLOBAL_INPUTS])
GLOBAL_SCALE = np.array([GLOBAL_SCALES[name] for name in GLOBAL_INPUTS], dtype=np.float32)
EDGE_FLOATS = 2                      # log2(1 + bytes) scaled, inside-one-group flag
OTHER_OP = OP_VOCAB.index("<other>")

# ONNX graph inputs and outputs, in order (see EncodedBatch).
ONNX_INPUTS = ("op", "floats", "glob", "end_index", "edge_x", "edge_x_sorted", "nbr_index", "nbr_hi", "nbr_lo",
               "inv_deg", "graph_ptr", "inv_count")
ONNX_OUTPUTS = ("edge_logits", "schedule_logits", "stop_logit", "value")


class FloatColumns:
    """Column layout of the per-node float input: 5 node features, log2(group size), one-hot
    kind (NUM_KINDS), one-hot schedule (0 = none chosen, 1..S), the graph's global inputs."""

    def __init__(self, num_schedules: int) -> None:
        self.group_size = 5
        self.kind = 6
        self.schedule = self.kind + NUM_KINDS
        self.glob = self.schedule + num_schedules + 1
        self.count = self.glob + len(GLOBAL_INPUTS)


def scale_globals(values: np.ndarray) -> np.ndarray:
    """[..., 16] observation globals (float16-rounded) -> [..., G] network inputs."""
    return values[..., GLOBAL_INDEX].astype(np.float32) * GLOBAL_SCALE


# --------------------------------------------------------------------- encoding
@dataclass(frozen=True)
class FeatureDevice:
    """The device whose profile fills the observation's device features: the training
    backend's profile, pinned in the policy's metadata (None: a timing backend, no profile).

    Pinned rather than looked up, so that a policy sees the numbers it was trained with
    even where this machine's calibrated CPU profile differs from the training machine's.
    """

    profile: DeviceProfile | None

    @staticmethod
    def of(metadata: dict[str, Any]) -> "FeatureDevice":
        data = metadata.get("feature_profile")
        return FeatureDevice(DeviceProfile.from_dict(data) if data else None)


@dataclass
class EncodedBatch:
    """Network inputs for B graphs in their start state, as one disjoint union (numpy).

    M nodes and K edges in all; ``src``/``dst`` list the edges in graph order (node indices
    of the union). The fields are what the start state leaves variable; the full input
    layout of the ONNX and torch networks (``floats``, ``edge_x``, the CSR view that
    ``CsrStructure`` reads) is derived from them on first use.
    """

    op: np.ndarray             # [M] int64 op id
    kind: np.ndarray           # [M] int64 kind code (KIND_CODES, 1..7)
    node_feat: np.ndarray      # [M, 5] float32, scaled log2 features
    glob: np.ndarray           # [B, G] float32
    node_graph: np.ndarray     # [M] int64
    src: np.ndarray            # [K] int64
    dst: np.ndarray            # [K] int64
    edge_bytes: np.ndarray     # [K] float32, scaled log2(1 + bytes)
    graph_ptr: np.ndarray      # [B+1] int64
    num_schedules: int

    @property
    def num_nodes(self) -> int:
        return self.op.shape[0]

    @cached_property
    def floats(self) -> np.ndarray:
        """[M, F] float32, columns as in FloatColumns: log2(group size) 0, no schedule chosen."""
        columns = FloatColumns(self.num_schedules)
        floats = np.zeros((self.num_nodes, columns.count), dtype=np.float32)
        floats[:, :5] = self.node_feat
        floats[np.arange(self.num_nodes), columns.kind + self.kind] = 1.0
        floats[:, columns.schedule] = 1.0
        floats[:, columns.glob:] = self.glob[self.node_graph]
        return floats

    @cached_property
    def edge_x(self) -> np.ndarray:
        """[K, 2] float32: scaled log2(1 + bytes), inside-one-group flag (0: no edge is)."""
        return np.stack([self.edge_bytes, np.zeros_like(self.edge_bytes)], axis=1)

    @cached_property
    def end_index(self) -> np.ndarray:
        """[K, 2] int64: 2 src, 2 dst + 1 (rows of the edge head's interleaved table)."""
        return np.stack([2 * self.src, 2 * self.dst + 1], axis=1)

    @cached_property
    def inv_count(self) -> np.ndarray:
        """[B, 1] float32: 1 / nodes of each graph."""
        return (1.0 / np.diff(self.graph_ptr)).astype(np.float32)[:, None]

    def onnx_feed(self) -> dict[str, np.ndarray]:
        """The exported model's inputs (ONNX_INPUTS), the CSR view included."""
        csr = csr_view(self.src, self.dst, self.edge_x, self.num_nodes)
        return {name: csr[name] if name in csr else getattr(self, name) for name in ONNX_INPUTS}


def encode_graphs(graphs: Sequence[ComputeGraph | GraphInstance], device: FeatureDevice | LatencyBackend,
                  vocab_size: int, num_schedules: int) -> EncodedBatch:
    """Encode graphs in the env's start state (singletons, no schedule chosen) as one batch.

    ``device`` supplies the device-profile part of the context (anything with a
    ``profile``, as the env's backend). Numbers pass through float16 exactly as the
    observation (``GraphFeatures``) stores them, so the network sees what it saw in training.
    """
    ops, kinds, node_feat, glob, src, dst, edge_bytes = [], [], [], [], [], [], []
    base = 0
    for graph in graphs:
        if graph.num_nodes == 0:
            raise ValueError(f"graph {graph.name} has no nodes")
        arrays = graph.arrays
        op = op_ids(arrays).astype(np.int64)
        op[op >= vocab_size] = OTHER_OP                      # ops added to the vocabulary after training
        ops.append(op)
        kinds.append(arrays.kind_index.astype(np.int64) + 1)   # KIND_CODES
        node_feat.append(half_scaled(node_log_features(arrays)))
        context = context_features(graph, device)
        context[GLOBAL_FEATURES.index("latency_ratio")] = 1.0      # start state: nothing fused yet
        context[GLOBAL_FEATURES.index("groups_ratio")] = 1.0
        glob.append(scale_globals(np.clip(context, 0.0, GLOBAL_HIGH).astype(np.float16))[None])
        edges = arrays.edge_index                # int32 (the observation's uint16 copy caps graphs at 65,535 nodes)
        src.append(edges[0].astype(np.int64) + base)
        dst.append(edges[1].astype(np.int64) + base)
        edge_bytes.append(half_scaled(edge_log_features(arrays)))
        base += graph.num_nodes
    counts = np.array([graph.num_nodes for graph in graphs])
    return EncodedBatch(
        op=np.concatenate(ops), kind=np.concatenate(kinds), node_feat=np.concatenate(node_feat),
        glob=np.concatenate(glob), node_graph=np.repeat(np.arange(len(graphs)), counts),
        src=np.concatenate(src), dst=np.concatenate(dst), edge_bytes=np.concatenate(edge_bytes),
        graph_ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), num_schedules=num_schedules)


def half_scaled(values: np.ndarray) -> np.ndarray:
    """float32 ``values`` rounded through float16, as the observation stores them, times
    FEATURE_SCALE: ``values.astype(np.float16) * FEATURE_SCALE`` in one C pass (numpy's
    float16 cast costs more than the rest of the encoding)."""
    out = np.empty_like(values, dtype=np.float32)
    _gnn_kernels.round_half(np.ascontiguousarray(values, dtype=np.float32), FEATURE_SCALE, out)
    return out


def csr_view(src: np.ndarray, dst: np.ndarray, edge_x: np.ndarray, num_nodes: int) -> dict[str, np.ndarray]:
    """Edges sorted by consumer and by producer, with row pointers (``CsrStructure``'s inputs)."""
    by_dst = np.argsort(dst, kind="stable")                                    # [K]
    by_src = np.argsort(src, kind="stable")                                    # [K]
    in_deg = np.bincount(dst, minlength=num_nodes)                             # [M]
    out_deg = np.bincount(src, minlength=num_nodes)                            # [M]
    in_ptr = np.concatenate([[0], np.cumsum(in_deg)])                          # [M+1]
    out_ptr = np.concatenate([[0], np.cumsum(out_deg)])                        # [M+1]
    k = src.shape[0]
    nbr_index = np.zeros((k + 1, 2), dtype=np.int64)                            # row 0: dummy (node 0)
    nbr_index[1:, 0], nbr_index[1:, 1] = src[by_dst], dst[by_src]
    edge_x_sorted = np.zeros((k + 1, 2, edge_x.shape[1]), dtype=np.float32)
    edge_x_sorted[1:, 0], edge_x_sorted[1:, 1] = edge_x[by_dst], edge_x[by_src]
    ptr = np.stack([2 * in_ptr, 2 * out_ptr + 1], axis=1).astype(np.int64)      # [M+1, 2]
    return {
        "edge_x_sorted": edge_x_sorted, "nbr_index": nbr_index, "nbr_hi": ptr[1:], "nbr_lo": ptr[:-1],
        "inv_deg": (1.0 / np.maximum(np.stack([in_deg, out_deg], axis=1), 1)).astype(np.float32),
    }


# ------------------------------------------------------------------------ engines
class Engine(Protocol):
    """Runs the network on an encoded batch: (edge [K], schedule [M, S], stop [B], value [B])."""

    def run(self, batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...


class OnnxEngine:
    """The exported network in onnxruntime, one intra-op thread (a compiler calls it inline)."""

    def __init__(self, model: str | Path | bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def run(self, batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        edge, schedule, stop, value = self.session.run(list(ONNX_OUTPUTS), batch.onnx_feed())
        return edge, schedule, stop, value


# ---------------------------------------------------------------------- planning
MergeCheck = Callable[[list[int], list[int]], bool]


def greedy_groups(num_nodes: int, src: np.ndarray, dst: np.ndarray, edge_logits: np.ndarray, threshold: float,
                  max_group_size: int | None = None, allowed: MergeCheck | None = None) -> np.ndarray:
    """[N] group index per node (groups numbered by their first node): edges above
    ``threshold`` merged in decreasing logit order.

    A merge along edge A -> B is skipped when A and B are one group already, when the
    union exceeds ``max_group_size``, when ``allowed(members_a, members_b)`` says no, or
    when it is not convex: some other successor group of A reaches B. The search for such
    a path visits only groups whose first node precedes B's last node (node ids are a
    topological order); when A's only successor is B, or B's only predecessor is A, no
    search is needed. Every intermediate partition is convex, so the result is legal.
    The loop runs in C (``agents/greedy_merge.c``): a compiler asks for plans inline.
    """
    candidates = np.flatnonzero(edge_logits > threshold)                        # ascending edge ids
    order = candidates[np.argsort(-edge_logits[candidates], kind="stable")].astype(np.int64)
    labels = np.empty(num_nodes, dtype=np.int64)
    _greedy_merge.greedy_merge(num_nodes, np.ascontiguousarray(src, dtype=np.int64),
                               np.ascontiguousarray(dst, dtype=np.int64), order,
                               max_group_size or num_nodes, allowed, labels)
    return labels


def group_schedules(group_of: np.ndarray, schedule_logits: np.ndarray, choices: np.ndarray) -> np.ndarray:
    """[G] the chosen schedule index of each group.

    ``group_of`` [N] group index per node (0..G-1, as ``greedy_groups`` numbers them),
    ``schedule_logits`` [N, S], ``choices`` [S] bool: the schedules the backend offers. A
    group takes the schedule with the highest logit on any of its nodes (C, like the merges).
    """
    group_of = np.ascontiguousarray(group_of, dtype=np.int64)
    chosen = np.empty(int(group_of.max()) + 1 if group_of.size else 0, dtype=np.int64)   # [G]
    _greedy_merge.group_schedules(group_of, np.ascontiguousarray(schedule_logits, dtype=np.float32),
                                  np.ascontiguousarray(choices, dtype=np.uint8), chosen)
    return chosen


# ------------------------------------------------------------------------ policy
ENGINES = ("kernels", "onnxruntime")   # FusionPolicy.load's engines


def check_metadata(metadata: dict[str, Any]) -> None:
    """Raise when ``metadata`` is not a policy this fusiongym can encode inputs for."""
    if metadata.get("format") != FORMAT:
        raise ValueError(f"not a fusiongym policy (format={metadata.get('format')!r}, expected {FORMAT!r})")
    if metadata.get("feature_schema") != FEATURE_SCHEMA:
        raise ValueError(f"policy uses feature schema {metadata.get('feature_schema')!r}; this fusiongym "
                         f"encodes {FEATURE_SCHEMA!r}: re-export it with this version")
    vocab = list(metadata["op_vocab"])
    if list(OP_VOCAB[:len(vocab)]) != vocab:
        raise ValueError("the policy's op vocabulary is not a prefix of fusiongym.envs.OP_VOCAB "
                         "(the vocabulary is append-only): it was trained on another op numbering")


class FusionPolicy:
    """A trained fusion policy: ``decide(graph) -> Plan`` in one forward pass.

    ``metadata`` is the JSON the exporter wrote (schema, vocabulary, schedule menu, training
    command and seed, versions); ``engine`` runs the network (onnxruntime, or the torch
    network during training and in tests).
    """

    def __init__(self, engine: Engine, metadata: dict[str, Any], name: str = "policy") -> None:
        check_metadata(metadata)
        self.engine = engine
        self.metadata = metadata
        self.name = name
        self.schedules: tuple[str, ...] = tuple(metadata["schedules"])
        self.vocab_size = len(metadata["op_vocab"])
        self.feature_device = FeatureDevice.of(metadata)
        self._default_backend: LatencyBackend | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, engine: str = "kernels") -> "FusionPolicy":
        """An exported policy: ``policy.onnx`` (metadata in its metadata_props, or the sidecar
        ``policy.json`` beside it).

        ``engine``: ``kernels`` runs the network with numpy and C kernels from the file's
        weights (``KernelEngine``, the fast path); ``onnxruntime`` runs the exported graph as
        it is (the reference; any ONNX runtime can do the same).
        """
        import onnx

        path = Path(path)
        if engine not in ENGINES:
            raise ValueError(f"unknown policy engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if not path.exists():
            raise FileNotFoundError(f"policy file {path} does not exist")
        if path.suffix != ".onnx":
            raise ValueError(f"{path} is not an exported policy (.onnx); export a run with "
                             f"`fusiongym export runs/NAME --out policy.onnx`")
        model = onnx.load(str(path))
        text = {prop.key: prop.value for prop in model.metadata_props}.get(METADATA_KEY)
        sidecar = path.with_suffix(".json")
        if text is None and sidecar.exists():
            text = sidecar.read_text()
        if text is None:
            raise ValueError(f"{path} carries no fusiongym metadata (metadata_props[{METADATA_KEY!r}]) "
                             f"and has no sidecar {sidecar.name}")
        metadata = json.loads(text)
        check_metadata(metadata)
        if engine == "kernels":
            from .kernel_engine import KernelEngine, onnx_weights   # it builds on this module's encoding

            return cls(KernelEngine(onnx_weights(model), len(metadata["schedules"])), metadata, name=path.stem)
        return cls(OnnxEngine(model.SerializeToString()), metadata, name=path.stem)

    @classmethod
    def pretrained(cls) -> "FusionPolicy":
        """The policy shipped with fusiongym (``fusiongym/agents/pretrained/policy.onnx``)."""
        with resources.as_file(resources.files("fusiongym.agents").joinpath("pretrained", PRETRAINED)) as path:
            policy = cls.load(path)
        policy.name = "pretrained"
        return policy

    # ------------------------------------------------------------------ deciding
    def encode(self, graphs: Sequence[ComputeGraph | GraphInstance]) -> EncodedBatch:
        """The network inputs of ``graphs`` in their start state, as one batch."""
        return encode_graphs(graphs, self.feature_device, self.vocab_size, len(self.schedules))

    def decide(self, graph: ComputeGraph | GraphInstance, backend: LatencyBackend | None = None) -> Plan:
        """A legal plan for ``graph`` on ``backend`` (None: the analytical CPU model, whose
        64-node group limit also keeps the plan legal on the TVM backend).

        ``graph`` may be a ``GraphInstance`` (``ShapeProgram(template).instance(dims)``): new
        shapes at run time without building the graph. ``plan.graph_hash`` is computed when
        first read. ``plan.meta`` records the policy, the decision time and its parts (ms).
        """
        if graph.is_template:
            raise ValueError(f"{graph.name} is a template over {sorted(graph.symbols)}; instantiate it first")
        backend = backend if backend is not None else self.default_backend()
        started = time.perf_counter()
        batch = self.encode([graph])
        encoded = time.perf_counter()
        edge, schedule, stop, _ = self.engine.run(batch)
        forward = time.perf_counter()
        labels = greedy_groups(graph.num_nodes, batch.src, batch.dst, edge, float(stop[0]),
                               getattr(backend, "max_group_size", None), self._merge_check(graph, backend))
        choices = np.array([name in backend.schedules for name in self.schedules])
        chosen = group_schedules(labels, schedule, choices)
        menu = self.schedules if choices.any() else (DEFAULT_SCHEDULE,) * len(self.schedules)
        done = time.perf_counter()
        meta = {"method": f"policy:{self.name}", "decision_ms": (done - started) * 1e3,
                "encode_ms": (encoded - started) * 1e3, "forward_ms": (forward - encoded) * 1e3,
                "plan_ms": (done - forward) * 1e3}
        return Plan.from_labels(labels, chosen, menu, graph, meta)

    def default_backend(self) -> LatencyBackend:
        if self._default_backend is None:
            self._default_backend = get_backend("analytical", device="cpu")
        return self._default_backend

    @staticmethod
    def _merge_check(graph: ComputeGraph | GraphInstance, backend: LatencyBackend) -> MergeCheck | None:
        """The backend's own group constraint, unless it is only the size limit (analytical
        without ``unfusable_kinds``: merges along edges keep groups weakly connected) or absent
        (the base class)."""
        size_limit_only = backend.name == "analytical" and not getattr(backend, "unfusable_kinds", ())
        if size_limit_only or type(backend).group_constraint is LatencyBackend.group_constraint:
            return None
        concrete = graph.materialize() if isinstance(graph, GraphInstance) else graph   # its nodes are needed
        return lambda a, b: backend.group_constraint(concrete, sorted(a + b)) is None

    def __repr__(self) -> str:
        training = self.metadata.get("training", {})
        return (f"FusionPolicy({self.name!r}, hidden={self.metadata.get('hidden')}, "
                f"layers={self.metadata.get('layers')}, trained={training.get('command', '?')!r})")
