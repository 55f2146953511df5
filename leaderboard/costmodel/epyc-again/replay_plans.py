"""Experiment (EXPERIMENTS.md, "The EPYC again"): do the plans a leaderboard run timed on one day time the
same now? Every row of a results CSV for one graph (its plan JSON and measured µs) is measured again with the
TVM backend into a new, empty store (one take per group, the backend's timing protocol), and printed beside
the CSV's µs. The graph is read from a profile log that holds it (``<store>.plans.jsonl``):

    python leaderboard/costmodel/epyc-again/replay_plans.py RESULTS.csv GRAPH_HASH PLANS.jsonl STORE.db
"""
import csv
import json
import sys

from fusiongym.graphs.ir import ComputeGraph
from fusiongym.reward.backend import get_backend
from fusiongym.reward.plan import Plan


def logged_graph(log: str, graph_hash: str) -> ComputeGraph:
    """The graph ``graph_hash`` as a profile log records it."""
    for line in open(log):
        record = json.loads(line)
        if record.get("kind") == "graph" and record["graph_hash"] == graph_hash:
            return ComputeGraph.from_json(json.dumps(record["graph"]))
    raise SystemExit(f"{log} holds no graph {graph_hash}")


def main(results: str, graph_hash: str, log: str, store: str) -> None:
    graph = logged_graph(log, graph_hash)
    backend = get_backend("tvm", store=store)
    for row in csv.DictReader(open(results)):
        if row["graph_hash"] != graph_hash or row["status"] != "ok":
            continue
        plan = Plan.from_json(row["plan"])
        now_us = backend.latency(graph, plan).total_us
        print(f"{row['method']:16s} {row['measured_at']}: {float(row['latency_us']):7.1f} µs, now {now_us:7.1f} µs "
              f"(x{now_us / float(row['latency_us']):.2f}); schedules {sorted(set(plan.schedules))}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
