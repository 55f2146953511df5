"""Import a zoo model (or sample a workload) and print its summary."""

from __future__ import annotations

import argparse

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="zoo model (e.g. resnet50) or workload (e.g. llama/train)")
    parser.add_argument("--table", action="store_true",
                        help="import every zoo model (small and full) and print nodes, edges, GFLOPs, import time")
    parser.add_argument("--variant", default="full", choices=("full", "small"))
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE",
                        help="run-time dim, e.g. --dim batch=8 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling a workload's context")
    parser.add_argument("--json", metavar="FILE", help="also write the graph as JSON")


def run(args: argparse.Namespace) -> int:
    from fusiongym.graphs import get_workload, zoo

    if args.table:
        print_zoo_table()
        return 0
    if not args.name:
        raise ValueError("name a zoo model or workload, or pass --table")
    dims = dict(_parse_dim(text) for text in args.dim)
    if "/" in args.name:
        graph = get_workload(args.name).sample(np.random.default_rng(args.seed), dims=dims or None)
    else:
        graph = zoo.load(args.name, args.variant, **dims)
    print(graph.summary())
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(graph.to_json())
    return 0


def _parse_dim(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    if not value.isdigit():
        raise ValueError(f"--dim expects NAME=INTEGER, got {text!r}")
    return name, int(value)


def print_zoo_table() -> None:
    """Nodes, edges, GFLOPs at the default dims and first-import time of every zoo model."""
    import time

    from fusiongym.graphs import from_torch, zoo

    print("| name | nodes / edges small | nodes / edges full | GFLOPs full | import s small / full |")
    print("|---|---|---|---|---|")
    for name in zoo.names():
        cells = []
        for variant in ("small", "full"):
            model = zoo.build(name, variant)
            started = time.perf_counter()
            template = from_torch(model.module, model.example_inputs, model.dynamic_shapes, name=name)
            seconds = time.perf_counter() - started
            graph = template.instantiate({dim.name: dim.default for dim in model.dims})
            cells.append((graph, seconds))
        (small, small_s), (full, full_s) = cells
        print(f"| `{name}` | {small.num_nodes} / {small.num_edges} | {full.num_nodes} / {full.num_edges} | "
              f"{full.arrays.flops.sum() / 1e9:.1f} | {small_s:.1f} / {full_s:.1f} |")
