"""Bandit feedback: a cost model that keeps learning from the measurements an env makes.

An environment running on a real backend pays a compile and a timing for every new group
it tries. ``OnlineBackend`` wraps that backend: it answers with the real latency, and hands
each group it has not seen before to an ``OnlineLearner``, which first predicts it (the
error of that prediction, made before learning from it, is the honest error curve), then
puts it in a small replay buffer and, every ``update_every`` new groups, fine-tunes the
model on the buffer for a few steps. The env's reward is a whole plan's latency, so the
backend also hands over each plan it measures (``observe_plan``): with ``plan_weight`` > 0 the
fine-tunes also fit the order of the plans measured on each graph, the bandit's arms ranked
by their rewards (with ``plan_margin``, only those measured more than that share apart).
``learner.model`` is then a fresh numpy ``CostModel`` ready for a ``learned`` backend.
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

from ..backend import GroupLatency, LatencyBackend, LatencyReport
from ..plan import Plan
from ..timing import torch_threads
from .dataset import example_data
from .features import group_example
from .gnn import GroupGNN, PlanRankingLoss, TrainConfig, build_model, check_threads, plan_ranking_loss
from .model import CostModel
from .records import GroupSample


@dataclass(frozen=True)
class OnlineConfig:
    buffer_size: int = 256    # most recent groups kept for fine-tuning
    update_every: int = 8     # new groups and plans between fine-tunes
    steps: int = 40           # Adam steps per fine-tune, full batch over the buffer (+ replay)
    lr: float = 2e-3
    head_only: bool = True    # tune the pooling head only: a few dozen groups cannot retrain the encoder
    # weight of the squared distance of the tuned weights from the trained ones (L2-SP; the output
    # bias, which scales all plans of a graph alike, stays free). 0 fits new groups hardest, and can
    # reorder the plans a model ranks: fed a test graph's first 3-16 plans, the `plans` model's τ on
    # the others fell from 0.59 to 0.43 (mean of 6) at 0 and stayed at 0.57 at 10 (chosen on val,
    # of 0, 1, 10), where the error on new groups falls little (`costmodel online --anchor`)
    anchor: float = 0.0
    # weight of the plans' ranking term (the `plans` loss, ListMLE over the plans measured on each
    # graph): the order the env is rewarded by. 0 learns from groups alone; 5 with anchor 10 (chosen
    # on val, of 0, 1, 5) lifted the `plans` model's τ on the other plans to 0.68 (`--plan-weight`)
    plan_weight: float = 0.0
    # the ranking term over only the plans fed more than this share apart, pair by pair
    # (TrainConfig.plan_margin); None: ListMLE over each graph's whole order of plans fed. 0.05 with
    # anchor 10, plan weight 5 ranked test's other plans at 0.66 against 0.58 (one seed; README)
    plan_margin: float | None = None
    plan_buffer_size: int = 64   # most recent distinct plans kept for the ranking term
    seed: int = 0
    threads: int = 1    # torch's threads while fine-tuning: a seed names one update only with them (TrainConfig)

    def __post_init__(self) -> None:
        check_threads(self.threads, "OnlineConfig")
        for name in ("anchor", "plan_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"OnlineConfig.{name} must be 0 or more (0: off), got {getattr(self, name)}")
        if self.plan_margin is not None and not self.plan_margin >= 0:
            raise ValueError(f"OnlineConfig.plan_margin is a share >= 0 of a plan's latency (None: ListMLE), "
                             f"got {self.plan_margin}")


@dataclass(frozen=True)
class ErrorPoint:
    """The prediction error on one new group, made before the learner saw its latency."""

    seen: int              # groups seen before this one
    updates: int           # fine-tunes done before this one
    abs_log_error: float   # |ln predicted µs - ln measured µs|


@dataclass(frozen=True)
class MeasuredPlan:
    """A plan the learner was handed: ``key`` (graph hash, its groups and schedules) and one
    sample per group, its measured µs the target."""

    key: tuple
    samples: list[Data]


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
        self._plans: deque[MeasuredPlan] = deque(maxlen=self.config.plan_buffer_size)
        # (graph hash, nodes, schedule) of every group observed -> (its µs, its sample), so a plan handed
        # over after its groups were observed (OnlineBackend.latency) does not build their features again
        self._observed: dict[tuple[str, tuple[int, ...], str], tuple[float, Data]] = {}
        self._pending = 0
        self._op_id = {op: i for i, op in enumerate(self.model.op_vocab)}

    def observe(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str, measured_us: float) -> float:
        """Learn from one measured group; returns the error of the prediction made before."""
        return self._learn_group(graph, nodes, schedule, measured_us, self._sample(graph, nodes, schedule, measured_us))

    def _learn_group(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str, measured_us: float,
                     sample: Data) -> float:
        error = abs(self.model.predict_group_log_us(graph, nodes, schedule) - math.log(measured_us))
        self.curve.append(ErrorPoint(len(self.curve), self.updates, error))
        self._observed[(graph.hash, tuple(nodes), schedule)] = (measured_us, sample)
        self._buffer.append(sample)
        self._count_pending()
        return error

    def has_seen(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> bool:
        """Whether this group was observed before (a backend asks again for groups it has measured)."""
        return (graph.hash, tuple(nodes), schedule) in self._observed

    def observe_plan(self, graph: ComputeGraph, groups: Sequence[Sequence[int]], schedules: Sequence[str],
                     group_us: Sequence[float]) -> None:
        """Learn from one measured plan of ``graph`` (its groups, their schedules and µs): its
        groups not seen before are observed, and the plan is remembered for the ranking term
        (a plan already remembered is not counted again)."""
        key = (graph.hash, tuple((tuple(nodes), schedule) for nodes, schedule in zip(groups, schedules)))
        if any(plan.key == key for plan in self._plans):
            return   # its groups were observed when it was first handed over
        samples = []
        for nodes, schedule, us in zip(groups, schedules, group_us):
            observed_us, sample = self._observed.get((graph.hash, tuple(nodes), schedule), (None, None))
            if observed_us != us:   # not observed yet, or at another timing (the plan's counts)
                sample = self._sample(graph, nodes, schedule, us)
            if observed_us is None:
                self._learn_group(graph, nodes, schedule, us, sample)
            samples.append(sample)
        self._plans.append(MeasuredPlan(key, samples))
        self._count_pending()

    def _sample(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str, measured_us: float) -> Data:
        example = group_example(self.model.graph_tensors(graph), nodes)
        prior_log_us = self.model.prior.group_log_us(graph, nodes, schedule)
        return example_data(example, self._op_id, int(self.model.schedule_ids([schedule])[0]), prior_log_us,
                            math.log(measured_us))

    def _count_pending(self) -> None:
        self._pending += 1
        if self._pending >= self.config.update_every:
            self.update()

    def update(self) -> None:
        """Fine-tune on the buffer plus as many replayed training groups; rebuild the numpy model."""
        replayed = [self.replay[i] for i in self._rng.choice(len(self.replay), size=min(len(self.replay),
                                                                                       len(self._buffer)),
                                                             replace=False)] if len(self.replay) else []
        batch = Batch.from_data_list([*self._buffer, *replayed])
        net = self._net
        target = net.target(batch)
        ranked = self._plan_ranking()
        net.train()
        with torch_threads(self.config.threads):
            for _ in range(self.config.steps):
                loss = torch.mean((net(batch) - target) ** 2) + self.config.anchor * self.distance_from_trained()
                if ranked is not None:
                    plan_batch, ranking = ranked
                    loss = loss + self.config.plan_weight * ranking(net(plan_batch), None, self._rng)
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

    def flush(self) -> None:
        """Fine-tune on what came since the last update, if anything did: before the model is
        handed on, so the last groups and plans observed count."""
        if self._pending:
            self.update()

    def _plan_ranking(self) -> tuple[Batch, PlanRankingLoss] | None:
        """The remembered plans' groups as one batch and the ranking loss over each graph's plans;
        None when the term is off, or no graph has two plans yet (two more than the margin apart)."""
        if not self.config.plan_weight:
            return None
        plans_of_graph: dict[str, list[MeasuredPlan]] = {}
        for plan in self._plans:
            plans_of_graph.setdefault(plan.key[0], []).append(plan)
        ranked = [plan for plans in plans_of_graph.values() if len(plans) >= 2 for plan in plans]
        if not ranked:
            return None
        samples = [sample for plan in ranked for sample in plan.samples]
        starts = np.cumsum([0, *(len(plan.samples) for plan in ranked)])
        positions = [list(range(start, start + len(plan.samples))) for start, plan in zip(starts, ranked)]
        graph_ids = np.unique([plan.key[0] for plan in ranked for _ in plan.samples], return_inverse=True)[1]
        batch = Batch.from_data_list(samples)
        net = self._net
        temperature = self.model.meta.get("train_config", {}).get("plan_temperature", TrainConfig.plan_temperature)
        ranking = plan_ranking_loss(positions, graph_ids, batch.y, net.y_mean + batch.prior.float(), net.y_std,
                                    temperature, self.config.plan_margin)
        return None if ranking.is_empty else (batch, ranking)

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
        if not self.learner.has_seen(graph, nodes, schedule):
            self.learner.observe(graph, nodes, schedule, result.us)
        return result

    def latency(self, graph: ComputeGraph, plan: Plan, check: bool = True) -> LatencyReport:
        """The real latency; each new group trains the learner as it is measured, then the whole
        plan joins the ones the learner ranks (``OnlineLearner.observe_plan``)."""
        report = super().latency(graph, plan, check)
        self.learner.observe_plan(graph, plan.groups, plan.schedules, report.group_us)
        return report

    def remeasure_group(self, graph: ComputeGraph, nodes: Sequence[int], schedule: str) -> GroupLatency:
        """The real backend's new timing; validation teaches the learner nothing."""
        return self.real.remeasure_group(graph, nodes, schedule)
