"""Experiment (leaderboard/costmodel/EXPERIMENTS.md, "One TVM thread in place of two, and an hour later"): how well
independent one-take stores of the same logged plans agree, scored as `costmodel eval
--remeasured` scores a second store: the later store as a "model" of the earlier one, per model
of the log (group MAPE, plan tau, plan tau over pairs >= 10 % apart, plan RMSE % of delta), as a
CSV and, beside it, a PNG of plan tau per pair of stores and model.

Each store holds the plans of one profile log (``<store>.plans.jsonl`` beside it); a log's plans
name the store key they were measured under, so a store timed with another thread count needs
its own copy of the log with that backend (``tvm-llvm-1t``) in its plans' ``store_key``.

    python leaderboard/costmodel/timing-noise/store_agreement.py OUT.csv NAME=EARLIER_STORE,LATER_STORE ...
"""
import sys

import numpy as np

from fusiongym.reward.costmodel.evaluate import write_bar_report
from fusiongym.reward.costmodel.metrics import Metrics, score
from fusiongym.reward.costmodel.records import MeasuredSet, load_measured_set


def plans_by_model(measured: MeasuredSet) -> dict[str, list[dict]]:
    """model -> its plans as `metrics.score` takes them (sample indices into ``measured.samples``)."""
    by_model: dict[str, list[dict]] = {}
    for plan in measured.plans:
        by_model.setdefault(measured.model_of[plan.graph_hash], []).append(
            {"graph_hash": plan.graph_hash, "samples": list(plan.sample_indices)})
    return by_model


def agreement(name: str, earlier_store: str, later_store: str) -> list[tuple[Metrics, float]]:
    """The later store scored against the earlier one, per model, over the plans whose groups both
    hold (a model with none, e.g. a training model the later store never profiled, is left out),
    each with the median over the model's plans of the plan's later µs / earlier µs."""
    earlier, later = load_measured_set(earlier_store), load_measured_set(later_store)
    later_us = {(s.graph_hash, s.nodes, s.schedule): s.measured_us for s in later.samples}
    earlier_us = np.array([s.measured_us for s in earlier.samples])                       # [S] µs
    predicted_us = np.array([later_us.get((s.graph_hash, s.nodes, s.schedule), np.nan)
                             for s in earlier.samples])                                    # [S] µs
    rows = []
    for model, plans in sorted(plans_by_model(earlier).items()):
        plans = [p for p in plans if not np.isnan(predicted_us[p["samples"]]).any()]
        if not plans:
            continue
        samples = sorted({i for p in plans for i in p["samples"]})
        plan_ratios = [predicted_us[p["samples"]].sum() / earlier_us[p["samples"]].sum() for p in plans]
        metrics = score(f"{name}, {model}", predicted_us, earlier_us, samples, plans)
        rows.append((metrics, float(np.median(plan_ratios))))
    return rows


def main(out: str, pairs: list[str]) -> None:
    rows = []
    for pair in pairs:
        name, stores = pair.split("=", 1)
        rows += agreement(name, *stores.split(","))
    for row, plan_ratio in rows:
        print(f"{row.model:40s} groups {row.groups:4d}  MAPE {row.mape_pct:5.1f} %  plan tau {row.plan_tau:.3f}"
              f"  apart {row.plan_tau_apart:.3f}  RMSE {row.rmse_pct_of_delta:5.1f} % of delta"
              f"  median plan later/earlier {plan_ratio:.3f}")
    metrics = [row for row, _ in rows]
    models = sorted({row.model.rsplit(", ", 1)[1] for row in metrics})
    write_bar_report(metrics, out, models, "plan τ, later store vs earlier")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
