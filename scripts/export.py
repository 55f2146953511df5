"""Export a training run to ONNX for ``fusiongym.agents.FusionPolicy.load``.

Example: ``fusiongym export runs/ppo --out policy.onnx``. Writes the ONNX model (metadata
JSON in its metadata_props under "fusiongym": feature schema, op vocabulary, schedule
menu, training command and seed, versions) and the same JSON beside it (policy.json).
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="training run directory (holds run.json and final.zip)")
    parser.add_argument("--out", default=None, help="ONNX file to write (default: RUN_DIR/policy.onnx)")
    parser.add_argument("--checkpoint", default="final",
                        help="final (default), best (best evaluation so far) or a path to a checkpoint .zip")


def run(args: argparse.Namespace) -> int:
    from fusiongym.agents.export import export_run
    from fusiongym.agents.fusion_policy import FusionPolicy

    out = export_run(args.run_dir, args.out or os.path.join(args.run_dir, "policy.onnx"), args.checkpoint)
    policy = FusionPolicy.load(out)
    meta = policy.metadata
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.1f} KB) and {out.with_suffix('.json')}")
    print(f"hidden {meta['hidden']}, layers {meta['layers']}, {meta['parameters']} parameters, "
          f"schedules {meta['schedules']}, trained by: {meta['training']['command']}")
    return 0
