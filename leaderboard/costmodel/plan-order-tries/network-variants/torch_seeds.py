"""The loop the network-variant tries share: train seeds 0..K-1 as `costmodel seeds` does and score each
trained torch network (a variant's extra weights are not in the numpy model file)."""
import numpy as np
import torch
from torch_geometric.data import Batch

from fusiongym.reward.costmodel import gnn as gnn_module
from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.evaluate import gnn_of_seed, measured_us, score_cases, seed_means, unseen_cases
from fusiongym.reward.costmodel.gnn import TrainConfig
from fusiongym.reward.costmodel.metrics import Metrics, markdown_table


def print_seed_means(ds: CostDataset, config: TrainConfig, seeds: int, name: str) -> None:
    """Print the mean over seeds of ``seed_rows``."""
    print(markdown_table(seed_means(seed_rows(ds, config, seeds, name))))


def seed_rows(ds: CostDataset, config: TrainConfig, seeds: int, name: str) -> list[Metrics]:
    """Val / test / per-test-model scores of ``seeds`` torch networks trained with ``config``:
    rows ``"<name>, seed <s>, <case>"``."""
    measured, cases = measured_us(ds), unseen_cases(ds)
    trained = []
    build_model = gnn_module.build_model
    gnn_module.build_model = lambda net, *args, **kwargs: trained.append(net) or build_model(net, *args, **kwargs)
    batch = Batch.from_data_list(list(ds.samples))
    rows = []
    for seed in range(seeds):
        gnn_of_seed(ds, config, seed)
        with torch.no_grad():
            log_us = trained[-1].eval().log_us(batch).double().numpy()                       # [N] ln µs
        rows += score_cases(f"{name}, seed {seed}", np.exp(log_us), measured, cases)
    gnn_module.build_model = build_model
    return rows
