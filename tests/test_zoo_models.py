"""Tests of the model zoo registry and its models (real torch, small variants, no TVM)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fusiongym.graphs.zoo import models
from fusiongym.graphs.zoo.models import UnknownModelError, ZooModel, build, names
from fusiongym.graphs.zoo.moe import NUM_EXPERTS, routing_inputs
from fusiongym.graphs.zoo.swin import from_windows, relative_position_index, shift_mask, to_windows
from fusiongym.graphs.zoo.whisper import sinusoids

CORE_MODELS = ["bert", "convnext", "densenet", "efficientnet", "gpt", "llama", "mixtral_moe", "mlp_mixer", "mobilenet_v2",
               "regnet", "resnet18", "resnet50", "swin", "vit", "whisper"]
HF_MODELS = ["hf_gpt2", "hf_llama"]

# Output shape of each small variant at its example inputs.
SMALL_OUTPUT_SHAPES = {
    "bert": (2, 16, 32),
    "convnext": (2, 10),
    "densenet": (2, 10),
    "efficientnet": (2, 10),
    "gpt": (2, 16, 1000),
    "mlp_mixer": (2, 10),
    "llama": (2, 16, 512),
    "mixtral_moe": (40, 32),
    "mobilenet_v2": (2, 10),
    "regnet": (2, 10),
    "resnet18": (2, 10),
    "resnet50": (2, 10),
    "swin": (2, 10),
    "vit": (2, 10),
    "whisper": (2, 16, 32),
    "hf_gpt2": (2, 16, 32),
    "hf_llama": (2, 16, 64),
}


@pytest.fixture(scope="module", params=names())
def small(request: pytest.FixtureRequest) -> ZooModel:
    return build(request.param, "small")


def count_macs(module: nn.Module, inputs: tuple) -> int:
    """Multiply-accumulates of all Conv2d and Linear layers in one forward pass."""
    total = 0

    def hook(layer: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            total += out.numel() * layer.in_channels // layer.groups * kh * kw
        else:
            total += out.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


def test_names_sorted_and_complete() -> None:
    listed = names()
    assert listed == sorted(listed)
    assert set(CORE_MODELS) <= set(listed)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        build("alexnet")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    for name in names():
        assert name in str(info.value)


def test_unknown_variant_rejected() -> None:
    with pytest.raises(ValueError, match="variant"):
        build("resnet18", "medium")


def test_hf_models_hidden_without_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_hf_available", lambda: False)
    assert not set(HF_MODELS) & set(names())
    with pytest.raises(UnknownModelError, match=r"pip install fusiongym\[hf\]"):
        build("hf_gpt2", "small")


def test_small_variant_metadata(small: ZooModel) -> None:
    assert small.variant == "small"
    assert small.family in {"cnn", "transformer", "moe", "mlp"}
    assert not small.module.training
    assert len(small.dynamic_shapes) == len(small.example_inputs)
    for dim in small.dims:
        assert dim.default >= 2 and dim.min <= dim.default <= dim.max
    # The MoE layer works on flattened tokens; everything else has a batch dim.
    assert small.family == "moe" or "batch" in {d.name for d in small.dims}


def test_small_variant_runs_eager(small: ZooModel) -> None:
    with torch.no_grad():
        out = small.module(*small.example_inputs)
    assert tuple(out.shape) == SMALL_OUTPUT_SHAPES[small.name]
    assert torch.isfinite(out).all()


def test_small_variant_exports_with_symbolic_dims(small: ZooModel) -> None:
    ep = torch.export.export(small.module, small.example_inputs, dynamic_shapes=small.dynamic_shapes)
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    inputs = [placeholders[name] for name in ep.graph_signature.user_inputs]
    symbol_of: dict[str, object] = {}
    for node, spec in zip(inputs, small.dynamic_shapes, strict=True):
        for axis, export_dim in spec.items():
            size = node.meta["val"].shape[axis]
            assert isinstance(size, torch.SymInt), f"{node.name} axis {axis} was specialized to {size}"
            symbol = size.node.expr
            # One dim name, one symbol, with the declared range.
            assert symbol_of.setdefault(export_dim.__name__, symbol) == symbol
            declared = small.dim(export_dim.__name__)
            bounds = ep.range_constraints[symbol]
            assert (int(bounds.lower), int(bounds.upper)) == (declared.min, declared.max)
    assert set(symbol_of) == {d.name for d in small.dims}


def test_builds_are_seeded() -> None:
    first, second = build("llama", "small"), build("llama", "small")
    for a, b in zip(first.module.parameters(), second.module.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet50", 4.1e9), ("resnet18", 1.82e9), ("mobilenet_v2", 0.30e9), ("regnet", 0.40e9),
     ("efficientnet", 0.39e9), ("densenet", 2.83e9)],
)
def test_cnn_full_macs_match_published(name: str, expected: float) -> None:
    zoo = build(name, "full")
    macs = count_macs(zoo.module, (torch.randn(1, 3, 224, 224),))
    assert abs(macs - expected) / expected < 0.03


@pytest.mark.parametrize(
    ("name", "expected"),
    # GPT-2 small 124.4 M (tied LM head); Mixer-S/16 18.5 M (timm; the paper rounds to 18 M);
    # ConvNeXt-T 28.6 M with 2x2 downsampling convs, here 3x3 ones: 5 more weights per
    # input-output channel pair of the three. RegNetY-400MF 4.34 M (timm regnety_004), EfficientNet-B0
    # 5.29 M, DenseNet-121 7.98 M, Swin-T 28.29 M (torchvision).
    [("gpt", 124.4e6), ("mlp_mixer", 18.5e6), ("convnext", 28.6e6 + 5 * (96 * 192 + 192 * 384 + 384 * 768)),
     ("regnet", 4.34e6), ("efficientnet", 5.29e6), ("densenet", 7.98e6), ("swin", 28.29e6)],
)
def test_full_parameter_counts_match_published(name: str, expected: float) -> None:
    params = sum(p.numel() for p in build(name, "full").module.parameters())
    assert abs(params - expected) / expected < 0.01


def test_whisper_halves_the_frames_into_tokens_and_adds_whisper_sinusoids() -> None:
    zoo = build("whisper", "small")
    encoder = zoo.module
    with torch.no_grad():
        out = encoder(torch.randn(1, 16, 45))
    assert tuple(out.shape) == (1, 23, 32)  # (45 - 1) // 2 + 1 tokens
    # Whisper's reference table (openai/whisper model.py) at 4 positions, 8 channels.
    log_timescale = math.log(10000) / 3
    inv = [math.exp(-log_timescale * i) for i in range(4)]
    expected = torch.tensor([[f(t * w) for f in (math.sin, math.cos) for w in inv] for t in range(4)])
    torch.testing.assert_close(sinusoids(4, 8), expected)


def test_swin_windows_tile_the_grid_and_the_shift_mask_keeps_pairs_of_one_region() -> None:
    grid = torch.arange(2 * 8 * 8 * 3, dtype=torch.float32).reshape(2, 8, 8, 3)
    windows = to_windows(grid, 4)
    assert tuple(windows.shape) == (8, 16, 3)
    assert torch.equal(windows[1], grid[0, 0:4, 4:8].reshape(16, 3))  # image 0's top-right window
    assert torch.equal(from_windows(windows, 4, 8), grid)
    # Window 2x2, tokens (0,0) (0,1) (1,0) (1,1): row (dr + 1) * 3 + (dc + 1) of the 3x3 bias table.
    assert relative_position_index(2).tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    mask = shift_mask(8, 4, 2)  # (4 windows, 16, 16)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window holds no wrapped tokens
    assert int((mask[3] == 0).sum()) == 4 * 4 * 4  # bottom-right: 4 regions of 2x2 tokens, each pair inside one


def test_moe_matches_dense_reference_for_any_routing() -> None:
    zoo = build("mixtral_moe", "small")
    layer = zoo.module
    x = zoo.example_inputs[0]
    tokens = x.shape[0]
    # Skewed routing unrelated to the router: expert 0 takes every token's first choice.
    second = torch.randint(1, NUM_EXPERTS, (tokens,))
    expert_ids = torch.stack([torch.zeros(tokens, dtype=torch.int64), second], dim=1)
    with torch.no_grad():
        out = layer(x, *routing_inputs(expert_ids))
        probs = torch.softmax(layer.gate(x), dim=-1).gather(1, expert_ids)
        weights = probs / probs.sum(dim=-1, keepdim=True)
        expected = torch.stack(
            [
                sum(weights[t, j] * layer.experts[int(expert_ids[t, j])](x[t : t + 1])[0] for j in range(2))
                for t in range(tokens)
            ]
        )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_moe_routing_inputs_partition_tokens() -> None:
    expert_ids = torch.tensor([[0, 3], [3, 1], [0, 1]])
    *per_expert, combine_pos, ids = routing_inputs(expert_ids)
    assert len(per_expert) == NUM_EXPERTS
    assert [idx.tolist() for idx in per_expert[:4]] == [[0, 2], [1, 2], [], [0, 1]]
    assert sum(len(idx) for idx in per_expert) == expert_ids.numel()
    # Row combine_pos[t, j] of the concatenated expert inputs is token t.
    assert torch.equal(torch.cat(per_expert)[combine_pos], torch.arange(3)[:, None].expand(3, 2))
    assert ids is expert_ids


@pytest.mark.parametrize(("name", "vocab"), [("llama", 512), ("gpt", 1000)])
def test_decoders_are_causal(name: str, vocab: int) -> None:
    zoo = build(name, "small")
    (input_ids,) = zoo.example_inputs
    changed = input_ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % vocab
    with torch.no_grad():
        a, b = zoo.module(input_ids), zoo.module(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])
