"""Train and evaluate the learned cost model (GNN and LightGBM) on an exported dataset.

``fusiongym costmodel train --data data.pt --out DIR`` writes DIR/model.npz (the GNN, what
``get_backend("learned", model=DIR/model.npz)`` loads) and DIR/lightgbm.json.
``fusiongym costmodel eval --data data.pt --model DIR`` scores both and the analytical
backend on the test split: DIR/metrics.csv, metrics.md (printed) and metrics.png.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("train", "eval"))
    parser.add_argument("--data", required=True, help="dataset from `fusiongym dataset export`")
    parser.add_argument("--out", default="runs/costmodel", help="train: folder for the models")
    parser.add_argument("--model", default=None, help="eval: folder holding the models (default: --out)")
    parser.add_argument("--loss", default="mse", choices=("mse", "hinge", "listmle"),
                        help="mse alone, or mse plus a pairwise (hinge) or listwise (ListMLE) ranking term")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    import torch

    from fusiongym.reward.costmodel.boosted import BoostedModel
    from fusiongym.reward.costmodel.dataset import CostDataset
    from fusiongym.reward.costmodel.evaluate import (BOOSTED_FILE, GNN_FILE, compare, train_models,
                                                     write_report)
    from fusiongym.reward.costmodel.gnn import TrainConfig
    from fusiongym.reward.costmodel.metrics import markdown_table
    from fusiongym.reward.costmodel.model import CostModel

    torch.set_num_threads(1)
    dataset = CostDataset.load(args.data)
    folder = Path(args.model or args.out)
    if args.action == "train":
        config = TrainConfig(loss=args.loss, seed=args.seed)
        if args.epochs is not None:
            config = dataclasses.replace(config, epochs=args.epochs)
        trained = train_models(dataset, config, folder)
        gnn_path = folder / GNN_FILE
        print(f"wrote {gnn_path} ({os.path.getsize(gnn_path) / 1024:.1f} KB; loss {trained.losses[0]:.3f} -> "
              f"{trained.losses[-1]:.3f}, best val RMSE of ln µs {trained.gnn.meta['best_val_rmse_ln']}) and "
              f"{folder / BOOSTED_FILE}")
        return 0
    rows, predicted = compare(dataset, CostModel.load(folder / GNN_FILE), BoostedModel.load(folder / BOOSTED_FILE))
    paths = write_report(rows, predicted, dataset.indices("test"), folder)
    print(markdown_table(rows))
    print("wrote " + ", ".join(map(str, paths)))
    return 0
