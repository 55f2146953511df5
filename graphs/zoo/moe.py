"""Mixtral-style sparse MoE layer whose routing is a runtime input.

A token-choice MoE layer's shapes depend on data: how many tokens each expert receives
is known only after the router ran. To make that a runtime-dynamic graph property, the
layer takes the routing as inputs, and every expert's token count is its own symbolic
dim ``tokens_e{i}``:

    forward(x (T, d), idx_e0 (n_0,), ..., idx_e7 (n_7,), combine_pos (T, k), expert_ids (T, k))

- the router (gate linear + softmax) is computed in-graph from ``x``; its probabilities
  at ``expert_ids``, renormalized over the k choices, are the combine weights (as in
  Mixtral: softmax over the top-k logits), so the router's FLOPs are in the dataflow;
- expert ``e`` gathers its tokens ``x[idx_e]`` and applies its SwiGLU FFN;
- the expert outputs are concatenated, and token ``t`` sums rows ``combine_pos[t, j]``
  of that concatenation weighted by its combine weights.

:func:`routing_inputs` derives the index inputs from any (T, k) expert assignment, e.g.
the model's own top-k (:func:`top_k_experts`) or a skewed assignment drawn at run time;
the invariant is ``sum_e n_e = k * T``. An expert with no tokens has to be removed from
the graph by the caller (torch.export specializes a size of 0).

The number of experts is fixed at Mixtral's 8, in both variants, and the forward names
each index input: torch.export binds ``*args`` as one nested input, and a flat
signature keeps ``dynamic_shapes`` one entry per example input, like every zoo model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .llama import SwiGLU
from .models import DynamicDim, ZooModel


@dataclass(frozen=True)
class MoEConfig:
    """Architecture of one MoE-layer variant."""

    hidden: int
    ffn: int
    top_k: int
    max_tokens: int
    default_tokens: int


NUM_EXPERTS = 8

MIXTRAL_MOE = {
    # Mixtral's 8 experts, top-2, at a quarter of Mixtral-8x7B's widths (4096 / 14336).
    "full": MoEConfig(hidden=1024, ffn=3584, top_k=2, max_tokens=4096, default_tokens=256),
    "small": MoEConfig(hidden=32, ffn=48, top_k=2, max_tokens=4096, default_tokens=40),
}


class MoELayer(nn.Module):
    """Router + 8 SwiGLU experts; routing indices are inputs (see the module docstring)."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.top_k = cfg.top_k
        self.gate = nn.Linear(cfg.hidden, NUM_EXPERTS, bias=False)
        self.experts = nn.ModuleList(SwiGLU(cfg.hidden, cfg.ffn) for _ in range(NUM_EXPERTS))

    def forward(
        self,
        x: torch.Tensor,
        idx_e0: torch.Tensor,
        idx_e1: torch.Tensor,
        idx_e2: torch.Tensor,
        idx_e3: torch.Tensor,
        idx_e4: torch.Tensor,
        idx_e5: torch.Tensor,
        idx_e6: torch.Tensor,
        idx_e7: torch.Tensor,
        combine_pos: torch.Tensor,
        expert_ids: torch.Tensor,
    ) -> torch.Tensor:
        expert_idx = (idx_e0, idx_e1, idx_e2, idx_e3, idx_e4, idx_e5, idx_e6, idx_e7)
        probs = torch.softmax(self.gate(x), dim=-1)
        weights = probs.gather(1, expert_ids)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        outs = [expert(x.index_select(0, idx)) for expert, idx in zip(self.experts, expert_idx, strict=True)]
        picked = torch.cat(outs, dim=0).index_select(0, combine_pos.reshape(-1))
        return (picked.view(x.shape[0], self.top_k, x.shape[1]) * weights.unsqueeze(-1)).sum(dim=1)


def top_k_experts(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's own routing decision for ``x``: (T, k) expert ids, Mixtral's top-k of the gate."""
    with torch.no_grad():
        return torch.topk(layer.gate(x), layer.top_k, dim=-1).indices


def routing_inputs(expert_ids: torch.Tensor, num_experts: int = NUM_EXPERTS) -> tuple[torch.Tensor, ...]:
    """The routing inputs of :class:`MoELayer` for a (T, k) assignment of tokens to experts.

    Returns ``(idx_e0, ..., idx_e7, combine_pos, expert_ids)``: the sorted token ids of
    each expert and, per (token, choice), the row of that token in the concatenation of
    the expert outputs.
    """
    tokens, k = expert_ids.shape
    flat = expert_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)  # choices grouped by expert, tokens ascending
    combine_pos = torch.empty_like(flat)
    combine_pos[order] = torch.arange(flat.numel())
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    expert_idx = tuple(chunk // k for chunk in torch.split(order, counts))
    return (*expert_idx, combine_pos.view(tokens, k), expert_ids)


def build_mixtral_moe(variant: str) -> ZooModel:
    """Mixtral-style MoE layer (full: 8 experts, top-2, hidden 1024, ffn 3584)."""
    cfg = MIXTRAL_MOE[variant]
    torch.manual_seed(0)
    module = MoELayer(cfg).eval()
    x = torch.randn(cfg.default_tokens, cfg.hidden)
    routing = routing_inputs(top_k_experts(module, x))
    counts = [len(idx) for idx in routing[:NUM_EXPERTS]]
    if min(counts) < 2:
        raise RuntimeError(f"example routing gives an expert {min(counts)} tokens; torch.export needs >= 2")
    tokens = DynamicDim("tokens", min=1, max=cfg.max_tokens, default=cfg.default_tokens)
    per_expert = tuple(
        DynamicDim(f"tokens_e{e}", min=1, max=cfg.max_tokens, default=n) for e, n in enumerate(counts)
    )
    t = tokens.export_dim()
    dynamic_shapes = (
        {0: t},
        *({0: d.export_dim()} for d in per_expert),
        {0: t},
        {0: t},
    )
    return ZooModel(
        name="mixtral_moe",
        variant=variant,
        module=module,
        example_inputs=(x, *routing),
        dynamic_shapes=dynamic_shapes,
        dims=(tokens, *per_expert),
        family="moe",
        description=(
            f"Mixtral-style MoE layer: {NUM_EXPERTS} SwiGLU experts, top-{cfg.top_k}, "
            "routing (per-expert token indices) given as inputs"
        ),
    )
