"""The PyG dataset of measured groups, split by model so test models are never trained on.

One ``torch_geometric.data.Data`` per measured (group, schedule): node features ``x``
[n, 16], op ids ``op`` [n] (in the vocabulary of the *training* split: an op only a test
model has becomes ``<other>``), internal edges ``edge_index`` [2, e] and their features
``edge_attr`` [e, 2], group features ``group`` [1, 15], ``schedule`` [1], ``prior`` [1] =
ln(analytical µs) (an input of both models, the GNN's baseline), target ``y`` [1] = ln(measured
µs), and for the comparison ``analytical_us`` [1] and LightGBM's own inputs: ``dominant_op`` [1]
(a categorical), ``conv`` [1, 5] (convolution geometry) and ``vector`` [1, 2] (how much of the
group's unscheduled kernels LLVM vectorizes for this host's CPU, ``vector_share``; NaN, LightGBM's
missing value, for groups another device timed). The analytical profile used is recorded in
``source`` (a model trained on the dataset predicts with that same profile), and so are the
machine and backend that measured
the labels (``measured_on``: one per dataset, ``records.load_measured_set``). Plans (lists of sample indices
per graph) travel along for the plan-ranking metrics.

Saved as plain tensors, lists and strings (``torch.load(weights_only=True)`` reads it):
no pickled classes, so a file from another version fails with a message, not a crash.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch_geometric.data import Data
from tqdm import tqdm

from ..devices import CPU_SCHEDULES, GPU_SCHEDULES, DeviceProfile, get_profile
from ..fingerprint import cpu_fingerprint
from ..store import atomic_output
from ..vector_share import vector_share_setup, vector_shares
from .features import (GROUP_VECTOR_FEATURES, OTHER_OP, GraphTensors, GroupExample, dominant_op, group_conv_geometry,
                       group_example, group_vector_share)
from .prior import AnalyticalPrior
from .records import CostModelError, MeasuredSet

DATASET_FORMAT = "fusiongym.CostModelDataset/5"  # /5: vector (LLVM's vector share); /4: conv; /3: edge_attr
SPLITS = ("train", "val", "test")


@dataclass
class CostDataset:
    """Samples as PyG ``Data``, the split of each, the vocabularies and the plans."""

    samples: list[Data]
    split: list[str]                                  # [len(samples)] "train" | "val" | "test"
    op_vocab: list[str]                               # id -> op name; 0 is "<other>"
    schedules: list[str]                              # id -> schedule name
    plans: list[dict] = field(default_factory=list)   # {"graph_hash", "model", "method", "samples": [...]}
    source: dict = field(default_factory=dict)        # measured_on (device, backend), models per split, hash

    def indices(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.split) if s == split]

    def subset(self, split: str) -> list[Data]:
        return [self.samples[i] for i in self.indices(split)]

    def plans_of(self, split: str) -> list[list[int]]:
        """The plans whose groups all lie in ``split``, as indices into ``subset(split)``."""
        return self.plans_within(self.indices(split))

    def plans_within(self, samples: Sequence[int]) -> list[list[int]]:
        """The plans whose groups are all among ``samples``, as positions in ``samples``."""
        position = {index: k for k, index in enumerate(samples)}
        return [[position[i] for i in plan["samples"]] for plan in self.plans
                if all(i in position for i in plan["samples"])]

    @property
    def content_hash(self) -> str:
        """Digest of the measurements and their split: recorded in every model trained on them."""
        digest = hashlib.sha256()
        for data, split in zip(self.samples, self.split):
            digest.update(f"{data.graph_hash}:{data.nodes.tolist()}:{int(data.schedule)}:"
                          f"{float(data.y):.6f}:{split};".encode())
        return digest.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (temp file, then rename)."""
        payload = {"format": DATASET_FORMAT, "samples": [_to_dict(d) for d in self.samples],
                   "split": self.split, "op_vocab": self.op_vocab, "schedules": self.schedules,
                   "plans": self.plans, "source": {**self.source, "content_hash": self.content_hash}}
        with atomic_output(Path(path)) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @staticmethod
    def load(path: str | os.PathLike) -> "CostDataset":
        path = Path(path)
        if not path.exists():
            raise CostModelError(f"no cost-model dataset at {path}. Fix: `fusiongym dataset export --out {path}`")
        try:
            payload = torch.load(path, weights_only=True)
            if payload.get("format") != DATASET_FORMAT:
                raise ValueError(f"format {payload.get('format')!r}, expected {DATASET_FORMAT}")
            samples = [Data(**d) for d in payload["samples"]]
        except Exception as exc:  # noqa: BLE001 (torch raises many kinds for a damaged file)
            raise CostModelError(f"{path} is not a readable fusiongym cost-model dataset ({exc}). "
                                 f"Fix: re-create it with `fusiongym dataset export --out {path}`") from exc
        return CostDataset(samples, payload["split"], payload["op_vocab"], payload["schedules"],
                           payload["plans"], payload["source"])


def build_dataset(measured: MeasuredSet, test_models: Sequence[str] = (), val_models: Sequence[str] = (),
                  seed: int = 0, group_holdout: float = 0.0, profile: DeviceProfile | None = None,
                  test_workloads: Sequence[str] = ()) -> CostDataset:
    """Features of every measured group, split by model.

    ``test_models``/``val_models`` name the held-out models; unnamed splits get one model
    each, drawn with ``seed`` from those left (at least one model stays for training).
    ``test_workloads`` also holds out the graphs of those workloads (``llama_long/test``), each
    as a model of its own (``workload_models``): unseen shapes of an architecture that trains.
    ``group_holdout`` > 0 splits by group instead: that share of all groups, drawn with
    ``seed``, is the test split (models then appear on both sides; no val split).
    ``profile``: the analytical prior's device profile (default: this machine's ``cpu`` one,
    calibrated if it has been).
    """
    if not measured.samples:
        raise CostModelError("the measurements hold no group. Fix: measure some with "
                             "`fusiongym profile --plans N` first")
    tensors = {h: GraphTensors.of(g) for h, g in measured.graphs.items()}
    examples = [group_example(tensors[s.graph_hash], s.nodes) for s in measured.samples]
    model_of = workload_models(measured, test_workloads)
    models = sorted(set(model_of.values()))
    if group_holdout > 0:
        held_out = np.random.default_rng(seed).random(len(measured.samples)) < group_holdout
        splits = ["test" if h else "train" for h in held_out]
        split_of = {m: "train" for m in models}
    else:
        held_out_workloads = sorted({m for h, m in model_of.items() if m != measured.model_of[h]})
        split_of = split_models(models, [*test_models, *held_out_workloads], val_models, seed)
        splits = [split_of[model_of[s.graph_hash]] for s in measured.samples]
    op_vocab = [OTHER_OP] + sorted({op for e, sp in zip(examples, splits) if sp == "train" for op in e.op_names})
    op_id = {op: i for i, op in enumerate(op_vocab)}
    seen = {s.schedule for s in measured.samples}
    schedules = [s for s in dict.fromkeys(CPU_SCHEDULES + GPU_SCHEDULES) if s in seen] + sorted(
        seen - set(CPU_SCHEDULES + GPU_SCHEDULES))
    schedule_id = {s: i for i, s in enumerate(schedules)}
    prior = AnalyticalPrior(profile or get_profile("cpu"), schedules)
    shares = node_vector_shares(measured)
    samples = []
    for index, (sample, example) in enumerate(zip(measured.samples, examples)):
        analytical_us = prior.group_us(measured.graphs[sample.graph_hash], sample.nodes, sample.schedule)
        prior_log_us = math.log(analytical_us)
        dominant = dominant_op(tensors[sample.graph_hash], sample.nodes)
        conv = group_conv_geometry(measured.graphs[sample.graph_hash], sample.nodes)
        vector = (np.full(len(GROUP_VECTOR_FEATURES), np.nan, dtype=np.float32) if shares is None else
                  group_vector_share(tensors[sample.graph_hash], sample.nodes, shares[sample.graph_hash]))
        data = example_data(example, op_id, schedule_id[sample.schedule], prior_log_us,
                            float(np.log(sample.measured_us)))
        data.update({"analytical_us": torch.tensor([analytical_us], dtype=torch.float64),
                     "dominant_op": torch.tensor([op_id.get(dominant, 0)]), "conv": torch.from_numpy(conv)[None],
                     "vector": torch.from_numpy(vector)[None],
                     "nodes": torch.tensor(sample.nodes),
                     "sample_id": torch.tensor([index]), "graph_hash": sample.graph_hash,
                     "model": model_of[sample.graph_hash]})
        samples.append(data)
    plans = [{"graph_hash": p.graph_hash, "model": model_of[p.graph_hash], "method": p.method,
              "samples": list(p.sample_indices)} for p in measured.plans]
    source = {"models": {sp: sorted(m for m, s in split_of.items() if s == sp) for sp in SPLITS},
              "graphs": len(measured.graphs), "seed": seed, "group_holdout": group_holdout,
              "measured_on": asdict(measured.measured_on) if measured.measured_on else None,
              "analytical_profile": prior.profile.to_dict(),
              "vector_share": vector_share_setup() if shares is not None else None,
              "search_profiles": sorted({p.searched_on for p in measured.plans if p.searched_on})}
    return CostDataset(samples, splits, op_vocab, schedules, plans, source)


def node_vector_shares(measured: MeasuredSet) -> dict[str, dict[int, float]] | None:
    """graph hash -> {node: vector share} of every node in a measured group (a compile each;
    equal nodes of all graphs once), or None when another device (another CPU, a GPU) timed the
    groups: the shares say what LLVM builds for this host's CPU, which is not what ran there."""
    if timed_elsewhere(measured):
        return None
    nodes_of: dict[str, set[int]] = {h: set() for h in measured.graphs}
    for sample in measured.samples:
        nodes_of[sample.graph_hash].update(sample.nodes)
    known: dict[str, float] = {}
    return {h: vector_shares(measured.graphs[h], sorted(nodes), known)
            for h, nodes in tqdm(nodes_of.items(), desc="vector shares", unit="graph", dynamic_ncols=True)}


def timed_elsewhere(measured: MeasuredSet) -> bool:
    """Whether a device other than this host's CPU timed the groups (unknown counts as here)."""
    return measured.measured_on is not None and measured.measured_on.device != cpu_fingerprint()


def workload_models(measured: MeasuredSet, test_workloads: Sequence[str]) -> dict[str, str]:
    """graph hash -> the model it is split by: its own, or ``"<model> @ <workload>"`` for a graph
    of a workload in ``test_workloads``, so that graph is held out while the model's other
    workloads train."""
    logged = set(measured.workload_of.values())
    unknown = sorted(set(test_workloads) - logged)
    if unknown:
        raise CostModelError(f"test workloads {unknown} are not in the profile log, which holds "
                             f"{sorted(logged) or 'no workload names'}. Fix: name logged workloads, or profile "
                             f"them with `fusiongym profile --suite S --plans N`")
    return {graph: f"{model} @ {measured.workload_of[graph]}" if measured.workload_of.get(graph) in test_workloads
            else model for graph, model in measured.model_of.items()}


def example_data(example: GroupExample, op_id: dict[str, int], schedule_id: int, prior_log_us: float,
                 log_us: float) -> Data:
    """The model input of one group (``GroupGNN`` reads x, op, edge_index, edge_attr, group, schedule, prior;
    ``prior`` and ``y`` are ln analytical and ln measured µs)."""
    return Data(x=torch.from_numpy(example.node), op=torch.tensor([op_id.get(o, 0) for o in example.op_names]),
                edge_index=torch.from_numpy(example.edge_index), edge_attr=torch.from_numpy(example.edge_attr),
                group=torch.from_numpy(example.group)[None],
                schedule=torch.tensor([schedule_id]), prior=torch.tensor([prior_log_us], dtype=torch.float64),
                y=torch.tensor([log_us]), graph_hash="")


def split_models(models: Sequence[str], test_models: Sequence[str], val_models: Sequence[str],
                 seed: int) -> dict[str, str]:
    """model -> split. Named models go where named; val and test get one drawn model each if unnamed."""
    models = sorted(models)
    unknown = sorted((set(test_models) | set(val_models)) - set(models))
    if unknown:
        raise CostModelError(f"models {unknown} have no measurements (measured: {models}). Fix: name "
                             f"measured models, or profile those first")
    split = {m: "train" for m in models}
    split.update({m: "val" for m in val_models})
    split.update({m: "test" for m in test_models})
    rng = np.random.default_rng(seed)
    for name, given in (("test", test_models), ("val", val_models)):
        free = [m for m in models if split[m] == "train"]
        if not given and len(free) > 1:
            split[free[int(rng.integers(len(free)))]] = name
    if "train" not in split.values():
        raise CostModelError(f"every measured model ({models}) is held out; nothing is left to train on. "
                             f"Fix: hold out fewer models or profile more")
    return split


def _to_dict(data: Data) -> dict:
    return {key: data[key] for key in data.keys()}
