"""The GNN regressor in torch (training) — the same network ``model.CostModel`` runs in numpy.

Trained full-batch (the datasets here are a few thousand groups) on the residual over the
analytical prior, ln measured µs - ln analytical µs, standardized: the roofline carries what
it knows to models never trained on, the network learns what it gets wrong.
``loss``: ``mse`` alone, or mse plus a ranking term over groups of the same graph —
``hinge`` (pairwise: the faster group must score lower by a margin) or ``listmle``
(listwise: likelihood of the measured order under a Plackett-Luce model) — or over whole
plans of the same graph, ``plans`` (ListMLE on each plan's predicted latency, the sum of
its groups' µs). The ranking term teaches order directly, which is what choosing a plan
needs; the mse term keeps the scale, which a backend reporting µs needs. Group order is a
proxy for plan order, which the largest groups of a plan decide; ``plans`` ranks what
is chosen.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter

from ..timing import torch_threads
from .features import EDGE_FEATURES, GROUP_FEATURES, NODE_FEATURES, PRIOR_FEATURE, PRIOR_INPUT_SCALE
from .model import MODEL_FORMAT, CostModel
from .prior import check_residual_scale

LOSSES = ("mse", "hinge", "listmle", "plans")


def check_threads(threads: int, owner: str) -> None:
    """``threads``: torch's intra-op threads while a model is fitted (``owner`` names the config)."""
    if not threads >= 1:
        raise ValueError(f"{owner}.threads is torch's thread count while fitting, 1 or more; got {threads}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train; recorded in the saved model."""

    hidden: int = 16
    head: int = 32
    epochs: int = 800
    lr: float = 3e-3
    weight_decay: float = 1e-2    # pulls the residual toward the prior: ranks unseen models' plans better
    loss: str = "mse"
    # True: messages also carry the edges' features. Off by default: in 5 of 6 paired runs of
    # `costmodel heldout` (8 architectures each) they lowered mean plan τ (by 0.02 on average).
    edge_features: bool = False
    rank_weight: float = 1.0
    margin: float = 0.1           # hinge margin, in standardized ln µs
    pairs: int = 4096             # hinge pairs per step
    list_size: int = 16           # ListMLE list length (groups of one graph)
    plan_temperature: float = 0.05  # plans loss: the ln µs between two plans' latencies worth one unit of score
    # plans loss: None fits each graph's whole plan order (ListMLE); a share M fits, pair by pair, only
    # the plans measured more than M apart. Near-ties swap places when timed on another day; 0.05
    # ranked val's and test's plans better than ListMLE on the smaller store, test's alone on the
    # nine architectures' (README).
    plan_margin: float | None = None
    eval_every: int = 20          # epochs between validation checks (best state kept)
    # The saved model predicts prior + residual_scale * the learned residual (its y_mean and
    # y_std scaled). Below 1 it trusts the roofline more on groups unlike the training ones:
    # 0.5 ranks unseen models' plans better on val and test and fits their groups worse (README).
    residual_scale: float = 1.0
    seed: int = 0
    # torch's intra-op threads while training. Float sums reorder with the thread count, and over
    # hundreds of epochs the order moves the model: on 2 cores, the default thread count gave another
    # seed-0 model than 1 thread did (test plan τ of 8 seeds 0.341 against 0.362). So a seed names one
    # model only together with a thread count.
    threads: int = 1

    def __post_init__(self) -> None:
        check_threads(self.threads, "TrainConfig")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        check_residual_scale(self.residual_scale)
        if not self.plan_temperature > 0:
            raise ValueError(f"plan_temperature must be > 0 (the ln µs between two plans worth one unit of their "
                             f"score), got {self.plan_temperature}. Fix: --plan-temperature 0.05 (the default)")
        if not self.rank_weight >= 0:
            raise ValueError(f"rank_weight must be >= 0 (the ranking term's weight beside mse), got "
                             f"{self.rank_weight}. Fix: --rank-weight 1 (the default)")
        if self.plan_margin is not None and (self.loss != "plans" or self.plan_margin < 0):
            raise ValueError(f"plan_margin (got {self.plan_margin}, loss {self.loss!r}) is a share >= 0 of a plan's "
                             f"latency, for the plans loss only. Fix: use --loss plans, or leave --plan-margin out")


@dataclass
class TrainResult:
    model: CostModel
    losses: list[float] = field(default_factory=list)       # training loss per epoch
    val_rmse: list[tuple[int, float]] = field(default_factory=list)  # (epoch, RMSE of ln µs)
    seconds: float = 0.0


class GroupGNN(nn.Module):
    """Node encoder, one message pass over internal edges (each message: the producer's state
    and, with ``edge_features``, the edge's features), mean pooling, MLP head on the pooled
    nodes, the group features and the analytical prior; outputs the standardized residual.

    Mean, not sum: a test model's fused groups are larger than most a training model has
    (64-node ResNet-50 kernels), and summed node states of such a group lie outside what the
    head was fitted on, while their mean does not; the group's size enters as ``log_nodes``."""

    def __init__(self, num_ops: int, num_schedules: int, hidden: int = 16, head: int = 32,
                 edge_features: bool = False) -> None:
        super().__init__()
        self.op_embedding = nn.Embedding(num_ops, hidden)
        self.node_in = nn.Linear(len(NODE_FEATURES), hidden)
        self.message = nn.Linear(2 * hidden, hidden)
        self.edge = nn.Linear(len(EDGE_FEATURES), hidden, bias=False)
        if not edge_features:
            nn.init.zeros_(self.edge.weight)
            self.edge.weight.requires_grad_(False)
        self.head = nn.Linear(hidden + len(GROUP_FEATURES) + 1, head)
        self.schedule_head = nn.Embedding(num_schedules, head)
        self.out = nn.Linear(head, 1)
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        for embedding in (self.op_embedding, self.schedule_head):
            nn.init.normal_(embedding.weight, std=0.1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """[B] standardized residual (ln µs - prior) of the B groups of ``batch``."""
        schedule = batch.schedule                                                          # [B]
        h0 = torch.relu(self.op_embedding(batch.op) + self.node_in(batch.x))              # [n, H]
        src, dst = batch.edge_index
        message = torch.zeros_like(h0).index_add_(0, dst, h0[src])                       # [n, H]
        edge_sum = torch.zeros(len(h0), len(EDGE_FEATURES)).index_add_(0, dst, batch.edge_attr)  # [n, Fe]
        h1 = h0 + torch.relu(self.message(torch.cat([h0, message], dim=1)) + self.edge(edge_sum))
        size = schedule.shape[0]
        pooled = torch.cat([scatter(h1, batch.batch, 0, dim_size=size, reduce="mean"), batch.group,
                            batch.prior[:, None].float() * PRIOR_INPUT_SCALE], dim=1)
        z = torch.relu(self.head(pooled) + self.schedule_head(schedule))                  # [B, D]
        return self.out(z).squeeze(-1)

    def log_us(self, batch: Batch) -> torch.Tensor:
        """[B] predicted ln µs: the prior plus the de-standardized residual."""
        return self(batch) * self.y_std + self.y_mean + batch.prior.float()

    def target(self, batch: Batch) -> torch.Tensor:
        """[B] what ``forward`` should output: the standardized measured residual."""
        return (batch.y - batch.prior.float() - self.y_mean) / self.y_std

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The weights under ``model.WEIGHT_SHAPES`` names (Linear weights transposed)."""
        def array(tensor: torch.Tensor) -> np.ndarray:
            return tensor.detach().cpu().numpy().astype(np.float32)
        return {"op_embedding": array(self.op_embedding.weight), "w_in": array(self.node_in.weight.T),
                "b_in": array(self.node_in.bias),
                "w_msg": array(self.message.weight.T), "b_msg": array(self.message.bias),
                "w_edge": array(self.edge.weight.T),
                "w_head": array(self.head.weight.T), "b_head": array(self.head.bias),
                "schedule_head": array(self.schedule_head.weight), "w_out": array(self.out.weight[0]),
                "b_out": array(self.out.bias[0]), "y_mean": array(self.y_mean), "y_std": array(self.y_std)}

    @staticmethod
    def from_model(model: CostModel) -> "GroupGNN":
        """A trainable copy of a numpy model (for online fine-tuning)."""
        w = {k: torch.from_numpy(v.copy()) for k, v in model.weights.items()}
        net = GroupGNN(len(model.op_vocab), len(model.schedules), w["b_in"].shape[0], w["b_head"].shape[0],
                       model.meta.get("train_config", {}).get("edge_features", True))
        with torch.no_grad():
            net.op_embedding.weight.copy_(w["op_embedding"])
            net.node_in.weight.copy_(w["w_in"].T)
            net.node_in.bias.copy_(w["b_in"])
            net.message.weight.copy_(w["w_msg"].T)
            net.message.bias.copy_(w["b_msg"])
            net.edge.weight.copy_(w["w_edge"].T)
            net.head.weight.copy_(w["w_head"].T)
            net.head.bias.copy_(w["b_head"])
            net.schedule_head.weight.copy_(w["schedule_head"])
            net.out.weight.copy_(w["w_out"][None])
            net.out.bias.fill_(float(w["b_out"]))
            net.y_mean.fill_(float(w["y_mean"]))
            net.y_std.fill_(float(w["y_std"]))
        return net


def build_model(net: GroupGNN, op_vocab: Sequence[str], schedules: Sequence[str], analytical_profile: dict,
                meta: dict) -> CostModel:
    """The numpy model of ``net`` with its header (schema, vocabularies, the prior's profile
    (``DeviceProfile.to_dict()``), provenance)."""
    header = {"format": MODEL_FORMAT, "node_features": list(NODE_FEATURES), "edge_features": list(EDGE_FEATURES),
              "group_features": [*GROUP_FEATURES, PRIOR_FEATURE], "op_vocab": list(op_vocab),
              "schedules": list(schedules), "analytical_profile": analytical_profile, "versions": _versions(),
              **meta}
    return CostModel(net.to_arrays(), header)


class RankingLoss:
    """Ranking term over groups of the same graph (``hinge`` or ``listmle``), sampled per step."""

    def __init__(self, graph_ids: np.ndarray, config: TrainConfig) -> None:
        self.config = config
        self.order = np.argsort(graph_ids, kind="stable")              # samples grouped by graph
        _, self.starts, self.counts = np.unique(graph_ids[self.order], return_index=True, return_counts=True)
        self.graph_of = np.repeat(np.arange(len(self.starts)), self.counts)[np.argsort(self.order)]

    def __call__(self, predicted: torch.Tensor, target: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.config.loss == "hinge":
            return self._hinge(predicted, target, rng)
        return self._listmle(predicted, target, rng)

    def _hinge(self, predicted: torch.Tensor, target: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        first = rng.integers(len(predicted), size=self.config.pairs)
        graph = self.graph_of[first]
        second = self.order[self.starts[graph] + rng.integers(self.counts[graph])]
        sign = torch.sign(target[first] - target[second])
        gap = (predicted[first] - predicted[second]) * sign
        return torch.relu(self.config.margin - gap)[sign != 0].mean() if bool((sign != 0).any()) else gap.sum() * 0

    def _listmle(self, predicted: torch.Tensor, target: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        lists = []
        for start, count in zip(self.starts, self.counts):
            if count >= 2:
                picked = self.order[start + rng.choice(count, size=min(count, self.config.list_size), replace=False)]
                lists.append(picked[np.argsort(target[picked].numpy())])   # fastest first
        losses = [listmle(-predicted[items]) for items in lists]
        return torch.stack(losses).mean() if losses else predicted.sum() * 0


class PlanRankingLoss:
    """ListMLE over the plans of each training graph, a plan's predicted latency being the
    sum of its groups' µs. ``plans``: sample indices of each plan's groups (into the batch);
    ``offset`` [B] and ``scale``: ln µs = standardized output * scale + offset (the network's
    fixed de-standardization plus each sample's prior)."""

    def __init__(self, plans: Sequence[Sequence[int]], graph_ids: np.ndarray, measured_log_us: torch.Tensor,
                 offset: torch.Tensor, scale: torch.Tensor, temperature: float) -> None:
        if not plans:
            raise ValueError("the plans loss needs the training graphs' measured plans (train_gnn(plans=...))")
        self.item_sample = torch.as_tensor(np.concatenate([np.asarray(p, dtype=np.int64) for p in plans]))  # [M]
        self.item_plan = torch.as_tensor(np.repeat(np.arange(len(plans)), [len(p) for p in plans]))        # [M]
        self.num_plans = len(plans)
        self.offset, self.scale, self.temperature = offset, scale, temperature
        measured = self._plan_log_us(measured_log_us.double()).numpy()                                   # [P]
        graph_of_plan = np.array([graph_ids[p[0]] for p in plans])
        self.lists = [torch.as_tensor(ids[np.argsort(measured[ids], kind="stable")])                     # fastest first
                      for ids in (np.flatnonzero(graph_of_plan == g) for g in np.unique(graph_of_plan))
                      if len(ids) >= 2]
        if not self.lists:
            raise ValueError("the plans loss needs two or more measured plans of one training graph; "
                             "the training split has none. Fix: profile with --plans 2 or more, or use "
                             "another --loss")

    @property
    def is_empty(self) -> bool:
        """Whether there is no plan order to fit: never for ListMLE, whose constructor refuses plans
        without two of one graph; PlanPairsLoss's may hold no pair past its margin."""
        return False

    def _plan_log_us(self, log_us: torch.Tensor) -> torch.Tensor:
        """[P] ln of each plan's summed group µs."""
        totals = torch.zeros(self.num_plans, dtype=log_us.dtype).index_add(0, self.item_plan,
                                                                            torch.exp(log_us[self.item_sample]))
        return torch.log(totals)

    def __call__(self, predicted: torch.Tensor, target: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        plan_log_us = self._plan_log_us(predicted * self.scale + self.offset)                           # [P]
        return torch.stack([listmle(-plan_log_us[ids] / self.temperature) for ids in self.lists]).mean()


class PlanPairsLoss(PlanRankingLoss):
    """The plans loss pair by pair: a logistic loss on each pair of a training graph's plans
    measured more than ``margin`` (a share) apart, softplus(-(ln slow - ln fast) / temperature)
    on their predicted latencies. Unlike ListMLE it leaves near-ties' order alone: it is the
    measurement's day more than the plans that sets it."""

    def __init__(self, plans: Sequence[Sequence[int]], graph_ids: np.ndarray, measured_log_us: torch.Tensor,
                 offset: torch.Tensor, scale: torch.Tensor, temperature: float, margin: float) -> None:
        super().__init__(plans, graph_ids, measured_log_us, offset, scale, temperature)
        measured = self._plan_log_us(measured_log_us.double())                                 # [P]
        pairs = torch.cat([torch.combinations(ids, 2) for ids in self.lists])                   # [Q, 2] fast, slow
        apart = measured[pairs[:, 1]] - measured[pairs[:, 0]] > math.log1p(margin)              # [Q]
        self.fast, self.slow = pairs[apart, 0], pairs[apart, 1]                                  # [Q'], [Q']

    @property
    def is_empty(self) -> bool:
        return not len(self.fast)

    def __call__(self, predicted: torch.Tensor, target: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        plan_log_us = self._plan_log_us(predicted * self.scale + self.offset)                   # [P]
        return nn.functional.softplus(-(plan_log_us[self.slow] - plan_log_us[self.fast]) / self.temperature).mean()


def plan_ranking_loss(plans: Sequence[Sequence[int]], graph_ids: np.ndarray, measured_log_us: torch.Tensor,
                      offset: torch.Tensor, scale: torch.Tensor, temperature: float,
                      margin: float | None) -> PlanRankingLoss:
    """ListMLE over each graph's whole plan order (``margin`` None), or pairs more than ``margin`` apart."""
    if margin is None:
        return PlanRankingLoss(plans, graph_ids, measured_log_us, offset, scale, temperature)
    return PlanPairsLoss(plans, graph_ids, measured_log_us, offset, scale, temperature, margin)


def listmle(scores: torch.Tensor) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of ``scores`` [L] (higher = faster) being in the
    order given (fastest first), averaged over positions."""
    tail_logsumexp = torch.logcumsumexp(scores.flip(0), 0).flip(0)   # [L] over items i..L
    return (tail_logsumexp - scores).mean()


def train_gnn(train: Sequence[Data], val: Sequence[Data], op_vocab: Sequence[str], schedules: Sequence[str],
              analytical_profile: dict, config: TrainConfig = TrainConfig(), meta: dict | None = None,
              plans: Sequence[Sequence[int]] = ()) -> TrainResult:
    """Train on ``train``, keep the state with the best validation RMSE (last state without ``val``).
    ``analytical_profile``: the profile the samples' ``prior`` was computed with; ``plans``:
    the measured plans of the training graphs as indices into ``train`` (the ``plans`` loss).
    Runs on ``config.threads`` torch threads, whatever the caller's count, then restores it."""
    with torch_threads(config.threads):
        return _fit_gnn(train, val, op_vocab, schedules, analytical_profile, config, meta, plans)


def _fit_gnn(train: Sequence[Data], val: Sequence[Data], op_vocab: Sequence[str], schedules: Sequence[str],
             analytical_profile: dict, config: TrainConfig, meta: dict | None,
             plans: Sequence[Sequence[int]]) -> TrainResult:
    if not train:
        raise ValueError("train_gnn needs at least one training sample")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    batch = Batch.from_data_list(list(train))
    val_batch = Batch.from_data_list(list(val)) if val else None
    net = GroupGNN(len(op_vocab), len(schedules), config.hidden, config.head, config.edge_features)
    residual = batch.y - batch.prior.float()
    net.y_mean.fill_(float(residual.mean()))
    net.y_std.fill_(float(residual.std()) if len(train) > 1 else 1.0)
    target = net.target(batch)
    graph_ids = np.unique(np.array(batch.graph_hash), return_inverse=True)[1]
    ranking: RankingLoss | PlanRankingLoss | None = None
    if config.loss == "plans":
        ranking = plan_ranking_loss(plans, graph_ids, batch.y, net.y_mean + batch.prior.float(), net.y_std,
                                    config.plan_temperature, config.plan_margin)
        if ranking.is_empty:
            raise ValueError(f"no two plans of a training graph are measured more than {config.plan_margin:.0%} "
                             f"apart. Fix: a smaller --plan-margin")
    elif config.loss != "mse":
        ranking = RankingLoss(graph_ids, config)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = TrainResult(model=None)  # type: ignore[arg-type]
    best = (float("inf"), copy.deepcopy(net.state_dict()))
    for epoch in range(1, config.epochs + 1):
        net.train()
        predicted = net(batch)
        loss = torch.mean((predicted - target) ** 2)
        if ranking is not None:
            loss = loss + config.rank_weight * ranking(predicted, target, rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        result.losses.append(loss.item())
        if val_batch is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
            rmse = ln_rmse(net, val_batch)
            result.val_rmse.append((epoch, rmse))
            if rmse < best[0]:
                best = (rmse, copy.deepcopy(net.state_dict()))
    if val_batch is not None:
        net.load_state_dict(best[1])
    scale_residual(net, config.residual_scale)
    result.seconds = time.perf_counter() - started
    result.model = build_model(net, op_vocab, schedules, analytical_profile, {
        "train_config": asdict(config), "train_samples": len(train), "val_samples": len(val),
        "final_train_loss": result.losses[-1], "best_val_rmse_ln": best[0] if val else None, **(meta or {})})
    return result


@torch.no_grad()
def scale_residual(net: GroupGNN, residual_scale: float) -> None:
    """Make ``net`` predict prior + ``residual_scale`` * its residual: the de-standardization
    (y_mean, y_std) is the only place the residual's size lives, so the numpy model and its C
    kernels carry the scale without a change."""
    net.y_mean.mul_(residual_scale)
    net.y_std.mul_(residual_scale)


@torch.no_grad()
def ln_rmse(net: GroupGNN, batch: Batch) -> float:
    """RMSE of predicted vs measured ln µs."""
    net.eval()
    return float(torch.sqrt(torch.mean((net.log_us(batch) - batch.y) ** 2)))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"numpy": np.__version__, "torch": torch.__version__}
    for package in ("fusiongym", "torch_geometric"):
        try:
            versions[package] = version(package.replace("_", "-"))
        except PackageNotFoundError:
            versions[package] = "unknown"
    return versions
