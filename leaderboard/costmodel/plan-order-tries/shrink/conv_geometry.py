"""Experiment (EXPERIMENTS.md, "Shrinking the residual where seeds disagree"): would a convolution's geometry
help order unseen models' plans?

`which_groups_reorder.py` found the test plans' order lost in their conv2d groups, and a node's features say
nothing of a convolution's window, stride or channels. Before changing the feature schema and the model
format, this asks LightGBM (seconds to train, its design matrix easy to widen): the group's heaviest
convolution's ln window (kH kW), stride, ln input and output channels, ln output pixels and ln channel groups
(all 0 in a group without one), as six more columns of `boosted.design_matrix`. It patches that function and
`FEATURE_NAMES` for this process only. Seeds 0..N-1 with and without, scored on val and test (each test model
apart), mean over seeds; the graphs come from the profile log beside the store:

    python leaderboard/costmodel/plan-order-tries/shrink/conv_geometry.py runs/median/data.pt \
        runs/costmodel/measurements.db 8 OUT.csv

Run at cf95104. From the commit after it on, LightGBM has such columns of its own (`features.CONV_GROUP_FEATURES`,
README "Convolution geometry") and its datasets hold them (format /4); this script answers its question
only at cf95104, on a dataset of that commit.
"""
import math
import sys

import numpy as np
from tqdm import tqdm

from fusiongym.graphs import ComputeGraph
from fusiongym.reward.costmodel import boosted
from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import measured_us, score_cases, seed_means, unseen_cases, write_bar_report
from fusiongym.reward.costmodel.metrics import markdown_table
from fusiongym.reward.costmodel.records import load_measured_set

CONV_FEATURES = ("conv_ln_window", "conv_stride", "conv_ln_in_channels", "conv_ln_out_channels",
                 "conv_ln_out_pixels", "conv_ln_groups")


def conv_geometry(graph: ComputeGraph, nodes) -> list[float]:
    """CONV_FEATURES of the group's conv2d with the most FLOPs; zeros where it has none."""
    convs = [graph.nodes[int(n)] for n in nodes if graph.nodes[int(n)].op == "conv2d"]
    if not convs:
        return [0.0] * len(CONV_FEATURES)
    conv = max(convs, key=lambda node: float(node.flops))
    data, weight = conv.inputs[0].shape, next(spec for spec in conv.inputs if spec.is_param).shape
    out = conv.outputs[0].shape                                             # NCHW; weight O, I / groups, kH, kW
    return [math.log(int(weight[2]) * int(weight[3])), int(data[2]) / int(out[2]), math.log(int(data[1])),
            math.log(int(out[1])), math.log(int(out[2]) * int(out[3])), math.log(int(data[1]) / int(weight[1]))]


def widen_design_matrix(geometry: dict[int, list[float]]) -> None:
    """Insert CONV_FEATURES before the two categorical columns (schedule, dominant op), which
    `BoostedModel.train` finds as the last two."""
    plain = boosted.design_matrix

    def design_matrix(samples):
        matrix = plain(samples)
        conv = np.array([geometry[int(d.sample_id)] for d in samples])
        return np.concatenate([matrix[:, :-2], conv, matrix[:, -2:]], axis=1)

    boosted.design_matrix = design_matrix
    names = boosted.FEATURE_NAMES
    boosted.FEATURE_NAMES = (*names[:-2], *CONV_FEATURES, *names[-2:])


def main(data: str, store: str, seeds: str, out: str) -> None:
    ds = CostDataset.load(data)
    graphs = load_measured_set(store).graphs
    geometry = {int(d.sample_id): conv_geometry(graphs[d.graph_hash], d.nodes) for d in ds.samples}
    measured, cases = measured_us(ds), unseen_cases(ds)
    train, val = ds.subset("train"), ds.subset("val")
    rows = []
    for label in ("LightGBM", "LightGBM + conv geometry"):
        if label != "LightGBM":
            widen_design_matrix(geometry)
        for seed in tqdm(range(int(seeds)), desc=label, unit="model", dynamic_ncols=True):
            model = boosted.BoostedModel.train(train, val, seed)
            rows += score_cases(f"{label}, seed {seed}", np.exp(model.predict_log_us(ds.samples)), measured, cases)
    means = seed_means(rows)
    print(markdown_table(means))
    write_bar_report(means, out, series=list(cases), ylabel="Kendall τ of plans (mean over seeds)")


if __name__ == "__main__":
    main(*sys.argv[1:5])
