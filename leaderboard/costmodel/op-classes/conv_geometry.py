"""Experiment (README, "One efficiency per op class"): how fast is a convolution under each schedule, by geometry?

Every single-convolution group of a profiled store (all its models), under the op-class
profile: the kernel's measured GFLOP/s and the log residual ln(priced / measured), by schedule,
dense or depthwise, and window (kH x kW):

    cd leaderboard/costmodel/op-classes && python conv_geometry.py ../../../runs/costmodel/measurements.db \\
        profile-op-classes.json > conv-geometry.txt
"""
import collections
import sys

import numpy as np

from fusiongym.reward.analytical import AnalyticalBackend
from fusiongym.reward.costmodel.features import _conv_geometry
from fusiongym.reward.devices import load_profile
from store_fit import store_samples

LARGE_US = 50.0


def main(store: str, profile: str, plain_profile: str) -> None:
    backend = AnalyticalBackend(load_profile(profile))
    convolutions = [s for s in store_samples(store, max_nodes=1)
                    if s.graph.nodes[s.nodes[0]].op == "conv2d"]
    cells = collections.defaultdict(list)
    for sample in convolutions:
        node = sample.graph.nodes[sample.nodes[0]]
        window, _, _, _, channel_groups = _conv_geometry(node)
        kind = f"{'depthwise' if channel_groups > 1 else 'dense'} {int(window)}"
        priced_us = backend.group_latency(sample.graph, list(sample.nodes), sample.schedule).us
        cells[sample.schedule, kind].append((node.flops / sample.measured_us / 1e3, np.log(priced_us / sample.measured_us)))
    print(f"{'schedule':18s} {'conv, window':14s}    n  GFLOP/s median (min-max)   residual mean")
    for (schedule, kind), rows in sorted(cells.items()):
        rates, residuals = np.array(rows).T
        print(f"{schedule:18s} {kind:14s} {len(rows):4d}  {np.median(rates):6.2f} ({rates.min():5.2f}-{rates.max():5.2f})"
              f"          {residuals.mean():+.2f}")
    profiles = {"plain": AnalyticalBackend(load_profile(plain_profile)), "op classes": backend}
    print(f"ResNet-50's convolutions measured above {LARGE_US:.0f} us: mean residual on each profile")
    for schedule in backend.schedules:
        large = [s for s in convolutions if s.graph.name.startswith("resnet50") and s.schedule == schedule
                 and s.measured_us > LARGE_US]
        if not large:
            continue
        residuals = {label: np.mean([np.log(b.group_latency(s.graph, list(s.nodes), schedule).us / s.measured_us)
                                     for s in large]) for label, b in profiles.items()}
        print(f"  {schedule:18s} n={len(large):3d}  " + "  ".join(f"{k} {v:+.2f}" for k, v in residuals.items()))

if __name__ == "__main__":
    main(*sys.argv[1:4])
