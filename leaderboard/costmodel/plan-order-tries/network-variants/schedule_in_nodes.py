"""Experiment (EXPERIMENTS.md, "Where the residual errs, by schedule and kind"): the group's schedule embedded
into every node's state, not only added to the head.

``GroupGNN`` sees a group's schedule once, as a bias of its head. Per schedule and heaviest op the training
models' median errors reach ±1 in ln µs (``bias_by_schedule.py``), an interaction of schedule and op that
the message pass could carry if the nodes knew the schedule. The variant adds a learned schedule vector to
each node's input, h0 = relu(op embedding + node features W + schedule vector); ``control`` is the shipped
network through the same code. Trained as `costmodel seeds --loss plans` trains (seeds 0..K-1, early stopping
on val), scored in torch (``torch_seeds.py``); the mean over seeds is printed:

    python schedule_in_nodes.py DATA.pt 8 control
    python schedule_in_nodes.py DATA.pt 8 schedule_in_nodes
"""
import sys

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_seeds import print_seed_means

from fusiongym.reward.costmodel import gnn as gnn_module
from fusiongym.reward.costmodel.dataset import CostDataset
from fusiongym.reward.costmodel.gnn import GroupGNN, TrainConfig


class OpAndSchedule(nn.Module):
    """The op embedding plus the embedding of each node's group schedule (set per batch)."""

    def __init__(self, ops: nn.Embedding, num_schedules: int) -> None:
        super().__init__()
        self.ops = ops
        self.schedules = nn.Embedding(num_schedules, ops.embedding_dim)
        nn.init.normal_(self.schedules.weight, std=0.1)
        self.node_schedule = torch.zeros(0, dtype=torch.long)

    @property
    def weight(self) -> torch.Tensor:
        """The op embedding's, for ``to_arrays``: the numpy model exported on the way lacks the schedule
        term, so this try scores the torch network."""
        return self.ops.weight

    def forward(self, op: torch.Tensor) -> torch.Tensor:
        return self.ops(op) + self.schedules(self.node_schedule)                           # [n, H]


class ScheduleInNodesGNN(GroupGNN):
    def __init__(self, num_ops: int, num_schedules: int, *args, **kwargs) -> None:
        super().__init__(num_ops, num_schedules, *args, **kwargs)
        self.op_embedding = OpAndSchedule(self.op_embedding, num_schedules)

    def forward(self, batch: Batch) -> torch.Tensor:
        self.op_embedding.node_schedule = batch.schedule[batch.batch]                      # [n]
        return super().forward(batch)


def main(data: str, seeds: str, variant: str) -> None:
    if variant == "schedule_in_nodes":
        gnn_module.GroupGNN = ScheduleInNodesGNN
    print_seed_means(CostDataset.load(data), TrainConfig(loss="plans"), int(seeds), variant)


if __name__ == "__main__":
    main(*sys.argv[1:4])
