"""Train both learned models on a dataset and compare them with the analytical backend.

Every model is scored on the same test split (models never trained on) with
``metrics.score``; ``write_report`` leaves a CSV, a Markdown table and a PNG of predicted
vs measured latency per model; ``write_stream_report`` the error curve of online updates.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from tqdm import tqdm

from fusiongym.graphs import ComputeGraph

from ..store import atomic_output
from .boosted import BoostedModel
from .dataset import CostDataset
from .gnn import GroupGNN, TrainConfig, train_gnn
from .metrics import Metrics, markdown_table, noise_ceiling, over_numbers, score, write_csv
from .model import CostModel
from .online import OnlineConfig, OnlineLearner, StreamErrors, moving_mean
from .records import CostModelError, MeasuringSetup

GNN_FILE = "model.npz"
BOOSTED_FILE = "lightgbm.json"


@dataclass
class TrainedModels:
    gnn: CostModel
    boosted: BoostedModel
    losses: list[float]


def train_models(dataset: CostDataset, config: TrainConfig = TrainConfig(), out: str | os.PathLike | None = None,
                 lightgbm_params: Mapping[str, object] | None = None) -> TrainedModels:
    """Fit the GNN and LightGBM (``lightgbm_params``: overrides of ``boosted.PARAMS``) on the train
    split (validation: the val split); save to ``out``."""
    train, val = dataset.subset("train"), dataset.subset("val")
    if not train:
        raise ValueError("the dataset's train split is empty: re-export it holding out fewer models")
    meta = {"data_hash": dataset.source.get("content_hash", dataset.content_hash), "source": dataset.source}
    result = train_gnn(train, val, dataset.op_vocab, dataset.schedules, analytical_profile(dataset), config, meta,
                       plans=dataset.plans_of("train"))
    boosted = BoostedModel.train(train, val, config.seed, meta, params=lightgbm_params,
                                 residual_scale=config.residual_scale)
    if out is not None:
        folder = Path(out)
        result.model.save(folder / GNN_FILE)
        boosted.save(folder / BOOSTED_FILE)
    return TrainedModels(result.model, boosted, result.losses)


def analytical_profile(dataset: CostDataset) -> dict:
    """The device profile the dataset's analytical priors were computed with."""
    profile = dataset.source.get("analytical_profile")
    if profile is None:
        raise CostModelError("the dataset records no analytical profile (exported by an older fusiongym). "
                             "Fix: re-export it with `fusiongym dataset export`")
    return profile


@torch.no_grad()
def gnn_log_us(model: CostModel, samples: Sequence[Data]) -> np.ndarray:
    """[B] ln µs the GNN predicts (the torch twin of the numpy model, batched over groups)."""
    net = GroupGNN.from_model(model).eval()
    batch = Batch.from_data_list(list(samples))
    return net.log_us(batch).double().numpy()


def compare(dataset: CostDataset, gnn: CostModel, boosted: BoostedModel, remeasured: CostDataset | None = None
            ) -> tuple[list[Metrics], dict[str, np.ndarray]]:
    """Metrics of the GNN, LightGBM and analytical backend on the test split (rows named after
    the model kind) and, where it holds two or more models, on each apart (``"<kind>, <model>"``:
    a mean over architectures hides which one a model fails on), and their µs per sample; with
    ``remeasured`` (the same test groups profiled again into another store), also those timings
    scored as a model (how far the measurements agree with themselves) and ``"exact model"``:
    what a model knowing every group's true latency would score against one store
    (``metrics.noise_ceiling``)."""
    test = dataset.indices("test")
    if len(test) < 2:
        raise ValueError(f"the dataset's test split has {len(test)} groups; export it with --test-models naming "
                         f"a measured model")
    measured = measured_us(dataset)
    predicted = {"gnn": np.exp(gnn_log_us(gnn, dataset.samples)),
                 "lightgbm": np.exp(boosted.predict_log_us(dataset.samples)),
                 "analytical": analytical_us(dataset)}
    if remeasured is not None:
        predicted["re-measured"] = remeasured_us(dataset, remeasured, test)
    cases = unseen_cases(dataset, ("test",))
    rows = [score(_row_name(name, case), us, measured, samples, plans)
            for name, us in predicted.items() for case, (samples, plans) in cases.items()]
    if remeasured is not None:
        rows += [noise_ceiling(_row_name("exact model", case), measured, predicted["re-measured"], samples, plans)
                 for case, (samples, plans) in cases.items()]
    return rows, {**predicted, "measured": measured}


def _row_name(name: str, case: str) -> str:
    """The whole test split's row is the model kind alone; a test model's is ``"<kind>, <model>"``."""
    return name if case == "test" else f"{name}, {case}"


def measured_us(dataset: CostDataset) -> np.ndarray:
    """[num_samples] measured µs of every sample."""
    return np.exp(np.array([float(d.y) for d in dataset.samples]))


def analytical_us(dataset: CostDataset) -> np.ndarray:
    """[num_samples] the analytical backend's µs of every sample (the dataset's prior)."""
    return np.array([float(d.analytical_us) for d in dataset.samples])


def plans_of_split(dataset: CostDataset, split: str) -> list[dict]:
    """The measured plans of the models in ``split``."""
    models = set(models_of_split(dataset, split))
    return [plan for plan in dataset.plans if plan["model"] in models]


def seed_spread(dataset: CostDataset, config: TrainConfig, seeds: int) -> list[Metrics]:
    """The GNN trained with seeds 0..seeds-1 (``config`` otherwise), each scored on the val and
    the test split: what a metric owes to the seed rather than to the model (trained on a
    handful of architectures, a model's plan τ on unseen ones moves with the seed). Rows
    ``"seed <s>, <split>"``; where a split holds two or more models, also ``"seed <s>, <model>"``
    for each of them apart."""
    measured, scored = measured_us(dataset), unseen_cases(dataset)
    rows = []
    for seed in tqdm(range(seeds), desc=f"seeds ({config.loss})", unit="model", dynamic_ncols=True):
        model = gnn_of_seed(dataset, config, seed)
        rows += score_cases(f"seed {seed}", np.exp(gnn_log_us(model, dataset.samples)), measured, scored)
    return rows


def gnn_of_seed(dataset: CostDataset, config: TrainConfig, seed: int) -> CostModel:
    """The GNN ``config`` trains with ``seed`` on the train split (early stopping on val)."""
    return train_gnn(dataset.subset("train"), dataset.subset("val"), dataset.op_vocab, dataset.schedules,
                     analytical_profile(dataset), replace(config, seed=seed), plans=dataset.plans_of("train")).model


def unseen_cases(dataset: CostDataset, splits: Sequence[str] = ("val", "test")
                 ) -> dict[str, tuple[list[int], list[dict]]]:
    """What ``seed_spread``, ``boosted_grid`` and ``compare`` score each model on: each of ``splits``
    that holds groups and, where one holds two or more models, each of them apart;
    name -> (sample indices, plans)."""
    splits = [split for split in splits if dataset.indices(split)]
    apart = [split for split in splits if len(models_of_split(dataset, split)) > 1]
    return {**{split: (dataset.indices(split), plans_of_split(dataset, split)) for split in splits},
            **groups_and_plans_by_model(dataset, apart)}


def score_cases(name: str, predicted_us: np.ndarray, measured: np.ndarray,
                cases: Mapping[str, tuple[Sequence[int], Sequence[dict]]]) -> list[Metrics]:
    """``predicted_us`` scored on each case (sample indices, plans): rows ``"<name>, <case>"``."""
    return [score(f"{name}, {case}", predicted_us, measured, samples, plans)
            for case, (samples, plans) in cases.items()]


def models_of_split(dataset: CostDataset, split: str) -> list[str]:
    return dataset.source.get("models", {}).get(split, [])


def groups_and_plans_by_model(dataset: CostDataset, splits: Sequence[str]) -> dict[str, tuple[list[int], list[dict]]]:
    """model -> (its sample indices, its plans), for every model of ``splits``: to score each apart."""
    return {model: ([i for i, data in enumerate(dataset.samples) if data.model == model],
                    [plan for plan in dataset.plans if plan["model"] == model])
            for split in splits for model in models_of_split(dataset, split)}


def spread_summary(rows: Sequence[Metrics], suffix: str, what: str = "seeds") -> list[Metrics]:
    """Mean, min and max over the rows whose name ends in ``", {suffix}"`` (``seed_spread``'s
    rows of one split or one model, ``leave_one_model_out``'s of one model kind); nan entries are skipped.
    Counts (groups, plans, graphs) are the rows' common value, or their total where they differ."""
    chosen = [row for row in rows if row.model.endswith(f", {suffix}")]
    fields = asdict(chosen[0])
    counts = {}
    for key in (key for key, value in fields.items() if isinstance(value, int)):
        values = [getattr(row, key) for row in chosen]
        counts[key] = values[0] if len(set(values)) == 1 else sum(values)
    numbers = [key for key, value in fields.items() if isinstance(value, float)]
    return [replace(chosen[0], model=f"{name} of {len(chosen)} {what}, {suffix}", **counts,
                    **{key: over_numbers(reduce, [getattr(row, key) for row in chosen]) for key in numbers})
            for name, reduce in (("mean", np.mean), ("min", np.min), ("max", np.max))]


def leave_one_model_out(dataset: CostDataset, config: TrainConfig) -> list[Metrics]:
    """For each model of the train and val splits, the GNN trained on all the others (no
    validation: the last state) and scored on that model's groups and plans, beside the
    analytical backend on the same: how a choice transfers to an architecture never trained
    on, over many architectures instead of one val model. The test split is never touched."""
    measured, analytical = measured_us(dataset), analytical_us(dataset)
    pool = [i for i, split in enumerate(dataset.split) if split in ("train", "val")]
    models = sorted({dataset.samples[i].model for i in pool})
    if len(models) < 2:
        raise CostModelError(f"leaving one model out needs two or more train and val models, the dataset has "
                             f"{models}. Fix: profile more models")
    rows = []
    for held_out in tqdm(models, desc=f"leave one model out ({config.loss})", unit="model", dynamic_ncols=True):
        train = [i for i in pool if dataset.samples[i].model != held_out]
        trained = train_gnn([dataset.samples[i] for i in train], [], dataset.op_vocab, dataset.schedules,
                            analytical_profile(dataset), config, plans=dataset.plans_within(train))
        predicted = np.exp(gnn_log_us(trained.model, dataset.samples))
        samples = [i for i in pool if dataset.samples[i].model == held_out]
        held_plans = [plan for plan in dataset.plans if plan["model"] == held_out]
        rows += [score(f"{held_out}, {name}", us, measured, samples, held_plans)
                 for name, us in (("gnn", predicted), ("analytical", analytical))]
    return rows


ALL_TRAINING_MODELS = "all"


def training_model_ablation(dataset: CostDataset, config: TrainConfig, seeds: int) -> list[Metrics]:
    """Which training architectures a model's scores on the unseen ones rest on. The GNN is
    trained on the whole train split (label ``"all"``) and without each train model in turn
    (``"no <model>"``), with seeds 0..seeds-1 (validation: the val split, as in ``seed_spread``),
    and scored on every val and test model apart. Rows: ``"<label>, seed <s>, <scored model>"``."""
    measured = measured_us(dataset)
    train = dataset.indices("train")
    models = sorted({dataset.samples[i].model for i in train})
    if len(models) < 2:
        raise CostModelError(f"ablating training models needs two or more of them, the train split has {models}. "
                             f"Fix: profile more models, or re-export holding out fewer")
    scored = groups_and_plans_by_model(dataset, ("val", "test"))
    cases = [(dropped, seed) for dropped in (None, *models) for seed in range(seeds)]   # None: drop nothing
    rows = []
    for dropped, seed in tqdm(cases, desc=f"training-model ablation ({config.loss})", unit="model",
                              dynamic_ncols=True):
        label = ALL_TRAINING_MODELS if dropped is None else f"no {dropped}"
        kept = [i for i in train if dataset.samples[i].model != dropped]
        trained = train_gnn([dataset.samples[i] for i in kept], dataset.subset("val"), dataset.op_vocab,
                            dataset.schedules, analytical_profile(dataset), replace(config, seed=seed),
                            plans=dataset.plans_within(kept))
        rows += score_cases(f"{label}, seed {seed}", np.exp(gnn_log_us(trained.model, dataset.samples)), measured,
                            scored)
    return rows


def seed_means(rows: Sequence[Metrics]) -> list[Metrics]:
    """Rows named ``"<label>, seed <s>, <case>"`` (``training_model_ablation``'s, ``boosted_grid``'s)
    averaged over seeds: one ``"<label>, <case>"`` row each."""
    cases = dict.fromkeys((row.model.split(", seed ")[0], row.model.rsplit(", ", 1)[1]) for row in rows)
    return [replace(spread_summary([row for row in rows if row.model.startswith(f"{label}, seed ")], scored)[0],
                    model=f"{label}, {scored}") for label, scored in cases]


def boosted_grid(dataset: CostDataset, grid: Sequence[Mapping[str, object]], seeds: int,
                 residual_scale: float = 1.0) -> list[Metrics]:
    """LightGBM trained at each setting of ``grid`` (overrides of ``boosted.PARAMS``) with seeds
    0..seeds-1 (early stopping on the val split, as shipped) and ``residual_scale``, each scored
    on val and test (``unseen_cases``): the baseline's capacity, chosen on val as the GNN's loss is. Rows:
    ``"<setting>, seed <s>, <split or model>"``, the setting as ``grid_label`` writes it."""
    measured, scored = measured_us(dataset), unseen_cases(dataset)
    train, val = dataset.subset("train"), dataset.subset("val")
    cases = [(params, seed) for params in grid for seed in range(seeds)]
    rows = []
    for params, seed in tqdm(cases, desc="LightGBM grid", unit="model", dynamic_ncols=True):
        model = BoostedModel.train(train, val, seed, params=params, residual_scale=residual_scale)
        predicted = np.exp(model.predict_log_us(dataset.samples))
        rows += score_cases(f"{grid_label(params)}, seed {seed}", predicted, measured, scored)
    return rows


def grid_label(params: Mapping[str, object]) -> str:
    """How ``boosted_grid`` names a setting in its rows: ``name=value`` joined by spaces."""
    return " ".join(f"{name}={value}" for name, value in params.items())


def online_plan_ranking(dataset: CostDataset, model: CostModel, graphs: Mapping[str, ComputeGraph],
                        seen_plans: Sequence[int], config: OnlineConfig = OnlineConfig(), split: str = "test"
                        ) -> list[Metrics]:
    """Does feedback on a new model's first plans help rank its other plans? For each graph of
    ``split`` and each K of ``seen_plans``, a fresh learner is fed the graph's first K plans in
    the order they were logged (baselines, random, annealing, trajectory), as an env on a real
    backend would meet them: each plan's new groups (``observe``), then the plan
    (``observe_plan``). The model as trained and the updated one are then scored on the
    graph's other plans (plan τ) and on those plans' groups the learner never saw."""
    measured = measured_us(dataset)
    as_trained = np.exp(gnn_log_us(model, dataset.samples))
    by_graph: dict[str, list[dict]] = {}
    for plan in plans_of_split(dataset, split):
        by_graph.setdefault(plan["graph_hash"], []).append(plan)
    cases = [(graph_hash, count) for graph_hash in by_graph for count in seen_plans]
    replay = dataset.subset("train")
    rows = []
    for graph_hash, count in tqdm(cases, desc="online plan ranking", unit="case", dynamic_ncols=True):
        plans = by_graph[graph_hash]
        seen = sorted({index for plan in plans[:count] for index in plan["samples"]})
        rest = plans[count:]
        unseen = sorted({index for plan in rest for index in plan["samples"]} - set(seen))
        name = f"{plans[0]['model']}, {count} plans seen"
        if len(rest) < 2 or len(unseen) < 2:
            raise CostModelError(f"{name}: {len(rest)} other plans with {len(unseen)} groups never seen are left "
                                 f"to score ({len(plans)} measured). Fix: pass smaller --seen-plans")
        learner = OnlineLearner(model, config, replay=replay)
        for plan in plans[:count]:
            feed_plan(learner, dataset, graphs[graph_hash], plan["samples"], measured)
        learner.flush()
        updated = np.exp(gnn_log_us(learner.model, dataset.samples))
        rows += [score(f"{name}, as trained", as_trained, measured, unseen, rest),
                 score(f"{name}, updated", updated, measured, unseen, rest)]
    return rows


def feed_plan(learner: OnlineLearner, dataset: CostDataset, graph: ComputeGraph, samples: Sequence[int],
               measured: np.ndarray) -> None:
    """Hand ``learner`` one measured plan of ``dataset`` (its groups: ``samples``), as ``OnlineBackend`` does."""
    learner.observe_plan(graph, [dataset.samples[index].nodes.tolist() for index in samples],
                         [dataset.schedules[int(dataset.samples[index].schedule)] for index in samples],
                         [float(measured[index]) for index in samples])


def remeasured_us(dataset: CostDataset, remeasured: CostDataset, samples: Sequence[int]) -> np.ndarray:
    """[num_samples] µs: ``dataset``'s own measurement, replaced for ``samples`` by the same
    group's (graph, nodes, schedule) measurement in ``remeasured``."""
    def key(data: Data, schedules: Sequence[str]) -> tuple:
        return data.graph_hash, tuple(data.nodes.tolist()), schedules[int(data.schedule)]

    other = {key(d, remeasured.schedules): float(d.y) for d in remeasured.samples}
    log_us = np.array([float(d.y) for d in dataset.samples])
    missing = 0
    for index in samples:
        found = other.get(key(dataset.samples[index], dataset.schedules))
        if found is None:
            missing += 1
        else:
            log_us[index] = found
    if missing:
        raise CostModelError(f"{missing} of the {len(samples)} test groups are not in the re-measured dataset. Fix: "
                             f"profile the same log into the second store (copy <store>.plans.jsonl beside it, "
                             f"then `fusiongym profile ... --takes K --store SECOND`) and export it with the same "
                             f"--test-models")
    return np.exp(log_us)


def write_report(rows: Sequence[Metrics], predicted: dict[str, np.ndarray], test: Sequence[int],
                 folder: str | os.PathLike, source: dict) -> list[Path]:
    """metrics.csv, metrics.md (headed by ``provenance(source)``) and metrics.png (predicted vs
    measured µs of the test groups, one panel per model kind: the rows named in ``predicted``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    csv_path = write_csv(rows, folder / "metrics.csv")
    md_path = folder / "metrics.md"
    with atomic_output(md_path) as tmp:
        tmp.write_text(provenance(source) + "\n\n" + markdown_table(rows) + "\n", encoding="utf-8")
    measured = predicted["measured"][list(test)]
    kinds = [row for row in rows if row.model in predicted]
    figure, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 4), squeeze=False)
    for axis, row in zip(axes[0], kinds):
        axis.loglog(measured, predicted[row.model][list(test)], ".", alpha=0.5)
        low, high = measured.min(), measured.max()
        axis.plot([low, high], [low, high], "k--", linewidth=0.8)
        axis.set_title(f"{row.model}: τ groups {row.group_tau:.2f}, plans {row.plan_tau:.2f}")
        axis.set_xlabel("measured µs")
        axis.set_ylabel("predicted µs")
    png_path = _save_png(figure, folder / "metrics.png")
    return [csv_path, md_path, png_path]


def provenance(source: dict) -> str:
    """What a report's numbers rest on, in one line: the labels' machine and backend (the same
    model scored plan τ 0.65 on one machine's labels and 0.42 on another's), the data hash and
    the test models."""
    setup = source.get("measured_on")
    where = str(MeasuringSetup(**setup)) if setup else "a machine the dataset does not name (exported before 2026-11-24)"
    return (f"Labels measured on {where}; data hash {source.get('content_hash', 'unknown')}; "
            f"test models {', '.join(source.get('models', {}).get('test', [])) or 'none'}.")


def write_stream_report(errors: StreamErrors, folder: str | os.PathLike, window: int = 32) -> list[Path]:
    """online.csv (error per streamed group, learning and frozen model, and their moving
    means over ``window`` groups) and online.png (the two moving means)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    online, frozen = moving_mean(errors.online, window), moving_mean(errors.frozen, window)
    csv_path = folder / "online.csv"
    with atomic_output(csv_path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["group", "online_abs_log_error", "frozen_abs_log_error",
                             f"online_mean{window}", f"frozen_mean{window}"])
            writer.writerows(zip(range(len(online)), errors.online, errors.frozen, online, frozen))
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(frozen, label="model as trained")
    axis.plot(online, label="updated online (bandit feedback)")
    axis.set_xlabel("groups measured on the real backend")
    axis.set_ylabel(f"|ln predicted - ln measured|, mean of last {window}")
    axis.legend()
    return [csv_path, _save_png(figure, folder / "online.png")]


def write_bar_report(rows: Sequence[Metrics], path: str | os.PathLike, series: Sequence[str], ylabel: str
                     ) -> list[Path]:
    """``rows`` as a CSV at ``path`` and, beside it, a PNG of plan τ in one bar per series for
    each case: the rows named ``"<case>, <series>"`` (``leave_one_model_out``'s GNN and
    analytical backend per held-out model, ``online_plan_ranking``'s model as trained and
    updated per test graph and number of plans seen, ``seed_means``' scored models per
    training set or splits per LightGBM setting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path = write_csv(rows, path)
    cases = [row.model.rsplit(", ", 1)[0] for row in rows if row.model.endswith(f", {series[0]}")]
    figure, axis = plt.subplots(figsize=(max(6.0, 0.45 * len(series) * len(cases)), 4))
    width = 0.8 / len(series)
    for number, name in enumerate(series):
        taus = [row.plan_tau for row in rows if row.model.endswith(f", {name}")]
        axis.bar(np.arange(len(cases)) + (number - (len(series) - 1) / 2) * width, taus, width, label=name)
    axis.set_xticks(np.arange(len(cases)), cases, rotation=30, ha="right")
    axis.set_ylabel(ylabel)
    axis.axhline(0, color="k", linewidth=0.6)
    axis.legend()
    return [csv_path, _save_png(figure, csv_path.with_suffix(".png"))]


def write_seed_report(rows: Sequence[Metrics], path: str | os.PathLike) -> list[Path]:
    """``seed_spread``'s rows as a CSV at ``path`` and, beside it, a PNG of each seed's plan τ
    (all pairs and pairs ≥ 10 % apart) per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path = write_csv(rows, path)
    figure, axis = plt.subplots(figsize=(7, 4))
    for split, color in (("val", "tab:blue"), ("test", "tab:orange")):
        chosen = [row for row in rows if row.model.endswith(f", {split}")]
        seeds = range(len(chosen))
        axis.plot(seeds, [row.plan_tau for row in chosen], "o", color=color, label=f"{split}: plan τ")
        axis.plot(seeds, [row.plan_tau_apart for row in chosen], "^", color=color, alpha=0.6,
                  label=f"{split}: plan τ, pairs ≥ 10 % apart")
    axis.set_xlabel("seed")
    axis.set_ylabel("Kendall τ of plans (mean per graph)")
    axis.legend(fontsize=8)
    return [csv_path, _save_png(figure, csv_path.with_suffix(".png"))]


def _save_png(figure, path: Path) -> Path:
    """``figure`` laid out, written atomically as a PNG and closed."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path
