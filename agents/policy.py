"""The GNN policy of FusionEnv for sb3-contrib's MaskablePPO.

SB3 computes ``logits = action_net(mlp_extractor(features_extractor(obs)))``. Here the
features extractor *is* the policy: it runs ``FusionGNN`` on the batch of padded
observations and returns, per observation, the full row of action logits followed by the
value; ``SplitLatent`` cuts that row in two and ``action_net`` / ``value_net`` are
identities. (A ``Linear`` action net over E + N*S + 1 actions would hold ~50M weights
and mix up unrelated slots.)

Shapes: B observations, padded to N nodes and E edges; A = E + N*S + 1 actions; M real
nodes and K real edges in the whole batch. Padded observations are flattened with tensor
ops only (no loop over graphs): real nodes fill the first slots of each row, so the
flat index of node v of observation b is ``cumsum(node_mask)[b, v] - 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from .config import DEFAULT_HIDDEN, DEFAULT_LAYERS
from .fusion_policy import (EDGE_FLOATS, FEATURE_SCALE, GLOBAL_INDEX, GLOBAL_SCALE, GROUP_SIZE_SCALE, NUM_KINDS,
                            OTHER_OP, EncodedBatch, FloatColumns)
from .gnn import FusionGNN, ScatterStructure

POLICY_OUTPUT_GAIN = 0.01   # near-uniform first policy over the legal actions (SB3's action_net gain)


class ObservationLayout:
    """Sizes read off the observation space: N nodes, E edges, S schedules, A actions."""

    def __init__(self, observation_space: spaces.Dict) -> None:
        self.max_nodes = observation_space["node_op"].shape[0]
        self.max_edges = observation_space["edge_index"].shape[1]
        self.num_schedules = int(observation_space["node_schedule"].high.max())
        self.num_actions = self.max_edges + self.max_nodes * self.num_schedules + 1
        self.vocab_size = int(observation_space["node_op"].high.max()) + 1


class GraphBatch:
    """The inputs of ``FusionGNN`` for a batch of padded observations, plus where each real
    node and edge sits in the padded action row (the training twin of ``encode_graphs``)."""

    def __init__(self, obs: dict[str, torch.Tensor], layout: ObservationLayout) -> None:
        real = obs["node_mask"] > 0.5                                                  # [B, N]
        batch_size = real.shape[0]
        self.node_b, self.node_v = real.nonzero(as_tuple=True)                         # [M], [M]
        node_pos = torch.cumsum(real.flatten().long(), 0).view(batch_size, -1) - 1    # [B, N]
        b, v = self.node_b, self.node_v
        op = obs["node_op"][b, v].long()                                               # [M]
        self.op = torch.where(op < layout.vocab_size, op, torch.full_like(op, OTHER_OP))
        group = node_pos[b, obs["node_group"][b, v].long()]                            # [M] flat id of the group label
        group_size = torch.bincount(group, minlength=group.shape[0])[group]            # [M]
        device = real.device
        self.glob = (obs["global"][:, torch.as_tensor(GLOBAL_INDEX, device=device)]
                     * torch.as_tensor(GLOBAL_SCALE, device=device))                   # [B, G]
        self.floats = torch.cat([
            obs["node_feat"][b, v] * FEATURE_SCALE,                                    # [M, 5]
            torch.log2(group_size.float()).unsqueeze(1) * GROUP_SIZE_SCALE,            # [M, 1]
            nn.functional.one_hot(obs["node_kind"][b, v].long(), NUM_KINDS).float(),   # [M, NUM_KINDS]
            nn.functional.one_hot(obs["node_schedule"][b, v].long(), layout.num_schedules + 1).float(),  # [M, S+1]
            self.glob[b],                                                              # [M, G]
        ], dim=1)

        state = obs["edge_state"]                                                      # [B, E] 0 pad, 1, 2
        self.edge_b, self.edge_k = (state > 0.5).nonzero(as_tuple=True)                # [K], [K]
        eb, ek = self.edge_b, self.edge_k
        edge_index = obs["edge_index"].long()                                          # [B, 2, E]
        src = node_pos[eb, edge_index[eb, 0, ek]]                                      # [K]
        dst = node_pos[eb, edge_index[eb, 1, ek]]                                      # [K]
        self.end_index = torch.stack([2 * src, 2 * dst + 1], dim=1)                    # [K, 2]
        self.edge_x = torch.stack([obs["edge_feat"][eb, ek, 0] * FEATURE_SCALE,
                                   (state[eb, ek] > 1.5).float()], dim=1)              # [K, 2]
        self.structure = ScatterStructure(src, dst, b, batch_size)
        self.batch_size = batch_size

    def run(self, gnn: FusionGNN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        edge_context = self.structure.edge_mean(self.edge_x).flatten(1)               # [M, 2C]
        return gnn(self.op, self.floats, self.glob, self.end_index, self.edge_x, edge_context, self.structure)


class TorchEngine:
    """``FusionPolicy`` engine on the torch network (scatter structure): evaluation during
    training, and the reference the exported ONNX model is tested against."""

    def __init__(self, gnn: FusionGNN) -> None:
        self.gnn = gnn

    @torch.no_grad()
    def run(self, batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        t = {name: torch.from_numpy(getattr(batch, name))
             for name in ("op", "floats", "glob", "node_graph", "src", "dst", "end_index", "edge_x")}
        structure = ScatterStructure(t["src"], t["dst"], t["node_graph"], batch.glob.shape[0])
        edge_context = structure.edge_mean(t["edge_x"]).flatten(1)
        outputs = self.gnn(t["op"], t["floats"], t["glob"], t["end_index"], t["edge_x"], edge_context, structure)
        return tuple(o.numpy() for o in outputs)


class FusionExtractor(BaseFeaturesExtractor):
    """Padded observations [B, ...] -> [B, A + 1]: the action logits, then the value.

    Padding slots get logit 0; the action mask removes them (and every illegal action).
    """

    def __init__(self, observation_space: spaces.Dict, hidden: int = DEFAULT_HIDDEN,
                 layers: int = DEFAULT_LAYERS) -> None:
        layout = ObservationLayout(observation_space)
        super().__init__(observation_space, features_dim=layout.num_actions + 1)
        self.layout = layout
        self.gnn = FusionGNN(layout.vocab_size, FloatColumns(layout.num_schedules).count, len(GLOBAL_INDEX),
                             EDGE_FLOATS, layout.num_schedules, hidden=hidden, layers=layers)
        for head in (self.gnn.edge_head.out, self.gnn.schedule_head, self.gnn.stop_head.net[-1]):
            nn.init.orthogonal_(head.weight, gain=POLICY_OUTPUT_GAIN)
            nn.init.zeros_(head.bias)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        layout = self.layout
        batch = GraphBatch(obs, layout)
        edge_logits, schedule_logits, stop, value = batch.run(self.gnn)   # [K], [M, S], [B], [B]
        e, s, a = layout.max_edges, layout.num_schedules, layout.num_actions
        b = batch.batch_size
        slots = torch.cat([
            batch.edge_b * a + batch.edge_k,                                                       # [K] fuse e
            ((batch.node_b * a + e + batch.node_v * s).unsqueeze(1)
             + torch.arange(s, device=stop.device)).flatten(),                                    # [M*S] schedule
            torch.arange(b, device=stop.device) * a + a - 1,                                       # [B] stop
        ])
        values = torch.cat([edge_logits, schedule_logits.flatten(), stop])
        logits = torch.zeros(b * a, device=stop.device, dtype=values.dtype).index_put((slots,), values)
        return torch.cat([logits.view(b, a), value.unsqueeze(1)], dim=1)                            # [B, A + 1]


class SplitLatent(nn.Module):
    """The MLP extractor slot: [B, A + 1] -> ([B, A] logits, [B, 1] value)."""

    def __init__(self, num_actions: int) -> None:
        super().__init__()
        self.latent_dim_pi = num_actions
        self.latent_dim_vf = 1

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, :self.latent_dim_pi]

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, self.latent_dim_pi:]


class FusionGNNPolicy(MaskableActorCriticPolicy):
    """MaskablePPO policy whose features extractor is the whole GNN actor-critic.

    Sizes: ``policy_kwargs=dict(features_extractor_kwargs=dict(hidden=8, layers=2))`` (the defaults).
    """

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Discrete, lr_schedule,
                 **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", FusionExtractor)
        kwargs["ortho_init"] = False          # the extractor initializes its own output layers
        kwargs["share_features_extractor"] = True
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = SplitLatent(self.features_extractor.layout.num_actions)

    def _build(self, lr_schedule) -> None:
        self._build_mlp_extractor()
        self.action_net = nn.Identity()
        self.value_net = nn.Identity()
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    @property
    def gnn(self) -> FusionGNN:
        return self.features_extractor.gnn


def parameter_count(gnn: FusionGNN) -> int:
    return sum(p.numel() for p in gnn.parameters())

