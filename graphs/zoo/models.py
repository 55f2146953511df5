"""Registry of the model zoo: named builders returning ready-to-export torch models.

Every entry is a plain PyTorch module with random weights (seeded, eval mode), example
inputs at its default dims and a ``torch.export`` dynamic-shapes spec. The graph layer
exports it, imports it into Relax and later instantiates the symbolic dims at the runtime
values an episode draws; the :class:`DynamicDim` ranges tell it which values are legal.

Model files are imported only when their model is built, so ``names()`` stays cheap and
the optional ``transformers`` models cost nothing when unused.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when a model is built
    import torch
    from torch.export import Dim

__all__ = [
    "DynamicDim",
    "ZooModel",
    "UnknownModelError",
    "VARIANTS",
    "names",
    "build",
]

VARIANTS = ("full", "small")


@dataclass(frozen=True)
class DynamicDim:
    """A named runtime dimension of a zoo model and its legal range.

    ``default`` is the value used by the example inputs; it is at least 2 so that
    ``torch.export`` keeps the dimension symbolic (it specializes sizes 0 and 1).
    """

    name: str
    min: int
    max: int
    default: int

    def __post_init__(self) -> None:
        if not self.min <= self.default <= self.max:
            raise ValueError(f"dim {self.name}: default {self.default} outside [{self.min}, {self.max}]")

    def export_dim(self) -> Dim:
        """The ``torch.export.Dim`` for this dimension (same name and range)."""
        from torch.export import Dim

        return Dim(self.name, min=self.min, max=self.max)


@dataclass
class ZooModel:
    """A built zoo model, ready for ``torch.export.export(module, example_inputs, dynamic_shapes=...)``."""

    name: str
    variant: str
    module: torch.nn.Module
    example_inputs: tuple
    dynamic_shapes: dict | tuple
    dims: tuple[DynamicDim, ...]
    family: str
    description: str

    def dim(self, name: str) -> DynamicDim:
        """The dynamic dim called ``name`` (KeyError if the model has none)."""
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(f"{self.name} has no dynamic dim {name!r}; it has {[d.name for d in self.dims]}")


class UnknownModelError(KeyError, ValueError):
    """Raised for a name that is not in the zoo; the message lists the known names.

    It is both a ``KeyError`` (a failed registry lookup) and a ``ValueError`` (a bad
    argument), so callers can catch either.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would quote the message as a repr.
        return str(self.args[0]) if self.args else ""


# name -> (module inside fusiongym.graphs.zoo, builder function taking the variant)
_BUILDERS: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet", "build_resnet18"),
    "resnet50": ("resnet", "build_resnet50"),
    "mobilenet_v2": ("mobilenet", "build_mobilenet_v2"),
    "vit": ("vit", "build_vit"),
    "bert": ("bert", "build_bert"),
    "llama": ("llama", "build_llama"),
    "mixtral_moe": ("moe", "build_mixtral_moe"),
    "convnext": ("convnext", "build_convnext"),
    "mlp_mixer": ("mixer", "build_mlp_mixer"),
    "gpt": ("gpt", "build_gpt"),
    "efficientnet": ("efficientnet", "build_efficientnet"),
    "regnet": ("regnet", "build_regnet"),
    "whisper": ("whisper", "build_whisper"),
    "densenet": ("densenet", "build_densenet"),
    "swin": ("swin", "build_swin"),
}

# Built from transformers configs; listed only when transformers is installed.
_HF_BUILDERS: dict[str, tuple[str, str]] = {
    "hf_gpt2": ("hf", "build_hf_gpt2"),
    "hf_llama": ("hf", "build_hf_llama"),
}


def _hf_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def _registry() -> dict[str, tuple[str, str]]:
    if _hf_available():
        return {**_BUILDERS, **_HF_BUILDERS}
    return dict(_BUILDERS)


def names() -> list[str]:
    """Sorted names of all models that can be built in this environment."""
    return sorted(_registry())


def build(name: str, variant: str = "full") -> ZooModel:
    """Build zoo model ``name`` at ``variant`` ("full": published sizes, "small": for tests)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if name in _HF_BUILDERS and not _hf_available():
        raise UnknownModelError(
            f"model {name!r} needs the transformers package: pip install fusiongym[hf]"
        )
    registry = _registry()
    if name not in registry:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(registry))}")
    module_name, func_name = registry[name]
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, func_name)(variant)
