"""BERT encoder stack (post-LayerNorm transformer), plain PyTorch.

Attention is written out as matmul + softmax rather than
``scaled_dot_product_attention``: the fusion environment is meant to decide how
QK^T, the mask add, softmax and PV are grouped, which a single fused attention op would
hide. The same :class:`SelfAttention`, in :class:`PreLNBlock`, serves the ViT encoder and GPT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .models import DynamicDim, ZooModel


@dataclass(frozen=True)
class BertConfig:
    """Architecture of one BERT variant."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int


BERT = {
    # BERT-base, all 12 layers.
    "full": BertConfig(layers=12, hidden=768, heads=12, ffn=3072, vocab=30522, max_positions=512),
    "small": BertConfig(layers=2, hidden=32, heads=2, ffn=64, vocab=1000, max_positions=512),
}


class SelfAttention(nn.Module):
    """Multi-head self-attention with explicit QK^T, softmax and PV matmuls."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, H*D) -> (B, H, S, D)."""
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.split_heads(self.q(x)), self.split_heads(self.k(x)), self.split_heads(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if mask_bias is not None:
            scores = scores + mask_bias
        ctx = torch.softmax(scores, dim=-1) @ v
        return self.out(ctx.transpose(1, 2).reshape(b, s, h))


class PreLNBlock(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (ViT, GPT-2)."""

    def __init__(self, hidden: int, heads: int, mlp: int, eps: float, gelu: nn.GELU) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.attn = SelfAttention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp), gelu, nn.Linear(mlp, hidden))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask_bias)
        return x + self.mlp(self.norm2(x))


class BertLayer(nn.Module):
    """Attention and GELU feed-forward, each followed by residual add and LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg.hidden, cfg.heads)
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(cfg.hidden, cfg.ffn), nn.GELU(), nn.Linear(cfg.ffn, cfg.hidden))
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, mask_bias))
        return self.norm2(x + self.ffn(x))


class BertEncoder(nn.Module):
    """Token + position + segment embeddings, LayerNorm, then the encoder layers.

    Takes ``input_ids`` and a 0/1 ``attention_mask`` (B, S) and returns the last hidden
    state (B, S, hidden). Position embeddings are looked up with ``arange(S)`` rather than
    sliced from the table: TVM's importer types a slice ``table[:S]`` as
    ``min(S, max_positions)`` rows, which then fails to broadcast against the S tokens.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        self.positions = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.segment = nn.Parameter(torch.randn(cfg.hidden) * 0.02)
        self.norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.tokens(input_ids) + self.positions(positions) + self.segment)
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x


def build_bert(variant: str) -> ZooModel:
    """BERT encoder (full: BERT-base, 12 layers, hidden 768, 110 M params)."""
    cfg = BERT[variant]
    torch.manual_seed(0)
    module = BertEncoder(cfg).eval()
    batch = DynamicDim("batch", min=1, max=64, default=2)
    seq = DynamicDim("seq", min=16, max=cfg.max_positions, default=128 if variant == "full" else 16)
    b, s = batch.export_dim(), seq.export_dim()
    input_ids = torch.randint(0, cfg.vocab, (batch.default, seq.default))
    attention_mask = torch.ones(batch.default, seq.default, dtype=torch.int64)
    attention_mask[1:, seq.default // 2 :] = 0  # a padded second sequence
    return ZooModel(
        name="bert",
        variant=variant,
        module=module,
        example_inputs=(input_ids, attention_mask),
        dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}),
        dims=(batch, seq),
        family="transformer",
        description="BERT encoder stack (post-LN, GELU FFN, padding mask), last hidden state",
    )
