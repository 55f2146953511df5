"""GPT-2-style decoder (pre-LN, learned positions, causal attention, tanh-GELU MLP), plain PyTorch.

The zoo's other decoder, ``llama``, uses RMSNorm, RoPE, grouped-query attention and
SwiGLU; this one has the older GPT-2 pieces — LayerNorm, learned position embeddings,
full multi-head attention, a 4x GELU MLP — and the LM head, as a decoder prefill.
Attention is the explicit ``SelfAttention`` of the BERT file (matmul, mask add, softmax,
matmul), so the environment decides how it fuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bert import PreLNBlock
from .llama import causal_mask_bias, decoder_zoo_model
from .models import ZooModel


@dataclass(frozen=True)
class GPTConfig:
    """Architecture of one GPT variant."""

    layers: int
    hidden: int
    heads: int
    vocab: int
    max_positions: int


GPT_CONFIGS = {
    # GPT-2 small: 12 layers, hidden 768, 124 M params (LM head tied to the embedding).
    "full": GPTConfig(layers=12, hidden=768, heads=12, vocab=50257, max_positions=1024),
    "small": GPTConfig(layers=2, hidden=32, heads=2, vocab=1000, max_positions=1024),
}


class GPTDecoder(nn.Module):
    """Token + position embeddings, blocks, final LayerNorm, LM head tied to the token table."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        self.positions = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.blocks = nn.ModuleList(PreLNBlock(cfg.hidden, cfg.heads, 4 * cfg.hidden, 1e-5, nn.GELU(approximate="tanh"))
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden, eps=1e-5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        mask_bias = causal_mask_bias(positions)
        x = self.tokens(input_ids) + self.positions(positions)
        for block in self.blocks:
            x = block(x, mask_bias)
        return self.norm(x) @ self.tokens.weight.T                              # (B, S, vocab) logits


def build_gpt(variant: str) -> ZooModel:
    """GPT-2-style decoder prefill (full: GPT-2 small shapes, 12 layers, with the LM head)."""
    cfg = GPT_CONFIGS[variant]
    torch.manual_seed(0)
    module = GPTDecoder(cfg).eval()
    return decoder_zoo_model("gpt", variant, module, cfg.vocab, cfg.max_positions,
                             "GPT-2-style decoder prefill (pre-LN, learned positions, causal MHA, GELU MLP, "
                             "tied LM head)")
