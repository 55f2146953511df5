"""Hugging Face ``transformers`` models built from configs (random weights, nothing downloaded).

Optional: needs ``pip install fusiongym[hf]``. Only the models that pass export + TVM
import are registered (GPT-2 and Llama); Mixtral does not import (see ZOO.md).

What it takes for transformers 5.x to import into Relax:
- ``attn_implementation="eager"``: with "sdpa", GPT-2 fails in torch.export (a ``view``
  of SDPA's transposed output with symbolic strides).
- The attention mask is an input, already 4-D and additive, (B, 1, S, S): transformers
  then uses it as is. Without a mask, transformers probes ``position_ids`` for packed
  sequences (``aten.diff``), whose negative-axis ``strided_slice`` LegalizeOps rejects;
  with a 2-D mask, it builds the 4-D mask in-graph through ``where(mask, 0, min)``,
  which leaves a bare constant binding in Relax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .models import DynamicDim, ZooModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class LastHiddenState(nn.Module):
    """Calls a transformers base model without KV cache and returns the last hidden state tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def causal_mask(batch: int, seq: int) -> torch.Tensor:
    """Additive causal mask (B, 1, S, S): 0 where attention is allowed, float32's minimum elsewhere."""
    blocked = torch.full((seq, seq), torch.finfo(torch.float32).min).triu(1)
    return blocked.expand(batch, 1, seq, seq).contiguous()


def hf_zoo_model(name: str, variant: str, config: PretrainedConfig, max_seq: int, description: str) -> ZooModel:
    """Build ``AutoModel.from_config(config)`` and wrap it as a decoder taking (input_ids, mask)."""
    from transformers import AutoModel

    torch.manual_seed(0)
    module = LastHiddenState(AutoModel.from_config(config)).eval()
    batch = DynamicDim("batch", min=1, max=64, default=2)
    seq = DynamicDim("seq", min=16, max=max_seq, default=128 if variant == "full" else 16)
    b, s = batch.export_dim(), seq.export_dim()
    input_ids = torch.randint(0, config.vocab_size, (batch.default, seq.default))
    return ZooModel(
        name=name,
        variant=variant,
        module=module,
        example_inputs=(input_ids, causal_mask(batch.default, seq.default)),
        dynamic_shapes=({0: b, 1: s}, {0: b, 2: s, 3: s}),
        dims=(batch, seq),
        family="transformer",
        description=description,
    )


def build_hf_gpt2(variant: str) -> ZooModel:
    """transformers GPT2Model (full: GPT-2 small, 12 layers, hidden 768, context 1024)."""
    from transformers import GPT2Config

    sizes = {
        "full": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257),
        "small": dict(n_layer=2, n_embd=32, n_head=2, vocab_size=1000, bos_token_id=0, eos_token_id=0),
    }[variant]
    config = GPT2Config(n_positions=1024, attn_implementation="eager", **sizes)
    return hf_zoo_model("hf_gpt2", variant, config, 1024, "transformers GPT-2 (GPT2Model from config), last hidden state")


def build_hf_llama(variant: str) -> ZooModel:
    """transformers LlamaModel (full: TinyLlama-1.1B shapes, 2 layers; same as the zoo's llama)."""
    from transformers import LlamaConfig

    sizes = {
        "full": dict(
            num_hidden_layers=2, hidden_size=2048, intermediate_size=5632,
            num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
        ),
        "small": dict(
            num_hidden_layers=1, hidden_size=64, intermediate_size=96,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
            bos_token_id=0, eos_token_id=0,
        ),
    }[variant]
    config = LlamaConfig(max_position_embeddings=2048, attn_implementation="eager", **sizes)
    return hf_zoo_model("hf_llama", variant, config, 2048, "transformers Llama (LlamaModel from config), last hidden state")
