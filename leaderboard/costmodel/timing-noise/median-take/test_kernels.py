"""The test suite's distinct kernels of a profile log, for the timing-noise experiments beside this file."""
import json
import tempfile
from pathlib import Path

import numpy as np

from fusiongym.reward import get_backend
from fusiongym.scripts.profile import _logged_groups


def test_kernels(log: str, count: int, seed: int) -> tuple[object, list]:
    """(a TVM backend, ``count`` distinct (graph, nodes, schedule) of the log's test graphs, drawn with ``seed``)."""
    backend = get_backend("tvm", store=Path(tempfile.mkdtemp()) / "unused.db")
    hashes = sorted(r["graph_hash"] for r in map(json.loads, open(log))
                    if r["kind"] == "graph" and r["workload"].endswith("/test"))
    graphs, groups = _logged_groups(log, hashes)
    by_kernel = {}
    for graph_hash, nodes, schedule in sorted(groups):
        signature = backend._key(graphs[graph_hash], list(nodes), schedule).signature
        by_kernel.setdefault((signature, schedule), (graphs[graph_hash], list(nodes), schedule))
    kernels = sorted(by_kernel)
    chosen = [by_kernel[kernels[i]] for i in np.random.default_rng(seed).choice(len(kernels), count, replace=False)]
    return backend, chosen
