"""The ``learned`` latency backend: a trained cost model in place of compiling and timing.

``get_backend("learned", model=PATH)`` (or ``gym.make("FusionEnv-v0", backend="learned")``)
answers like a real backend trained from it would, in microseconds: ``latency`` prices
all groups of a plan in one batched numpy pass, ``group_latency`` (what an env step asks
after a merge) runs the network on the group's own nodes. Deterministic.
The model comes from ``model=`` (a path or a ``CostModel``), else ``$FUSIONGYM_COSTMODEL``,
else ``~/.cache/fusiongym/costmodel/model.npz``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from fusiongym.graphs import ComputeGraph

from ..backend import GroupLatency, LatencyBackend, LatencyReport
from ..plan import Plan, require_legal
from .model import CostModel
from .records import measuring_device

ENV_VAR = "FUSIONGYM_COSTMODEL"
DEFAULT_PATH = Path("~/.cache/fusiongym/costmodel/model.npz")


def default_model_path() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH).expanduser()


class LearnedBackend(LatencyBackend):
    """Latency predicted by a ``CostModel``; the schedule menu is the one it was trained on.

    ``device``: accepted for the env's ``device=`` argument; the model's own device (the
    machine its measurements came from, ``source["measured_on"]``) is what ``self.device``
    reports, and ``device`` only for a model trained on data that does not name it.
    ``max_group_size``: larger groups are refused, like the analytical backend's limit.
    """

    name = "learned"
    deterministic = True

    def __init__(self, model: CostModel | str | os.PathLike | None = None, device: str = "cpu",
                 max_group_size: int = 64) -> None:
        super().__init__()
        self.model = model if isinstance(model, CostModel) else CostModel.load(model or default_model_path())
        self.schedules = self.model.schedules
        self.device = measuring_device(self.model.meta.get("source", {})) or device
        self.max_group_size = max_group_size

    def version(self) -> str:
        return f"learned-{self.model.meta.get('data_hash', 'unknown')}"

    def describe(self) -> dict:
        meta = self.model.meta
        return {**super().describe(), "max_group_size": self.max_group_size,
                "model": {k: meta.get(k) for k in ("data_hash", "train_config", "versions", "source")}}

    def group_constraint(self, graph: ComputeGraph, nodes: Sequence[int]) -> str | None:
        if len(nodes) > self.max_group_size:
            return f"group of {len(nodes)} nodes exceeds max_group_size={self.max_group_size}"
        return None

    def group_latency(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> GroupLatency:
        return GroupLatency(math.exp(self.model.predict_group_log_us(graph, nodes, schedule)), "estimated")

    def latency(self, graph: ComputeGraph, plan: Plan, check: bool = True) -> LatencyReport:
        """All groups of ``plan`` in one batched prediction."""
        if check:
            require_legal(graph, plan, self)
        group_us = self.model.predict_groups_us(graph, plan.group_of(graph.num_nodes),
                                                self.model.schedule_ids(plan.schedules))
        count = plan.num_groups
        return LatencyReport(total_us=float(group_us.sum()), group_us=group_us.tolist(),
                             origins=["estimated"] * count, spreads=[0.0] * count,
                             backend=self.name, device=self.device)
