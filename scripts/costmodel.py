"""Train and evaluate the learned cost model (GNN and LightGBM) on an exported dataset.

``fusiongym costmodel train --data data.pt --out DIR`` writes DIR/model.npz (the GNN, what
``get_backend("learned", model=DIR/model.npz)`` loads) and DIR/lightgbm.json; with
``--residual-scale S`` both predict the analytical prior plus S times their learned residual;
``--plan-temperature T`` and ``--rank-weight W`` set the plans loss's scale and the ranking term's weight.
``fusiongym costmodel eval --data data.pt --model DIR`` scores both and the analytical
backend on the test split and on each of its models apart: DIR/metrics.csv, metrics.md
(printed) and metrics.png; with ``--remeasured DATA2`` (the same groups profiled again into a
second store) also that second measurement, scored as if it were a model, and an exact model
(rows ``exact model``): what a model knowing every group's true latency would score against
one store, estimated from the two stores' disagreement: the ceiling any model is held to.
``fusiongym costmodel online --data data.pt --model DIR --store STORE`` streams the test
models' measured groups (shuffled with --seed) through online updates of the GNN, as an env
on a real backend would meet them: DIR/online.csv and online.png, the error of the updated
model against the model as trained. Then, per test graph and K of --seen-plans, a fresh
learner meets the groups of the graph's first K plans only, and both models rank the other
plans: DIR/online-plans.csv and .png. --anchor sets how hard updates are held to the trained
weights (``OnlineConfig.anchor``), --plan-weight how much the order of the plans fed counts
(``OnlineConfig.plan_weight``), --plan-margin which of their pairs (``OnlineConfig.plan_margin``).
``fusiongym costmodel seeds --data data.pt --out DIR --loss L --seeds N`` trains the GNN
with seeds 0..N-1 and scores each on val and test: DIR/seeds-L.csv (one row per seed and
split) and seeds-L.png (each seed's plan τ), and the mean, min and max per split, printed.
``fusiongym costmodel heldout --data data.pt --out DIR --loss L`` holds each train and val
model out in turn, trains the GNN on the others and scores it and the analytical backend on
the held-out model: DIR/heldout-L.csv and .png, and the mean, min and max over models.
``fusiongym costmodel ablate --data data.pt --out DIR --loss L --seeds N`` trains the GNN on
the whole train split and without each train model in turn, N seeds each, and scores it on
every val and test model apart: DIR/ablation-L-seeds.csv (every seed), DIR/ablation-L.csv
and .png (the mean over seeds: which training architectures each unseen one's plan τ rests on).
``fusiongym costmodel tune --data data.pt --out DIR --seeds N`` trains LightGBM at each setting
of ``boosted.TUNING_GRID``, N seeds each, and scores it on val and test: DIR/tune-lightgbm-seeds.csv
(every seed), DIR/tune-lightgbm.csv and .png (the mean over seeds), and the setting val prefers.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("train", "eval", "online", "seeds", "heldout", "ablate", "tune"))
    parser.add_argument("--data", required=True, help="dataset from `fusiongym dataset export`")
    parser.add_argument("--out", default="runs/costmodel", help="train: folder for the models")
    parser.add_argument("--model", default=None, help="eval: folder holding the models (default: --out)")
    parser.add_argument("--loss", default="mse", choices=("mse", "hinge", "listmle", "plans"),
                        help="mse alone, or mse plus a ranking term: pairwise (hinge) or listwise (ListMLE) over "
                             "groups of one graph, or listwise over whole plans of one graph (plans)")
    parser.add_argument("--remeasured", default=None,
                        help="eval: a dataset of the same test groups profiled again into another store, scored "
                             "as one more model (how far the measurements agree with themselves), and the "
                             "score an exact model would reach against one store")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=8, help="seeds, ablate, tune: how many seeds to train and score")
    parser.add_argument("--edge-features", action="store_true",
                        help="train, seeds, heldout, ablate: messages also carry the edges' features "
                             "(bytes, size ratio)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="train, seeds: Adam's L2 weight decay (default: TrainConfig's)")
    parser.add_argument("--residual-scale", type=float, default=None,
                        help="train, seeds, heldout, ablate, tune: the models predict the analytical prior plus this "
                             "share of their learned residual, in [0, 1] (default: TrainConfig's, 1; 0.5 ranks "
                             "unseen models' plans better and fits their groups worse)")
    parser.add_argument("--lightgbm-leaves", type=int, default=None,
                        help="train: LightGBM's leaves per tree (default: boosted.PARAMS'; `costmodel tune` names "
                             "the setting val prefers)")
    parser.add_argument("--lightgbm-min-data", type=int, default=None,
                        help="train: LightGBM's fewest groups per leaf (default: boosted.PARAMS')")
    parser.add_argument("--plan-margin", type=float, default=None,
                        help="train, seeds, heldout, ablate with --loss plans, and online's plan term: fit, pair by "
                             "pair, only the plans measured more than this share apart (0.05: near-ties' order, "
                             "which another day's takes change, is left alone); default: ListMLE over each "
                             "graph's whole plan order")
    parser.add_argument("--plan-temperature", type=float, default=None,
                        help="train, seeds, heldout, ablate with --loss plans: the ln µs between two plans' latencies "
                             "worth one unit of their score (default: TrainConfig's, 0.05; on the Xeon 0.5 with --rank-weight 3 "
                             "ranked unseen plans better and priced them worse: README \"The plans loss's "
                             "temperature and weight\")")
    parser.add_argument("--rank-weight", type=float, default=None,
                        help="train, seeds, heldout, ablate with a ranking --loss: the ranking term's weight beside "
                             "the mse term (default: TrainConfig's, 1)")
    parser.add_argument("--anchor", type=float, default=None,
                        help="online: weight of the updates' pull toward the trained weights (default: OnlineConfig's; "
                             "0 fits new groups hardest and reorders plans most)")
    parser.add_argument("--plan-weight", type=float, default=None,
                        help="online: weight of the plans' ranking term in the updates (default: OnlineConfig's; "
                             "0 learns from groups alone)")
    parser.add_argument("--seen-plans", default="3,8,16",
                        help="online: comma-separated K: feed each test graph's first K plans, rank its others")
    parser.add_argument("--store", default=None,
                        help="online: the measurement store the dataset was exported from (default: $FUSIONGYM_STORE "
                             "or ~/.cache)")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    import torch

    from fusiongym.reward.costmodel.boosted import BoostedModel, lightgbm_params
    from fusiongym.reward.costmodel.dataset import CostDataset
    from fusiongym.reward.costmodel.evaluate import (BOOSTED_FILE, GNN_FILE, compare, provenance, train_models,
                                                     write_report)
    from fusiongym.reward.costmodel.gnn import TrainConfig
    from fusiongym.reward.costmodel.metrics import markdown_table
    from fusiongym.reward.costmodel.model import CostModel

    torch.set_num_threads(1)
    dataset = CostDataset.load(args.data)
    folder = Path(args.model or args.out)
    config = TrainConfig(loss=args.loss, seed=args.seed, edge_features=args.edge_features)
    training_margin = None if args.action == "online" else args.plan_margin   # online: OnlineConfig's
    for option, value in (("epochs", args.epochs), ("weight_decay", args.weight_decay),
                          ("residual_scale", args.residual_scale), ("plan_margin", training_margin),
                          ("plan_temperature", args.plan_temperature), ("rank_weight", args.rank_weight)):
        if value is not None:
            config = dataclasses.replace(config, **{option: value})
    _check_ranking_options(args)
    if args.action in ("seeds", "ablate", "tune") and args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.action == "seeds":
        return _seeds(dataset, config, args.seeds, folder)
    if args.action == "heldout":
        return _held_out(dataset, config, folder)
    if args.action == "ablate":
        return _ablate(dataset, config, args.seeds, folder)
    if args.action == "tune":
        return _tune(dataset, args.seeds, config.residual_scale, folder)
    if args.action == "train":
        trained = train_models(dataset, config, folder, lightgbm_params(args.lightgbm_leaves, args.lightgbm_min_data))
        gnn_path = folder / GNN_FILE
        print(f"wrote {gnn_path} ({os.path.getsize(gnn_path) / 1024:.1f} KB; loss {trained.losses[0]:.3f} -> "
              f"{trained.losses[-1]:.3f}, best val RMSE of ln µs {trained.gnn.meta['best_val_rmse_ln']}) and "
              f"{folder / BOOSTED_FILE}")
        return 0
    if args.action == "online":
        from fusiongym.reward.costmodel.online import OnlineConfig

        seen_plans = [int(count) for count in args.seen_plans.split(",") if count]
        overrides = {name: value for name, value in (("anchor", args.anchor), ("plan_weight", args.plan_weight),
                                                     ("plan_margin", args.plan_margin)) if value is not None}
        online_config = OnlineConfig(seed=args.seed, **overrides)
        return _online(dataset, CostModel.load(folder / GNN_FILE), args.store, online_config, seen_plans, folder)
    remeasured = CostDataset.load(args.remeasured) if args.remeasured else None
    rows, predicted = compare(dataset, CostModel.load(folder / GNN_FILE), BoostedModel.load(folder / BOOSTED_FILE),
                              remeasured)
    paths = write_report(rows, predicted, dataset.indices("test"), folder, dataset.source)
    print(provenance(dataset.source))
    print(markdown_table(rows))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _seeds(dataset, config, seeds: int, folder) -> int:
    from fusiongym.reward.costmodel.evaluate import seed_spread, spread_summary, write_seed_report
    from fusiongym.reward.costmodel.metrics import markdown_table

    rows = seed_spread(dataset, config, seeds)
    paths = write_seed_report(rows, folder / f"seeds-{config.loss}.csv")
    cases = list(dict.fromkeys(row.model.split(", ", 1)[1] for row in rows))   # splits, then models apart
    print(markdown_table([summary for case in cases for summary in spread_summary(rows, case)]))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _held_out(dataset, config, folder) -> int:
    from fusiongym.reward.costmodel.evaluate import leave_one_model_out, spread_summary, write_bar_report
    from fusiongym.reward.costmodel.metrics import markdown_table

    rows = leave_one_model_out(dataset, config)
    paths = write_bar_report(rows, folder / f"heldout-{config.loss}.csv", ("gnn", "analytical"),
                             "Kendall τ of plans, model held out of training")
    print(markdown_table([*rows, *(summary for name in ("gnn", "analytical")
                                   for summary in spread_summary(rows, name, what="held-out models"))]))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _ablate(dataset, config, seeds: int, folder) -> int:
    from fusiongym.reward.costmodel.evaluate import seed_means, training_model_ablation, write_bar_report
    from fusiongym.reward.costmodel.metrics import markdown_table, write_csv

    rows = training_model_ablation(dataset, config, seeds)
    means = seed_means(rows)
    scored = list(dict.fromkeys(row.model.rsplit(", ", 1)[1] for row in means))
    paths = [write_csv(rows, folder / f"ablation-{config.loss}-seeds.csv"),
             *write_bar_report(means, folder / f"ablation-{config.loss}.csv", scored,
                               f"Kendall τ of plans, mean of {seeds} seeds")]
    print(markdown_table(means))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _check_ranking_options(args: argparse.Namespace) -> None:
    """--plan-temperature and --rank-weight shape a ranking loss while the GNN trains: refused where none is."""
    for flag, value in (("--plan-temperature", args.plan_temperature), ("--rank-weight", args.rank_weight)):
        if value is not None and args.action not in ("train", "seeds", "heldout", "ablate"):
            raise ValueError(f"{flag} sets how the GNN trains; `costmodel {args.action}` trains none. "
                             f"Fix: use it with train, seeds, heldout or ablate")
    if args.plan_temperature is not None and args.loss != "plans":
        raise ValueError(f"--plan-temperature scales the plans loss; --loss {args.loss} has none. "
                         f"Fix: use --loss plans, or leave --plan-temperature out")
    if args.rank_weight is not None and args.loss == "mse":
        raise ValueError("--rank-weight weighs a ranking term; --loss mse has none. "
                         "Fix: use --loss plans, hinge or listmle, or leave --rank-weight out")


def _tune(dataset, seeds: int, residual_scale: float, folder) -> int:
    from fusiongym.reward.costmodel.boosted import TUNING_GRID
    from fusiongym.reward.costmodel.evaluate import boosted_grid, grid_label, seed_means, write_bar_report
    from fusiongym.reward.costmodel.metrics import markdown_table, write_csv

    rows = boosted_grid(dataset, TUNING_GRID, seeds, residual_scale)
    means = seed_means(rows)
    paths = [write_csv(rows, folder / "tune-lightgbm-seeds.csv"),
             *write_bar_report(means, folder / "tune-lightgbm.csv", ("val", "test"),
                               f"LightGBM plan τ, mean of {seeds} seeds")]
    print(markdown_table(means))
    val = [row for row in means if row.model.endswith(", val")]
    if val:
        best = max(val, key=lambda row: row.plan_tau)
        label = best.model.rsplit(", ", 1)[0]
        setting = next(params for params in TUNING_GRID if grid_label(params) == label)
        print(f"val prefers {label} (val plan τ {best.plan_tau:.3f}): `fusiongym costmodel train --lightgbm-leaves "
              f"{setting['num_leaves']} --lightgbm-min-data {setting['min_data_in_leaf']}`")
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _online(dataset, model, store: str | None, config, seen_plans: list[int], folder) -> int:
    import numpy as np

    from fusiongym.reward.costmodel.evaluate import online_plan_ranking, write_bar_report, write_stream_report
    from fusiongym.reward.costmodel.metrics import markdown_table
    from fusiongym.reward.costmodel.online import OnlineLearner, stream_groups
    from fusiongym.reward.costmodel.records import CostModelError, load_measured_set, measuring_device

    measured = load_measured_set(store, device=measuring_device(dataset.source))
    test_models = set(dataset.source.get("models", {}).get("test", []))
    test_graphs = {data.graph_hash for data in dataset.subset("test")}
    stream = [s for s in measured.samples if s.graph_hash in test_graphs]
    if not stream:
        raise CostModelError(f"the store holds no group of the dataset's test models {sorted(test_models)}; "
                             f"pass the --store the dataset was exported from")
    stream = [stream[i] for i in np.random.default_rng(config.seed).permutation(len(stream))]
    learner = OnlineLearner(model, config, replay=dataset.subset("train"))
    errors = stream_groups(learner, stream, measured.graphs)
    paths = write_stream_report(errors, folder)
    quarter = max(len(stream) // 4, 1)
    print(f"{len(stream)} groups of {', '.join(sorted(test_models))} streamed, {learner.updates} online updates; "
          f"mean |ln error| over the last {quarter}: updated {errors.online[-quarter:].mean():.3f}, "
          f"as trained {errors.frozen[-quarter:].mean():.3f} (first {quarter}: "
          f"{errors.online[:quarter].mean():.3f} / {errors.frozen[:quarter].mean():.3f})")
    rows = online_plan_ranking(dataset, model, measured.graphs, seen_plans, config)
    paths += write_bar_report(rows, folder / "online-plans.csv", ("as trained", "updated"),
                              "Kendall τ of the plans not seen")
    print(markdown_table(rows))
    print("wrote " + ", ".join(map(str, paths)))
    return 0
