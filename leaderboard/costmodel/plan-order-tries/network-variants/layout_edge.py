"""Experiment (EXPERIMENTS.md, "Where the residual errs, by schedule and kind"): an edge feature for a layout
prologue.

Default-schedule matmuls carry the GNN's largest error on the models it trains on, with opposite signs for
Llama's groups (a `permute_dims` or `reshape` inside the group feeding the matmul, which TVM inlines into
strided operand loads) and GPT's. Here each internal edge gets a third feature, 1 when a layout op
(`permute_dims`, `reshape`) feeds a contraction (`matmul`, `conv2d`), and the network uses edge features
(`--edge-features`). ``control`` is the same network with the two shipped edge features. Trained as
`costmodel seeds --loss plans --edge-features` trains (seeds 0..K-1), scored in torch (``torch_seeds.py``);
the mean over seeds:

    python layout_edge.py DATA.pt 8 control
    python layout_edge.py DATA.pt 8 layout_edge
"""
import sys

import torch
from torch_seeds import print_seed_means

from fusiongym.reward.costmodel import features
from fusiongym.reward.costmodel import gnn as gnn_module
from fusiongym.reward.costmodel import model as model_module
from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.gnn import TrainConfig

LAYOUT_OPS, CONTRACTIONS = {"permute_dims", "reshape"}, {"matmul", "conv2d"}


def add_layout_edge_column(ds: CostDataset) -> None:
    """Each sample's edge_attr [e, 2] -> [e, 3]: 1 where a layout op feeds a contraction."""
    layout = torch.tensor([op in LAYOUT_OPS for op in ds.op_vocab])
    contraction = torch.tensor([op in CONTRACTIONS for op in ds.op_vocab])
    for data in ds.samples:
        src, dst = data.edge_index
        flag = (layout[data.op[src]] & contraction[data.op[dst]]).float()[:, None]       # [e, 1]
        data.edge_attr = torch.cat([data.edge_attr, flag], dim=1)
    names = (*features.EDGE_FEATURES, "layout_op_into_contraction")
    gnn_module.EDGE_FEATURES = model_module.EDGE_FEATURES = names


def main(data: str, seeds: str, variant: str) -> None:
    ds = CostDataset.load(data)
    if variant == "layout_edge":
        add_layout_edge_column(ds)
    print_seed_means(ds, TrainConfig(loss="plans", edge_features=True), int(seeds), variant)


if __name__ == "__main__":
    main(*sys.argv[1:4])
