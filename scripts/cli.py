"""The ``fusiongym`` command line: one subcommand per module of ``fusiongym.scripts``."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module in fusiongym.scripts, one-line help)
COMMANDS = {
    "demo": ("demo", "short PPO training, then the pretrained policy vs baselines on real TVM latency"),
    "train": ("train", "train the GNN fusion policy with MaskablePPO; checkpoints, tensorboard, wandb"),
    "export": ("export", "export a training run to ONNX (+ metadata) for FusionPolicy.load"),
    "bench": ("bench", "measure speed on this machine and write BENCHMARKS.md + BENCHMARKS.json"),
    "validate": ("validate", "re-measure saved results and report any that do not reproduce"),
    "profile": ("profile", "measure groups on a real backend into the store; --calibrate fits the CPU profile"),
    "graph": ("graph", "import a zoo model or a workload and print its summary"),
    "dataset": ("dataset", "export the learned cost model's dataset (PyG, split by model) from the store"),
    "costmodel": ("costmodel", "train / evaluate the learned cost model (GNN, LightGBM vs analytical)"),
    "leaderboard": ("leaderboard", "measure baselines, policies and submitted plans on fixed cases; write LEADERBOARD.md"),
    "compare": ("compare", "policy plan vs Inductor's own fusion vs TVM's default plan on one device (torch backend)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusiongym", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"fusiongym.scripts.{module_name}")
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        print(f"fusiongym {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
