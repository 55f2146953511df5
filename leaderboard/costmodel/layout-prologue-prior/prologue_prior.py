"""Experiment (leaderboard/costmodel/EXPERIMENTS.md, "Eight tries by hand"): the roofline prices a layout prologue fused into a contraction as free.

A *layout prologue*: a permute_dims or reshape whose output a matmul or conv2d of the same group
reads. TVM inlines it into the contraction's operand loads, which then stride. The script

1. times it: each measured group with a prologue against the same group without its prologue
   chain (same graph and schedule, both in the store): measured and roofline ratio
   (matched-pairs.csv);
2. fits one factor F on the training graphs only: the prior x F for groups with a prologue, F
   from FACTORS maximising the prior's mean plan tau over the training graphs (prior-factor.csv,
   every F on train, val and test);
3. writes a copy of the dataset whose `prior` is the fitted one (for `costmodel seeds` / `tune`):

    python leaderboard/costmodel/layout-prologue-prior/prologue_prior.py runs/costmodel/data.pt runs/prologue/data.pt \
        leaderboard/costmodel/layout-prologue-prior
"""
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import (analytical_us, groups_and_plans_by_model, measured_us,
                                                   score_cases, unseen_cases)
from fusiongym.reward.costmodel.metrics import score

CONTRACTIONS = {"matmul", "conv2d"}
LAYOUT_OPS = {"permute_dims", "reshape"}
FACTORS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


def prologue_nodes(ops: list[str], edges: list[tuple[int, int]]) -> set[int]:
    """Positions of the layout ops that feed a contraction of the group, directly or through other
    layout ops; ``edges``: the group's internal edges as (producer, consumer) positions."""
    producers = defaultdict(list)
    for u, v in edges:
        producers[v].append(u)
    found: set[int] = set()
    stack = [u for v, op in enumerate(ops) if op in CONTRACTIONS for u in producers[v] if ops[u] in LAYOUT_OPS]
    while stack:
        u = stack.pop()
        if u not in found:
            found.add(u)
            stack += [w for w in producers[u] if ops[w] in LAYOUT_OPS]
    return found


def matched_pairs(ds: CostDataset, prologues: list[set[int]], measured: np.ndarray, roofline: np.ndarray) -> list[dict]:
    """One row per (split, model, prologue ops): median measured and roofline ratio, with vs without."""
    index = {(d.graph_hash, frozenset(d.nodes.tolist()), int(d.schedule)): i for i, d in enumerate(ds.samples)}
    ratios = defaultdict(list)
    for i, (d, found) in enumerate(zip(ds.samples, prologues)):
        if not found:
            continue
        ops = [ds.op_vocab[o] for o in d.op.tolist()]
        rest = frozenset(n for k, n in enumerate(d.nodes.tolist()) if k not in found)
        j = index.get((d.graph_hash, rest, int(d.schedule)))
        if j is not None:
            key = (ds.split[i], d.model, "+".join(sorted({ops[k] for k in found})))
            ratios[key].append((measured[i] / measured[j], roofline[i] / roofline[j]))
    return [{"split": split, "model": model, "prologue": kinds, "pairs": len(r),
             "measured_ratio_median": float(np.median([m for m, _ in r])),
             "roofline_ratio_median": float(np.median([a for _, a in r]))}
            for (split, model, kinds), r in sorted(ratios.items())]


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(data_path: str, out_data: str, out_folder: str) -> None:
    ds = CostDataset.load(data_path)
    measured, roofline = measured_us(ds), analytical_us(ds)
    prologues = [prologue_nodes([ds.op_vocab[o] for o in d.op.tolist()], d.edge_index.t().tolist())
                 for d in ds.samples]
    has_prologue = np.array([bool(found) for found in prologues])
    folder = Path(out_folder)
    write_csv(matched_pairs(ds, prologues, measured, roofline), folder / "matched-pairs.csv")
    training_models, unseen = groups_and_plans_by_model(ds, ["train"]), unseen_cases(ds)
    rows, fitted = [], (-math.inf, 1.0)
    for factor in FACTORS:
        prior_us = roofline * np.where(has_prologue, factor, 1.0)
        tau = float(np.mean([m.plan_tau for m in score_cases("prior", prior_us, measured, training_models)]))
        fitted = max(fitted, (tau, factor))
        rows.append({"factor": factor, "case": "train (mean of models)", "plan_tau": tau,
                     "rmse_pct_of_delta": "", "mape_pct": ""})
        for case, (samples, plans) in unseen.items():
            metrics = score(case, prior_us, measured, samples, plans)
            rows.append({"factor": factor, "case": case, "plan_tau": metrics.plan_tau,
                         "rmse_pct_of_delta": metrics.rmse_pct_of_delta, "mape_pct": metrics.mape_pct})
    write_csv(rows, folder / "prior-factor.csv")
    factor = fitted[1]
    print(f"groups with a layout prologue: {int(has_prologue.sum())}; F fitted on train: {factor}")
    for d, flagged in zip(ds.samples, has_prologue):
        if flagged:
            d.prior = torch.tensor([float(d.prior) + math.log(factor)], dtype=torch.float64)
    ds.save(out_data)


if __name__ == "__main__":
    main(*sys.argv[1:4])
