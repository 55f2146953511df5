"""Rendering of a fusion plan: a text table of groups, or the graph drawn with matplotlib.

The drawing uses a layered layout by topological depth (no graphviz): depth on the x
axis, nodes of one depth spread on the y axis, one colour per group.
"""

from __future__ import annotations

import numpy as np

from fusiongym.graphs import ComputeGraph

from .partition import Partition

MAX_OPS_SHOWN = 4
MAX_NODES_TEXT = 32


def ansi_table(graph: ComputeGraph, partition: Partition, workload: str, unfused_us: float) -> str:
    """One line per group: id (smallest node), nodes, ops, schedule, latency in µs."""
    lines = [
        f"{workload}  graph {graph.hash}  {graph.num_nodes} nodes  {partition.num_groups} groups  "
        f"latency {partition.total_us:.2f} µs (unfused {unfused_us:.2f} µs)",
        f"{'group':>6}  {'nodes':<{MAX_NODES_TEXT}}  {'ops':<40}  {'schedule':<18}  {'µs':>10}",
    ]
    for x in partition.labels():
        members = partition.members[x]
        ops = [graph.nodes[v].op for v in members]
        op_text = "+".join(ops[:MAX_OPS_SHOWN]) + (f"+…({len(ops)})" if len(ops) > MAX_OPS_SHOWN else "")
        schedule = partition.schedules[partition.schedule[x]] + ("" if partition.scheduled[x] else "*")
        lines.append(f"{x:>6}  {_ranges(members):<{MAX_NODES_TEXT}.{MAX_NODES_TEXT}}  {op_text:<40.40}  "
                     f"{schedule:<18}  {partition.group_us[x]:>10.2f}")
    lines.append("(* schedule not chosen yet)")
    return "\n".join(lines) + "\n"


def _ranges(nodes: tuple[int, ...]) -> str:
    """``(1, 2, 3, 7)`` -> ``"1-3,7"``."""
    parts, start, previous = [], nodes[0], nodes[0]
    for v in nodes[1:] + (None,):
        if v is not None and v == previous + 1:
            previous = v
            continue
        parts.append(f"{start}-{previous}" if previous > start else f"{start}")
        if v is not None:
            start = previous = v
    return ",".join(parts)


def draw_plan(graph: ComputeGraph, label: np.ndarray, title: str = "") -> np.ndarray:
    """[H, W, 3] uint8 image of the graph, nodes coloured by group label."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = graph.num_nodes
    depth = np.zeros(n, dtype=np.int64)
    for edge in graph.edges:  # edges go forward in node order, so one pass settles depths
        depth[edge.dst] = max(depth[edge.dst], depth[edge.src] + 1)
    row = np.zeros(n)
    counts: dict[int, int] = {}
    for v in range(n):
        row[v] = counts.get(int(depth[v]), 0)
        counts[int(depth[v])] = int(row[v]) + 1
    width = max(counts.values())
    y = row - (np.array([counts[int(d)] for d in depth]) - 1) / 2.0   # centre each layer

    figure = Figure(figsize=(min(16.0, 3.0 + 0.12 * (depth.max() + 1)), min(9.0, 2.5 + 0.3 * width)), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for edge in graph.edges:
        axes.plot([depth[edge.src], depth[edge.dst]], [y[edge.src], y[edge.dst]], color="0.75", linewidth=0.6,
                  zorder=1)
    _, group_index = np.unique(label, return_inverse=True)
    colours = colormaps["tab20"](group_index % 20)
    axes.scatter(depth, y, c=colours, s=18, edgecolors="0.2", linewidths=0.3, zorder=2)
    axes.set_title(title, fontsize=9)
    axes.set_axis_off()
    figure.tight_layout()
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
