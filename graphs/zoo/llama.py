"""Llama-style decoder (prefill): RMSNorm, RoPE, grouped-query causal attention, SwiGLU.

The full variant has TinyLlama-1.1B's shapes (hidden 2048, 32 query heads sharing 4
key/value heads, SwiGLU width 5632, vocabulary 32000) with 2 of its 22 layers.

Written for torch.export with a symbolic ``seq`` and for TVM's importer:
- RoPE cos/sin tables are precomputed up to ``max_seq`` and looked up with
  ``arange(seq)`` (a slice ``table[:seq]`` would be typed ``min(seq, max_seq)`` rows by
  TVM and stop broadcasting against the ``seq`` tokens).
- The causal mask is built in-graph from two ``arange(seq)`` vectors, so no
  ``max_seq x max_seq`` constant is carried; masked scores get float32's minimum, not -inf.
- Grouped-query attention reshapes the queries to (B, kv_heads, group, S, D) and lets
  matmul broadcast over the group, instead of materializing repeated keys and values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .models import DynamicDim, ZooModel


@dataclass(frozen=True)
class LlamaConfig:
    """Architecture of one Llama-style variant."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    max_seq: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


LLAMA = {
    "full": LlamaConfig(layers=2, hidden=2048, heads=32, kv_heads=4, ffn=5632, vocab=32000, max_seq=2048),
    "small": LlamaConfig(layers=1, hidden=64, heads=4, kv_heads=2, ffn=96, vocab=512, max_seq=2048),
}


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring or bias."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(cfg: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (max_seq, head_dim), in the rotate-half layout."""
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    angles = torch.outer(torch.arange(cfg.max_seq, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dim, the partner of each rotary pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Attention(nn.Module):
    """Grouped-query causal self-attention with rotary position embeddings."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim, bias=False)
        self.k = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        group = self.heads // self.kv_heads
        q = self.q(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # (B, kv, group, S, D) @ (B, kv, 1, D, S): each key/value head serves `group` query heads.
        q = q.view(b, self.kv_heads, group, s, self.head_dim)
        scores = q @ k.transpose(-1, -2).unsqueeze(2) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + mask_bias, dim=-1)
        ctx = (probs @ v.unsqueeze(2)).view(b, self.heads, s, self.head_dim)
        return self.o(ctx.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, ffn, bias=False)
        self.up = nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nn.Module):
    """Pre-RMSNorm residual attention then pre-RMSNorm residual SwiGLU."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.hidden, cfg.ffn)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask_bias)
        return x + self.mlp(self.mlp_norm(x))


class LlamaDecoder(nn.Module):
    """Token embedding, decoder layers, final RMSNorm and LM head: input_ids (B, S) -> logits (B, S, vocab)."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        cos, sin = rope_tables(cfg)
        self.rope_cos = nn.Embedding.from_pretrained(cos)
        self.rope_sin = nn.Embedding.from_pretrained(sin)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device)
        cos, sin = self.rope_cos(positions), self.rope_sin(positions)
        mask_bias = causal_mask_bias(positions)
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask_bias)
        return self.lm_head(self.norm(x))


def causal_mask_bias(positions: torch.Tensor) -> torch.Tensor:
    """[S, S] additive attention mask: 0 where a query may see a key, float32 min where the key is in its future.

    finfo.min rather than -inf: TVM's importer turns masked_fill's -inf into a bare constant
    binding, and exp(min - max) is 0 all the same.
    """
    future = positions[None, :] > positions[:, None]
    return future.to(torch.float32) * torch.finfo(torch.float32).min


def decoder_zoo_model(name: str, variant: str, module: nn.Module, vocab: int, max_seq: int,
                      description: str) -> ZooModel:
    """Wrap a decoder taking (batch, seq) token ids into a ZooModel."""
    batch = DynamicDim("batch", min=1, max=64, default=2)
    seq = DynamicDim("seq", min=16, max=max_seq, default=128 if variant == "full" else 16)
    return ZooModel(
        name=name,
        variant=variant,
        module=module,
        example_inputs=(torch.randint(0, vocab, (batch.default, seq.default)),),
        dynamic_shapes=({0: batch.export_dim(), 1: seq.export_dim()},),
        dims=(batch, seq),
        family="transformer",
        description=description,
    )


def build_llama(variant: str) -> ZooModel:
    """Llama-style decoder (full: TinyLlama-1.1B shapes, 2 layers, 220 M params)."""
    cfg = LLAMA[variant]
    torch.manual_seed(0)
    module = LlamaDecoder(cfg).eval()
    return decoder_zoo_model("llama", variant, module, cfg.vocab, cfg.max_seq,
                             "Llama-style decoder prefill (RMSNorm, RoPE, GQA causal attention, SwiGLU) with LM head")
