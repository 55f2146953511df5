"""Experiment (README, "What LLVM vectorizes"): would the roofline order plans better if it knew the vector share?

The analytical backend prices every `default` kernel as scalar code. Here, by hand (a patch of
``analytical._schedule_rates``, not product code), a convolution's or matmul's compute rate
on `default` is multiplied by 1 + (SPEEDUP - 1) x its node's vector share, and every other
node's by 1 + (SCALAR - 1) x (1 - share). Then, as ``op-classes/plan_order.py`` does, every plan
of a dataset is priced and ordered against its measured total, per graph; printed with the
mean ln(priced / measured) of the store's `default` single-node convolutions and matmuls of
>= 100 kFLOP, split at share 0.5:

    python roofline_try.py ../../../runs/costmodel/measurements.db ../../../runs/vector/seven/data.pt \\
        ../op-classes/profile-plain.json > roofline-try.txt
"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "op-classes"))
sys.path.insert(0, str(HERE.parent / "calibration-fit"))
from plan_order import logged_graphs, plan_taus  # noqa: E402
from study import store_samples  # noqa: E402

import fusiongym.reward.analytical as analytical  # noqa: E402
from fusiongym.reward.costmodel.dataset import CostDataset  # noqa: E402
from fusiongym.reward.devices import load_profile  # noqa: E402
from fusiongym.reward.vector_share import vector_shares  # noqa: E402

TRIES = ((1, 1), (2, 1), (4, 1), (9, 1), (1, 0.5), (2, 0.5), (4, 0.5), (4, 0.3))
HEAVY_OPS = ("conv2d", "matmul")
KNOWN: dict[str, float] = {}
SHARES: dict[int, np.ndarray] = {}   # id(graph.arrays.flops) -> [N] share, 0 for ops not in HEAVY_OPS
SETTING = {"speedup": 1.0, "scalar": 1.0}
_RATES = analytical._schedule_rates


def register(graph) -> None:
    if id(graph.arrays.flops) not in SHARES:
        heavy = [node.id for node in graph.nodes if node.op in HEAVY_OPS]
        shares = vector_shares(graph, heavy, KNOWN)
        SHARES[id(graph.arrays.flops)] = np.array([shares.get(n, 0.0) for n in range(graph.num_nodes)])


def rates_knowing_the_share(profile, model, facts, load):
    flops_per_s, bytes_per_s = _RATES(profile, model, facts, load)
    if model.name != "default":
        return flops_per_s, bytes_per_s
    share = SHARES[id(facts.flops)]
    return flops_per_s * (1 + (SETTING["speedup"] - 1) * share) * (1 + (SETTING["scalar"] - 1) * (1 - share)), bytes_per_s


def main(store: str, data: str, profile_path: str) -> None:
    analytical._schedule_rates = rates_knowing_the_share
    profile = load_profile(profile_path)
    graphs = logged_graphs(f"{store}.plans.jsonl")
    for graph in graphs.values():
        register(graph)
    singles = [s for s in store_samples(store, 1, frozenset()) if s.schedule == "default"
               and s.graph.nodes[s.nodes[0]].op in HEAVY_OPS and float(s.graph.nodes[s.nodes[0]].flops) >= 1e5]
    for sample in singles:
        register(sample.graph)
    dataset = CostDataset.load(data)
    print("speedup  scalar   mean ln(priced/measured): share >= 0.5 (n) / < 0.5 (n)   analytical plan tau, mean of graphs")
    for speedup, scalar in TRIES:
        SETTING.update(speedup=speedup, scalar=scalar)
        backend = analytical.AnalyticalBackend(profile)
        residual = np.array([np.log(backend.group_latency(s.graph, list(s.nodes), "default").us / s.measured_us)
                             for s in singles])
        vectorized = np.array([SHARES[id(s.graph.arrays.flops)][s.nodes[0]] >= 0.5 for s in singles])
        taus = plan_taus(dataset, graphs, profile)
        print(f"{speedup:7.1f} {scalar:7.1f}   {residual[vectorized].mean():+.2f} ({vectorized.sum()}) / "
              f"{residual[~vectorized].mean():+.2f} ({(~vectorized).sum()})                           "
              f"{np.mean(list(taus.values())):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
