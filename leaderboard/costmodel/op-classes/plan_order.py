"""Experiment (README, "One efficiency per op class"): how well does each calibrated profile order whole plans?

Prices every plan of a dataset (``dataset export``'s plans, every split) with the analytical
backend on each PROFILE, and prints the Kendall tau of those totals against the measured ones
per graph, and the mean over graphs, and plots them (OUT.png). The plans were measured, not
searched, on these profiles:

    cd leaderboard/costmodel/op-classes && python plan_order.py \
        ../../../runs/costmodel/measurements.db.plans.jsonl ../../../runs/classfit/old/data-t10-a.pt plan-order \
        profile-plain.json profile-op-classes.json profile-store-op-classes.json > plan-order.txt
"""
import collections
import json
import sys

import matplotlib
import numpy as np

from fusiongym.graphs import ComputeGraph
from fusiongym.reward.analytical import AnalyticalBackend
from fusiongym.reward.calibrate import kendall_tau
from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.devices import DeviceProfile, load_profile

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def logged_graphs(log: str) -> dict[str, ComputeGraph]:
    records = [json.loads(line) for line in open(log)]
    return {r["graph_hash"]: ComputeGraph.from_json(json.dumps(r["graph"])) for r in records if r["kind"] == "graph"}


def plan_taus(dataset: CostDataset, graphs: dict[str, ComputeGraph], profile: DeviceProfile) -> dict[str, float]:
    """{model graph: Kendall tau of the profile's plan totals against the measured ones}."""
    backend = AnalyticalBackend(profile)
    priced = np.array([backend.group_latency(graphs[s.graph_hash], [int(n) for n in s.nodes],
                                             dataset.schedules[int(s.schedule)]).us for s in dataset.samples])
    measured = np.exp(np.array([float(s.y) for s in dataset.samples]))
    totals = collections.defaultdict(list)
    for plan in dataset.plans:
        totals[f"{plan['model']} {plan['graph_hash'][:6]}"].append((priced[plan["samples"]].sum(),
                                                                   measured[plan["samples"]].sum()))
    return {graph: kendall_tau(*zip(*pairs)) for graph, pairs in sorted(totals.items()) if len(pairs) > 2}


def plot(taus: dict[str, dict[str, float]], path: str) -> None:
    graphs = list(next(iter(taus.values())))
    figure, axis = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(taus)
    for i, (profile, by_graph) in enumerate(taus.items()):
        axis.bar(np.arange(len(graphs)) + i * width, [by_graph[g] for g in graphs], width,
                 label=f"{profile} (mean {np.mean(list(by_graph.values())):.3f})")
    axis.set_xticks(np.arange(len(graphs)) + 0.4 - width / 2)
    axis.set_xticklabels(graphs, rotation=30, ha="right")
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_ylabel("Kendall tau of plan totals vs measured")
    axis.set_title("Analytical backend: plan order per graph, by calibrated profile (EPYC)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(log: str, data: str, out: str, profiles: list[str]) -> None:
    graphs, dataset = logged_graphs(log), CostDataset.load(data)
    taus = {path: plan_taus(dataset, graphs, load_profile(path)) for path in profiles}
    print(f"{'graph':22s}" + "".join(f"{path[-28:]:>30s}" for path in profiles))
    for graph in taus[profiles[0]]:
        print(f"{graph:22s}" + "".join(f"{taus[path][graph]:30.3f}" for path in profiles))
    print(f"{'mean':22s}" + "".join(f"{np.mean(list(taus[path].values())):30.3f}" for path in profiles))
    for path in profiles[1:]:
        better = sum(taus[path][g] > taus[profiles[0]][g] for g in taus[profiles[0]])
        print(f"{path} orders {better} of {len(taus[path])} graphs' plans better than {profiles[0]}")
    plot(taus, f"{out}.png")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
