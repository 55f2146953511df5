"""Bandit feedback: a cost model that keeps learning from the measurements an env makes.

An environment running on a real backend pays a compile and a timing for every new group
it tries. ``OnlineBackend`` wraps that backend: it answers with the real latency, and hands
each group it has not seen before to an ``OnlineLearner``, which first predicts it (the
error of that prediction, made before learning from it, is the honest error curve), then
puts it in a small replay buffer and, every ``update_every`` new groups, fine-tunes the
model on the buffer for a few steps. ``learner.model`` is then a fresh numpy ``CostModel``
ready for a ``learned`` backend.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from fusiongym.graphs import ComputeGraph

from ..backend import GroupLatency, LatencyBackend
from .dataset import example_data
from .features import group_example
from .gnn import GroupGNN, build_model
from .model import CostModel
from .records import GroupSample


@dataclass(frozen=True)
class OnlineConfig:
    buffer_size: int = 256    # most recent groups kept for fine-tuning
    update_every: int = 8     # new groups between fine-tunes
    steps: int = 40           # Adam steps per fine-tune, full batch over the buffer (+ replay)
    lr: float = 2e-3
    head_only: bool = True    # tune the pooling head only: a few dozen groups cannot retrain the encoder
    # weight of the squared distance of the tuned weights from the trained ones (L2-SP; the output
    # bias, which scales all plans of a graph alike, stays free). 0 fits new groups hardest, and can
    # reorder the plans a model ranks: fed a test graph's first 3-16 plans, the `plans` model's τ on
    # the others fell from 0.59 to 0.30 (mean of 6) at 0 and stayed at 0.57 at 10 (chosen on val,
    # of 0, 1, 10), where the error on new groups falls little (`costmodel online --anchor`)
    anchor: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.anchor >= 0:
            raise ValueError(f"OnlineConfig.anchor must be 0 or more (0: no pull toward the trained weights), "
                             f"got {self.anchor}")


@dataclass(frozen=True)
class ErrorPoint:
    """The prediction error on one new group, made before the learner saw its latency."""

    seen: int              # groups seen before this one
    updates: int           # fine-tunes done before this one
    abs_log_error: float   # |ln predicted µs - ln measured µs|


@dataclass
class OnlineLearner:
    """Predict, record the error, remember, fine-tune now and then."""

    model: CostModel
    config: OnlineConfig = OnlineConfig()
    replay: Sequence[Data] = ()    # groups the model was trained on, mixed into every fine-tune
    curve: list[ErrorPoint] = field(default_factory=list)
    updates: int = 0

    def __post_init__(self) -> None:
        torch.manual_seed(self.config.seed)
        self._rng = np.random.default_rng(self.config.seed)
        self._net = GroupGNN.from_model(self.model)
        tuned = ([*self._net.head.parameters(), *self._net.schedule_head.parameters(), *self._net.out.parameters()]
                 if self.config.head_only else list(self._net.parameters()))
        self._optimizer = torch.optim.Adam(tuned, lr=self.config.lr)
        # every tuned weight but the output bias: a shift of all groups' ln µs scales all plans of a
        # graph alike, so it fixes the scale of a new model's predictions without reordering its plans
        self._anchored = [parameter for parameter in tuned if parameter is not self._net.out.bias]
        self._trained = [parameter.detach().clone() for parameter in self._anchored]
        self._buffer: deque[Data] = deque(maxlen=self.config.buffer_size)
        self._pending = 0
        self._op_id = {op: i for i, op in enumerate(self.model.op_vocab)}

    def observe(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str, measured_us: float) -> float:
        """Learn from one measured group; returns the error of the prediction made before."""
        log_us = math.log(measured_us)
        error = abs(self.model.predict_group_log_us(graph, nodes, schedule) - log_us)
        self.curve.append(ErrorPoint(len(self.curve), self.updates, error))
        example = group_example(self.model.graph_tensors(graph), nodes)
        prior_log_us = self.model.prior.group_log_us(graph, nodes, schedule)
        self._buffer.append(example_data(example, self._op_id, int(self.model.schedule_ids([schedule])[0]),
                                         prior_log_us, log_us))
        self._pending += 1
        if self._pending >= self.config.update_every:
            self.update()
        return error

    def update(self) -> None:
        """Fine-tune on the buffer plus as many replayed training groups; rebuild the numpy model."""
        replayed = [self.replay[i] for i in self._rng.choice(len(self.replay), size=min(len(self.replay),
                                                                                       len(self._buffer)),
                                                             replace=False)] if len(self.replay) else []
        batch = Batch.from_data_list([*self._buffer, *replayed])
        net = self._net
        target = net.target(batch)
        net.train()
        for _ in range(self.config.steps):
            loss = torch.mean((net(batch) - target) ** 2) + self.config.anchor * self.distance_from_trained()
            self._optimizer.zero_grad()
            loss.backward()
            self._optimizer.step()
        self.updates += 1
        self._pending = 0
        meta = {k: v for k, v in self.model.meta.items()
                if k not in ("format", "node_features", "group_features", "op_vocab", "schedules", "versions",
                             "analytical_profile")}
        self.model = build_model(net, self.model.op_vocab, self.model.schedules, self.model.meta["analytical_profile"],
                                 {**meta, "online_updates": self.updates, "online_groups": len(self.curve)})

    def distance_from_trained(self) -> torch.Tensor:
        """Squared L2 distance of the anchored weights from the weights the model was trained to."""
        return sum(((now - trained) ** 2).sum() for now, trained in zip(self._anchored, self._trained))

    def error_curve(self, window: int = 16) -> np.ndarray:
        """[len(curve)] moving mean of the absolute ln error over the last ``window`` groups."""
        return moving_mean(np.array([p.abs_log_error for p in self.curve]), window)


def moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """[T] mean of each value and the ``window - 1`` before it (fewer at the start)."""
    if not len(values):
        return values
    sums = np.cumsum(values)
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    shifted = np.concatenate([np.zeros(window), sums])[:len(values)]
    return (sums - shifted) / counts


@dataclass(frozen=True)
class StreamErrors:
    """|ln predicted µs - ln measured µs| per streamed group, in stream order."""

    online: np.ndarray   # [T] the learning model, each prediction made before it saw that group
    frozen: np.ndarray   # [T] the model as it was before the stream


def stream_groups(learner: OnlineLearner, stream: Sequence[GroupSample],
                  graphs: Mapping[str, ComputeGraph]) -> StreamErrors:
    """Feed measured groups to ``learner`` one by one, as an env on a real backend meets them,
    and score the same groups with the model it started from."""
    frozen = learner.model
    frozen_errors = [abs(frozen.predict_group_log_us(graphs[s.graph_hash], s.nodes, s.schedule)
                         - math.log(s.measured_us)) for s in stream]
    online_errors = [learner.observe(graphs[s.graph_hash], s.nodes, s.schedule, s.measured_us) for s in stream]
    return StreamErrors(np.array(online_errors), np.array(frozen_errors))


class OnlineBackend(LatencyBackend):
    """A real backend whose every new group also trains ``learner``; latencies are the real ones."""

    name = "online"

    def __init__(self, real: LatencyBackend, learner: OnlineLearner) -> None:
        super().__init__()
        unknown = sorted(set(real.schedules) - set(learner.model.schedules))
        if unknown:
            raise ValueError(f"backend {real.name} offers schedules {unknown} the cost model was not trained "
                             f"on ({list(learner.model.schedules)})")
        self.real, self.learner = real, learner
        self.schedules, self.device = real.schedules, real.device
        self.deterministic, self.platform_dependent = real.deterministic, real.platform_dependent

    def version(self) -> str:
        return f"online+{self.real.name}-{self.real.version()}"

    def describe(self) -> dict:
        return {**super().describe(), "real": self.real.describe(), "online_updates": self.learner.updates,
                "online_groups": len(self.learner.curve)}

    def group_constraint(self, graph: ComputeGraph, nodes: Sequence[int]) -> str | None:
        return self.real.group_constraint(graph, nodes)

    def merge_constraint(self, graph: ComputeGraph, group_a: Sequence[int], group_b: Sequence[int]) -> str | None:
        return self.real.merge_constraint(graph, group_a, group_b)

    def group_latency(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> GroupLatency:
        result = self.real.group_latency(graph, nodes, schedule)
        self.learner.observe(graph, nodes, schedule, result.us)
        return result

    def remeasure_group(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> GroupLatency:
        """The real backend's new timing; validation teaches the learner nothing."""
        return self.real.remeasure_group(graph, nodes, schedule)
