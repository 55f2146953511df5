"""Experiment (leaderboard/costmodel/EXPERIMENTS.md, "Eight tries by hand"): a prior that knows each op's measured latency unfused.

prior'(S, s) = analytical(S, s) * sum_{op in S} m(op) / sum_{op in S} r(op): m = the op's measured
µs as its own kernel (the graph's no_fusion plan, default schedule), r = the roofline's µs of it
alone. The roofline keeps the fusion and schedule effects; the measured ops fix its per-op scale.
Prints the zero-learning prior's scores beside the roofline's on val and test, and writes a copy
of the dataset whose `prior` is the new one (`-`: none), for `costmodel seeds` / `tune`:

    python rewrite_prior.py runs/costmodel/data.pt runs/opprior/data.pt
"""
import math
import sys

import numpy as np
import torch

from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import analytical_us, measured_us, unseen_cases
from fusiongym.reward.costmodel.metrics import score

data_path, out = sys.argv[1:3]
ds = CostDataset.load(data_path)
single_measured, single_roof = {}, {}
for plan in ds.plans:
    if plan["method"] != "no_fusion":
        continue
    for i in plan["samples"]:
        d = ds.samples[i]
        (node,) = d.nodes.tolist()
        single_measured[(plan["graph_hash"], node)] = math.exp(float(d.y))
        single_roof[(plan["graph_hash"], node)] = float(d.analytical_us)
print("graphs with a measured no_fusion plan:", len({h for h, _ in single_measured}))
new_us = np.zeros(len(ds.samples))
missing = 0
for k, d in enumerate(ds.samples):
    h = d.graph_hash
    nodes = d.nodes.tolist()
    m = sum(single_measured.get((h, n), single_roof.get((h, n), 0.0)) for n in nodes)
    r = sum(single_roof.get((h, n), 0.0) for n in nodes)
    if r <= 0:
        missing += 1
        new_us[k] = float(d.analytical_us)
    else:
        new_us[k] = float(d.analytical_us) * m / r
    d.prior = torch.tensor([math.log(new_us[k])], dtype=torch.float64)
print("samples without a measured op:", missing)
meas = measured_us(ds)
for case, (samples, plans) in unseen_cases(ds).items():
    for name, us in (("analytical", analytical_us(ds)), ("analytical x measured ops", new_us)):
        m = score(f"{name}, {case}", us, meas, samples, plans)
        print(f"{m.model:45s} mape {m.mape_pct:6.1f} plan tau {m.plan_tau:.3f} apart {m.plan_tau_apart:.3f} rmse {m.rmse_pct_of_delta:6.1f} top1 {m.top1_slowdown:.2f}")
if out != "-":
    ds.save(out)
