"""Experiment (leaderboard/costmodel/EXPERIMENTS.md, "Eight tries by hand"): LightGBM on pairs of plans of one graph.

A plan is a vector of ln sums over its groups (the 14 group features, the roofline µs, per
schedule and of its largest group, the group count); a pair (P, Q) is P's vector minus Q's
(groups both hold cancel), its target ln(measured P / measured Q). Trained on every ordered
pair of each training graph's plans; a graph's plans are ranked by their mean predicted ratio
over all others. Prints the plan tau of the roofline's plan sum and, per tree size, the mean
of 4 seeds on val and each test model:

    python plan_pairs.py runs/costmodel/data.pt
"""
import itertools
import math
import sys

import lightgbm as lgb
import numpy as np

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import analytical_us, measured_us
from fusiongym.reward.costmodel.metrics import kendall_tau

ds = CostDataset.load(sys.argv[1])
measured, roofline = measured_us(ds), analytical_us(ds)
group_sums = np.exp2(np.array([d.group[0].numpy() for d in ds.samples], dtype=np.float64) * 16) - 1   # [S, 14]
schedule = np.array([int(d.schedule) for d in ds.samples])
graphs: dict[tuple[str, str, str], list[dict]] = {}   # (model, graph hash, split) -> its plans
for plan in ds.plans:
    graphs.setdefault((plan["model"], plan["graph_hash"], ds.split[plan["samples"][0]]), []).append(plan)


def plan_vector(plan: dict) -> np.ndarray:
    s = plan["samples"]
    per_schedule = [math.log1p(roofline[s][schedule[s] == k].sum()) for k in range(len(ds.schedules))]
    return np.array([*np.log1p(group_sums[s].sum(0)), math.log(len(s)), math.log(roofline[s].sum()),
                     *per_schedule, math.log(roofline[s].max())])


def graph_arrays(plans: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([plan_vector(p) for p in plans]),                    # [P, F]
            np.array([measured[p["samples"]].sum() for p in plans]))     # [P] µs


def pairs(split: str) -> tuple[np.ndarray, np.ndarray]:
    features, targets = [], []
    for (_, _, graph_split), plans in graphs.items():
        if graph_split == split:
            vectors, plan_us = graph_arrays(plans)
            for a, b in itertools.permutations(range(len(plans)), 2):
                features.append(vectors[a] - vectors[b])
                targets.append(math.log(plan_us[a] / plan_us[b]))
    return np.array(features), np.array(targets)


def taus(booster: lgb.Booster | None, split: str) -> dict[str, float]:
    """Plan tau of each model of ``split`` (the mean over its graphs); the roofline's without a booster."""
    out: dict[str, list[float]] = {}
    for (model, _, graph_split), plans in graphs.items():
        if graph_split != split:
            continue
        vectors, plan_us = graph_arrays(plans)
        if booster is None:
            out.setdefault(model, []).append(kendall_tau(np.array([roofline[p["samples"]].sum() for p in plans]), plan_us))
            continue
        n = len(plans)
        ratio = booster.predict((vectors[:, None, :] - vectors[None, :, :]).reshape(n * n, -1)).reshape(n, n)
        out.setdefault(model, []).append(kendall_tau(ratio.mean(1), plan_us))
    return {model: float(np.mean(values)) for model, values in out.items()}


features, targets = pairs("train")
print("training pairs:", len(targets), "| roofline plan tau: val", taus(None, "val"), "test", taus(None, "test"))
for leaves, min_leaf in ((4, 50), (8, 50), (15, 20), (31, 20)):
    scores = []
    for seed in range(4):
        params = {"objective": "regression", "learning_rate": 0.05, "num_leaves": leaves, "min_data_in_leaf": min_leaf,
                  "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 1, "seed": seed,
                  "deterministic": True, "num_threads": 1, "verbose": -1}
        booster = lgb.train(params, lgb.Dataset(features, targets), 400)
        scores.append({**taus(booster, "val"), **taus(booster, "test")})
    print(f"{leaves} leaves / >= {min_leaf}:", {m: round(float(np.mean([s[m] for s in scores])), 3) for m in scores[0]})
