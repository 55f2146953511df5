"""How good a cost model is for choosing plans, not only for predicting kernels.

Group level: MAPE and Kendall τ over the test groups. Plan level, per test graph (a plan's
latency is the sum of its groups'): Kendall τ of the plans' predicted vs measured order;
the same over the pairs of plans measured at least ``APART`` (10 %) apart (plans closer than
that swap places between two measurements of the same plans, so no model can order them);
RMSE of plan latency as a percentage of the mean latency difference between that graph's
plans (an error small next to the differences being ranked does not reorder them); and
the slowdown of the plan the model would pick (its top 1, or the best of its top 5) over
the truly fastest measured plan. Plan metrics are averaged over graphs (slowdowns:
geometric mean).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..calibrate import kendall_tau, mape
from ..store import atomic_output

APART = 0.10  # plans whose measured latencies differ by more than this share count as apart
NOISE_DRAWS = 200  # simulated stores behind each row of noise_ceiling

COLUMNS = (("model", "model"), ("groups", "test groups"), ("mape_pct", "MAPE per group %"),
           ("group_tau", "Kendall τ groups"), ("plans", "test plans"), ("graphs", "test graphs"),
           ("plan_tau", "Kendall τ plans (mean per graph)"),
           ("plan_tau_apart", f"Kendall τ plans ≥ {APART:.0%} apart"),
           ("rmse_pct_of_delta", "plan RMSE % of mean Δ between plans"),
           ("top1_slowdown", "top-1 slowdown"), ("top5_slowdown", "top-5 slowdown"))


@dataclass(frozen=True)
class Metrics:
    """One model scored on one test split (see the module docstring)."""

    model: str
    groups: int
    mape_pct: float
    group_tau: float
    plans: int
    graphs: int
    plan_tau: float
    plan_tau_apart: float
    rmse_pct_of_delta: float
    top1_slowdown: float
    top5_slowdown: float

    def to_dict(self) -> dict:
        return asdict(self)


def score(model: str, predicted_us: np.ndarray, measured_us: np.ndarray, test_samples: Sequence[int],
          plans: Sequence[dict]) -> Metrics:
    """Score ``predicted_us`` [num_samples] (every sample of the dataset) against ``measured_us``.

    ``test_samples``: indices of the test groups; ``plans``: test plans, each
    ``{"graph_hash", "samples": [indices]}``. Graphs with fewer than 2 plans count only
    for the group metrics.
    """
    test = np.asarray(test_samples, dtype=np.int64)
    if len(test) < 2:
        raise ValueError(f"scoring needs at least 2 test groups, got {len(test)}")
    by_graph: dict[str, list[list[int]]] = {}
    for plan in plans:
        by_graph.setdefault(plan["graph_hash"], []).append(plan["samples"])
    per_graph = [_plan_scores(predicted_us, measured_us, group_lists)
                 for group_lists in by_graph.values() if len(group_lists) >= 2]
    per_graph = [s for s in per_graph if s is not None]
    columns = list(zip(*per_graph)) if per_graph else [[math.nan]] * 5
    return Metrics(
        model=model, groups=len(test), mape_pct=100 * mape(predicted_us[test], measured_us[test]),
        group_tau=kendall_tau(predicted_us[test], measured_us[test]),
        plans=sum(len(lists) for lists in by_graph.values()), graphs=len(per_graph),
        plan_tau=over_numbers(np.mean, columns[0]), plan_tau_apart=over_numbers(np.mean, columns[1]),
        rmse_pct_of_delta=float(np.mean(columns[2])),
        top1_slowdown=_geomean(columns[3]), top5_slowdown=_geomean(columns[4]))


def noise_ceiling(name: str, measured_us: np.ndarray, remeasured_us: np.ndarray, test_samples: Sequence[int],
                  plans: Sequence[dict], draws: int = NOISE_DRAWS, seed: int = 0) -> Metrics:
    """What a model that knew every group's true latency would score against one store (the
    mean of ``draws`` simulated stores), given two measurements of the same groups.

    Scoring the second store against the first puts the timing noise on both sides; a model is
    scored against one. Here the truth is each group's geometric mean of its two measurements,
    and a store is that truth off by the group's own noise: half the ln difference of the two
    times √2 (the spread of one store that the difference implies), its sign drawn at random.
    The averaged truth keeps half of the noise's variance, which spreads plans a little wider
    than they are, so the estimate errs high.
    """
    first_log_us, second_log_us = np.log(measured_us), np.log(remeasured_us)   # [num_samples] each
    truth_log_us = (first_log_us + second_log_us) / 2
    noise_log_us = np.abs(first_log_us - second_log_us) / math.sqrt(2)
    truth_us = np.exp(truth_log_us)
    rng = np.random.default_rng(seed)
    rows = [score(name, truth_us,
                  np.exp(truth_log_us + rng.choice((-1.0, 1.0), size=len(truth_log_us)) * noise_log_us),
                  test_samples, plans)
            for _ in range(draws)]
    return replace(rows[0], **{field.name: over_numbers(np.mean, [getattr(row, field.name) for row in rows])
                               for field in fields(Metrics) if isinstance(getattr(rows[0], field.name), float)})


def _plan_scores(predicted_us: np.ndarray, measured_us: np.ndarray, group_lists: list[list[int]]
                 ) -> tuple[float, float, float, float, float] | None:
    predicted = np.array([predicted_us[g].sum() for g in group_lists])   # [P] µs
    measured = np.array([measured_us[g].sum() for g in group_lists])     # [P] µs
    delta = np.abs(measured[:, None] - measured[None, :])[np.triu_indices(len(measured), 1)].mean()
    if delta == 0:
        return None  # identical plan latencies: nothing to rank
    rmse = float(np.sqrt(np.mean((predicted - measured) ** 2)))
    ranking = np.argsort(predicted, kind="stable")
    best = measured.min()
    return (kendall_tau(predicted, measured), _tau_apart(predicted, measured), 100 * rmse / delta,
            measured[ranking[0]] / best, measured[ranking[:5]].min() / best)


def _tau_apart(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Kendall τ over the pairs of plans measured more than ``APART`` apart (nan: no such pair)."""
    first, second = np.triu_indices(len(measured), 1)
    apart = np.abs(np.log(measured[first] / measured[second])) > math.log1p(APART)
    if not apart.any():
        return math.nan
    agree = np.sign(predicted[first] - predicted[second]) == np.sign(measured[first] - measured[second])
    return float(2 * agree[apart].mean() - 1)


def over_numbers(reduce: Callable[[Sequence[float]], float], values: Sequence[float]) -> float:
    """``reduce`` (np.mean, np.min, ...) over the values that are not nan (nan when none is)."""
    numbers = [value for value in values if not math.isnan(value)]
    return float(reduce(numbers)) if numbers else math.nan


def _geomean(values: Sequence[float]) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.exp(np.mean(np.log(values)))) if len(values) and not np.isnan(values).any() else math.nan


def markdown_table(rows: Sequence[Metrics]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(_cell(getattr(row, key)) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_csv(rows: Sequence[Metrics], path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=[key for key, _ in COLUMNS])
            writer.writeheader()
            writer.writerows(row.to_dict() for row in rows)
    return path


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3g}"
    return str(value)
