"""Import a zoo model (or sample a workload) and print its summary."""

from __future__ import annotations

import argparse

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="zoo model (e.g. resnet50) or workload (e.g. llama/train)")
    parser.add_argument("--variant", default="full", choices=("full", "small"))
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE",
                        help="run-time dim, e.g. --dim batch=8 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling a workload's context")
    parser.add_argument("--json", metavar="FILE", help="also write the graph as JSON")


def run(args: argparse.Namespace) -> int:
    from fusiongym.graphs import get_workload, zoo

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
