"""The trained GNN cost model in numpy and C, no torch: the fast path every prediction takes.

Why not torch or onnxruntime: a 10k-edge plan must be priced in about a millisecond on one
CPU thread, and PyG's scatter under onnxruntime takes 13-20 ms (DESIGN.md):

* everything that does not depend on the plan — op embedding, static node features and
  their projection — is computed once per graph (``static_proj`` [N, H]);
* the plan's features are one C pass over its nodes and their edges (``features.plan_features``);
* the network is one C pass over nodes and their in-edges and one over groups
  (``reward/costmodel/kernels.c``): messages follow the in-edges in consumer order (row
  pointers fixed per graph; the plan masks out crossing edges), then group means and the
  two-layer head. In numpy the same network was fifteen passes over [N, H] arrays.

Per plan: h0 = relu(static_proj + P W_plan),
h1 = h0 + relu(h0 W_a + A h0 W_b + B W_e + b) with A the [N, N] adjacency of internal edges
and B [N, 2] the sums of each node's internal in-edges' features (``features.EDGE_FEATURES``),
z = relu([mean of h1 over the group ; group features ; prior / 8] W_head + S_head[schedule] + b),
prior = ln µs of the analytical backend (``prior.AnalyticalPrior``, one vectorized
``evaluate`` per plan), ln µs = prior + (z w_out + b_out) * y_std + y_mean.

One group alone (an env step) is priced from its own nodes and edges, by the same kernel:
its features never touch the rest of the graph. The [N, H] intermediates of plan pricing
live in per-graph buffers reused call after call: fresh 0.6 MB arrays cost page faults.

The file is one ``.npz`` (no pickle) with the weights and a JSON header: feature schema,
op vocabulary, schedule menu, the analytical prior's device profile, training data hash,
metrics, library versions.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fusiongym.graphs import ComputeGraph

from ..store import atomic_output
from . import _kernels
from .features import (EDGE_FEATURES, GROUP_FEATURES, NODE_FEATURES, NUM_KINDS, PRIOR_FEATURE, PRIOR_INPUT_SCALE,
                       STATIC_NODE_FEATURES, GraphTensors, csr_indptr, group_example, plan_features)
from .prior import AnalyticalPrior
from .records import CostModelError

MODEL_FORMAT = "fusiongym.CostModel/4"  # /4: edge features in the messages (none in /3); /3: mean pooling
NUM_STATIC = len(STATIC_NODE_FEATURES) + NUM_KINDS  # leading columns of the node features
GRAPH_CACHE_SIZE = 32
# name -> shape in terms of V ops, F node features, Fe edge features, H hidden, K group features, S schedules,
# D head
WEIGHT_SHAPES = {
    "op_embedding": ("V", "H"), "w_in": ("F", "H"), "b_in": ("H",),
    "w_msg": ("2H", "H"), "w_edge": ("Fe", "H"), "b_msg": ("H",), "w_head": ("H+K+1", "D"), "b_head": ("D",),
    "schedule_head": ("S", "D"), "w_out": ("D",), "b_out": (), "y_mean": (), "y_std": (),
}


@dataclass
class _GraphCache:
    tensors: GraphTensors
    static_proj: np.ndarray   # [N, H] op embedding + static features projected + bias
    h0: np.ndarray            # [N, H] buffers of the plan path, overwritten every call
    pooled: np.ndarray        # [N, H]: the first G rows hold the group sums (G ≤ N)


class CostModel:
    """Latency of fused groups from a trained GNN; weights as float32 numpy arrays."""

    def __init__(self, weights: dict[str, np.ndarray], meta: dict) -> None:
        self.weights = {k: np.asarray(v, dtype=np.float32, order="C") for k, v in weights.items()}
        self.meta = meta
        self.op_vocab: list[str] = list(meta["op_vocab"])
        self.schedules: tuple[str, ...] = tuple(meta["schedules"])
        self._op_id = {op: i for i, op in enumerate(self.op_vocab)}
        self._schedule_id = {s: i for i, s in enumerate(self.schedules)}
        self._graphs: OrderedDict[str, _GraphCache] = OrderedDict()
        _check_shapes(self.weights, len(self.op_vocab), len(self.schedules))
        self.prior = AnalyticalPrior.from_dict(meta.get("analytical_profile"), self.schedules)
        w, hidden = self.weights, self.weights["b_in"].shape[0]
        # The kernel's operands: contiguous row blocks of the weights, biases folded.
        self._w_plan = np.ascontiguousarray(w["w_in"][NUM_STATIC:])                   # [4, H]
        self._w_self = np.ascontiguousarray(w["w_msg"][:hidden])                      # [H, H]
        self._w_message = np.ascontiguousarray(w["w_msg"][hidden:])                   # [H, H]
        self._schedule_bias = w["schedule_head"] + w["b_head"]                        # [S, D]
        self._output = (float(w["b_out"]), float(w["y_std"]), float(w["y_mean"]))

    # ------------------------------------------------------------------ prediction
    def schedule_ids(self, schedules: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self._schedule_id[s] for s in schedules], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"schedule {exc.args[0]!r} is unknown to this cost model "
                             f"(trained on {list(self.schedules)})") from None

    def predict_groups_us(self, graph: ComputeGraph, group_of: np.ndarray,
                          schedule_of_group: np.ndarray) -> np.ndarray:
        """[G] µs of every group of a plan: ``group_of`` [N] labels 0..G-1 (all used),
        ``schedule_of_group`` [G] schedule ids (``schedule_ids``)."""
        return np.exp(self.predict_groups_log_us(graph, group_of, schedule_of_group).astype(np.float64))

    def predict_groups_log_us(self, graph: ComputeGraph, group_of: np.ndarray,
                              schedule_of_group: np.ndarray) -> np.ndarray:
        """[G] ln µs of every group (see ``predict_groups_us``)."""
        cache = self._graph(graph)
        tensors = cache.tensors
        group_of = np.ascontiguousarray(group_of, dtype=np.int64)
        plan = plan_features(tensors, group_of, len(schedule_of_group))
        prior = self.prior.plan_log_us(graph, group_of, schedule_of_group)
        return self._forward(cache.static_proj, plan.node, tensors.in_indptr, tensors.in_src,
                             plan.in_internal.view(np.uint8), tensors.in_edge_static, group_of, plan.group, prior,
                             schedule_of_group, (cache.h0, cache.pooled))

    def predict_group_log_us(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> float:
        """ln µs of one group, computed on its own nodes only (what an env step asks)."""
        cache = self._graph(graph)
        example = group_example(cache.tensors, nodes)
        members = np.unique(np.asarray(nodes, dtype=np.int64))
        size = len(members)
        src, dst = example.edge_index                                       # local ids, internal edges
        by_dst = np.argsort(dst, kind="stable")
        prior = np.array([self.prior.group_log_us(graph, members, schedule)])
        static_proj = cache.static_proj[members]
        return float(self._forward(static_proj, np.ascontiguousarray(example.node[:, NUM_STATIC:].T),
                                   csr_indptr(dst, size), np.ascontiguousarray(src[by_dst]),
                                   np.ones(len(src), dtype=np.uint8), np.ascontiguousarray(example.edge_attr[by_dst]),
                                   np.zeros(size, dtype=np.int64),
                                   example.group[None], prior, self.schedule_ids([schedule]),
                                   (np.empty_like(static_proj), np.empty_like(static_proj)))[0])

    def _forward(self, static_proj: np.ndarray, plan_node: np.ndarray, in_indptr: np.ndarray, in_src: np.ndarray,
                 in_mask: np.ndarray, in_edge_attr: np.ndarray, group_of: np.ndarray, group: np.ndarray,
                 prior_log_us: np.ndarray, schedule_of_group: np.ndarray, scratch: tuple[np.ndarray, np.ndarray]
                 ) -> np.ndarray:
        """The network on n nodes in G groups -> [G] ln µs: ``static_proj`` [n, H], ``plan_node``
        [4, n] (feature by feature), in-edges as CSR by consumer (``in_indptr`` [n+1], ``in_src``
        [E], ``in_mask`` [E] uint8: the internal ones; ``in_edge_attr`` [E, 2] float32: their
        features), ``group_of`` [n] int64, ``group`` [G, K], ``prior_log_us`` [G],
        ``schedule_of_group`` [G]; ``scratch``: two [n, H] float32 arrays, node states and group
        sums (G ≤ n)."""
        h0, pooled = scratch
        w = self.weights
        log_us = np.empty(len(prior_log_us), dtype=np.float64)                              # [G]
        _kernels.forward(static_proj, plan_node, self._w_plan, in_indptr, in_src, in_mask, in_edge_attr,
                         self._w_self, self._w_message, w["w_edge"], w["b_msg"], group_of,
                         np.ascontiguousarray(group, dtype=np.float32), w["w_head"], self._schedule_bias,
                         np.ascontiguousarray(schedule_of_group, dtype=np.int64),
                         w["w_out"], np.ascontiguousarray(prior_log_us, dtype=np.float64), h0,
                         pooled[:len(log_us)], log_us, *self._output, PRIOR_INPUT_SCALE)
        return log_us

    def graph_tensors(self, graph: ComputeGraph) -> GraphTensors:
        """The plan-independent arrays of ``graph`` (cached with the model's per-graph state)."""
        return self._graph(graph).tensors

    def _graph(self, graph: ComputeGraph) -> _GraphCache:
        cache = self._graphs.get(graph.hash)
        if cache is None:
            tensors = GraphTensors.of(graph)
            w = self.weights
            op_ids = np.array([self._op_id.get(op, 0) for op in tensors.op_names], dtype=np.int64)
            static_proj = (w["op_embedding"][op_ids] + tensors.static @ w["w_in"][:NUM_STATIC] + w["b_in"])
            shape = static_proj.shape
            cache = _GraphCache(tensors, static_proj.astype(np.float32),
                                *(np.empty(shape, dtype=np.float32) for _ in range(2)))
            self._graphs[graph.hash] = cache
            if len(self._graphs) > GRAPH_CACHE_SIZE:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(graph.hash)
        return cache

    # ---------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (.npz: weights + JSON header), via a temp file and a rename."""
        path = Path(path)
        with atomic_output(path) as tmp:
            with tmp.open("wb") as handle:
                np.savez_compressed(handle, __meta__=np.array(json.dumps(self.meta, sort_keys=True)),
                                    **self.weights)
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> "CostModel":
        """Read a model written by ``save``; a missing, foreign or damaged file raises CostModelError."""
        path = Path(path)
        fix = (f"Fix: train one with `fusiongym costmodel train --data DATA.pt --out {path.parent or '.'}`, "
               f"or pass the path of a model that command wrote")
        if not path.is_file():
            raise CostModelError(f"no cost model at {path}. {fix}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                meta = json.loads(str(archive["__meta__"]))
                weights = {name: archive[name] for name in archive.files if name != "__meta__"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise CostModelError(f"{path} is corrupt or not a fusiongym cost model "
                                 f"({type(exc).__name__}: {exc}). {fix}") from exc
        if meta.get("format") != MODEL_FORMAT:
            raise CostModelError(f"{path} has format {meta.get('format')!r}, this fusiongym reads "
                                 f"{MODEL_FORMAT}. {fix}")
        if (tuple(meta.get("node_features", ())) != NODE_FEATURES
                or tuple(meta.get("edge_features", ())) != EDGE_FEATURES
                or tuple(meta.get("group_features", ())) != (*GROUP_FEATURES, PRIOR_FEATURE)):
            raise CostModelError(f"{path} was trained on another feature schema than this fusiongym computes. {fix}")
        return CostModel(weights, meta)


def _check_shapes(weights: dict[str, np.ndarray], num_ops: int, num_schedules: int) -> None:
    """Every weight present with the shape the header's vocabularies imply."""
    missing = sorted(set(WEIGHT_SHAPES) - set(weights))
    if missing:
        raise CostModelError(f"cost model lacks weights {missing}; the file is damaged. Fix: retrain it "
                             f"(fusiongym costmodel train)")
    hidden, head = weights["b_in"].shape[0], weights["b_head"].shape[0]
    sizes = {"V": num_ops, "H": hidden, "F": len(NODE_FEATURES), "Fe": len(EDGE_FEATURES), "2H": 2 * hidden,
             "D": head,
             "H+K+1": hidden + len(GROUP_FEATURES) + 1, "S": num_schedules}
    for name, dims in WEIGHT_SHAPES.items():
        expected = tuple(sizes[d] for d in dims)
        if weights[name].shape != expected:
            raise CostModelError(f"cost model weight {name} has shape {weights[name].shape}, expected "
                                 f"{expected}; the file is damaged. Fix: retrain it (fusiongym costmodel train)")
