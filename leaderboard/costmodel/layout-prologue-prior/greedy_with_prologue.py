"""Experiment (leaderboard/costmodel/EXPERIMENTS.md, "Eight tries by hand"): does greedy_cost pick faster plans on a roofline that prices layout prologues?

greedy_cost searches on the analytical backend (this machine's profile) as it is, and on the
same backend with every group holding a layout prologue (``prologue_prior.prologue_nodes``)
priced FACTOR x. Both plans of each named model's first graph in the profile log are then timed on TVM (llvm),
each group the fastest of TAKES takes (groups already in the store keep theirs), in a copy of
the store. Prints each graph's two plans: group count, predicted and measured µs.

    python leaderboard/costmodel/layout-prologue-prior/greedy_with_prologue.py runs/costmodel/measurements.db \
        bert,vit,llama
"""
import json
from dataclasses import replace
import shutil
import sys
import tempfile
from pathlib import Path

from prologue_prior import prologue_nodes

from fusiongym.agents.baselines.search import greedy_cost
from fusiongym.graphs import ComputeGraph
from fusiongym.reward import get_backend
from fusiongym.reward.analytical import AnalyticalBackend
from fusiongym.reward.backend import GroupLatency

TAKES = 3
FACTOR = 1.5   # what prologue_prior.py fits on the training graphs


class PrologueAwareBackend(AnalyticalBackend):
    """The roofline, with groups whose contraction reads a fused permute_dims / reshape priced FACTOR x."""

    def group_latency(self, graph: ComputeGraph, nodes, schedule: str) -> GroupLatency:
        latency = super().group_latency(graph, nodes, schedule)
        ops = [graph.nodes[n].op for n in nodes]
        position = {n: k for k, n in enumerate(nodes)}
        edges = [(position[e.src], position[e.dst]) for e in graph.edges if e.src in position and e.dst in position]
        if prologue_nodes(ops, edges):
            return replace(latency, us=latency.us * FACTOR)
        return latency


def logged_graphs(log: Path, models: set[str]) -> dict[str, ComputeGraph]:
    graphs = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "graph" and record["model"] in models and record["model"] not in graphs:
            graphs[record["model"]] = ComputeGraph.from_json(json.dumps(record["graph"]))
    return graphs


def main(store: str, models: str) -> None:
    graphs = logged_graphs(Path(store + ".plans.jsonl"), set(models.split(",")))
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "measurements.db"
        shutil.copy(store, copy)
        tvm = get_backend("tvm", target="llvm", store=str(copy))
        for name, search_backend in (("roofline", AnalyticalBackend()), (f"roofline, prologues x{FACTOR}", PrologueAwareBackend())):
            for model, graph in graphs.items():
                plan = greedy_cost(graph, search_backend)
                measured_us = sum(tvm.take_again(graph, group, schedule, TAKES).us
                                  for group, schedule in zip(plan.groups, plan.schedules))
                print(f"{model:8s} greedy_cost on {name:26s} groups {len(plan.groups):3d} "
                      f"predicted {plan.meta['predicted_us']:9.1f} µs  measured {measured_us:9.1f} µs", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
