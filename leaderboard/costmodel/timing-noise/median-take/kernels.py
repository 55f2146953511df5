"""What the timing-noise experiments beside this file read: the spaced takes a store holds, and the
test workloads' kernels and plans of a profile log."""
import json
import tempfile
from pathlib import Path

import numpy as np

from fusiongym.graphs import ComputeGraph
from fusiongym.reward import get_backend
from fusiongym.reward.measured_backend import spaced_takes_us
from fusiongym.reward.signature import group_signature
from fusiongym.reward.store import MeasurementStore
from fusiongym.scripts.profile import _logged_groups

Kernel = tuple[str, str]   # (group signature, schedule): a row of the store


def spaced_takes(store: str) -> dict[Kernel, list[float]]:
    """Every take of every group the store holds (opening a schema-1 store migrates it; the takes stay)."""
    with MeasurementStore(store) as measured:
        return {(m.key.signature, m.key.schedule): spaced_takes_us(m) for m in measured.iter_all()}


def test_graph_hashes(log: str) -> list[str]:
    return sorted(r["graph_hash"] for r in map(json.loads, open(log))
                  if r["kind"] == "graph" and r["workload"].endswith("/test"))


def sample_test_kernels(log: str, count: int, seed: int) -> tuple[object, list]:
    """(a TVM backend to build and time with, ``count`` distinct (graph, nodes, schedule) of the log's
    test graphs, drawn with ``seed``)."""
    graphs, groups = _logged_groups(log, test_graph_hashes(log))
    by_kernel = {}
    for graph_hash, nodes, schedule in sorted(groups):
        graph = graphs[graph_hash]
        by_kernel.setdefault((group_signature(graph, list(nodes)), schedule), (graph, list(nodes), schedule))
    kernels = sorted(by_kernel)
    chosen = [by_kernel[kernels[i]] for i in np.random.default_rng(seed).choice(len(kernels), count, replace=False)]
    return get_backend("tvm", store=Path(tempfile.mkdtemp()) / "unused.db"), chosen


def test_plans(log: str, workloads: tuple[str, ...]) -> list[list[Kernel]]:
    """Every logged plan of ``workloads``, as its kernels."""
    records = [json.loads(line) for line in open(log)]
    graphs = {r["graph_hash"]: ComputeGraph.from_json(json.dumps(r["graph"])) for r in records
              if r["kind"] == "graph" and r["workload"] in workloads}
    return [[(group_signature(graphs[r["graph_hash"]], group), schedule)
             for group, schedule in zip(r["plan"]["groups"], r["plan"]["schedules"])]
            for r in records if r["kind"] == "plan" and r["graph_hash"] in graphs]
