"""fusiongym.graphs.zoo: named models, imported once and instantiated at any run-time size.

``load("resnet50", batch=8)`` gives a concrete ComputeGraph; ``template("llama")`` the
symbolic one. Templates are cached in memory and on disk (``~/.cache/fusiongym/graphs``,
keyed by the zoo's and the importer's source and library versions), so only the first
import of a model pays for torch.export and TVM; the Relax module is re-created on demand
by ``relax_module``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from ..ir import ComputeGraph
from .models import VARIANTS, DynamicDim, UnknownModelError, ZooModel, build, names

__all__ = ["DynamicDim", "UnknownModelError", "VARIANTS", "ZooModel", "build", "default_dims", "load",
           "names", "relax_module", "relax_module_of", "template"]


def load(name: str, variant: str = "full", **dims: int) -> ComputeGraph:
    """Concrete graph of zoo model ``name``; dims not given take the model's defaults."""
    return template(name, variant).instantiate({**default_dims(name, variant), **dims})


def default_dims(name: str, variant: str = "full") -> dict[str, int]:
    """The dims of the model's example inputs (recorded in the template, no model build)."""
    return dict(template(name, variant).source["default_dims"])


@lru_cache(maxsize=None)
def template(name: str, variant: str = "full") -> ComputeGraph:
    """The symbolic graph of ``name``, from the disk cache when the model is unchanged."""
    if name not in names():
        build(name, variant)  # raises UnknownModelError listing the names
    path = _cache_path(name, variant)
    if path.exists():
        return ComputeGraph.from_json(path.read_text())
    graph = _import(name, variant)
    _write_atomically(path, graph.to_json())
    return graph


@lru_cache(maxsize=4)
def relax_module(name: str, variant: str = "full"):
    """The lowered Relax module the template's node bindings index into (imports TVM)."""
    return _import(name, variant).relax_module


def relax_module_of(graph: ComputeGraph):
    """The Relax module behind ``graph``: attached, or re-imported from its zoo source."""
    if graph.relax_module is not None:
        return graph.relax_module
    if graph.source.get("kind") != "zoo":
        raise ValueError(f"graph {graph.name} carries no Relax module and no zoo source to rebuild it "
                         f"from; import it with fusiongym.graphs.from_torch or from_relax")
    return relax_module(graph.source["model"], graph.source["variant"])


def _import(name: str, variant: str) -> ComputeGraph:
    from ..torch_import import from_torch

    model = build(name, variant)
    graph = from_torch(model.module, model.example_inputs, model.dynamic_shapes, name=name,
                       source={"kind": "zoo", "model": name, "variant": variant,
                               "default_dims": {dim.name: dim.default for dim in model.dims}})
    return graph


def _cache_path(name: str, variant: str) -> Path:
    root = Path(os.environ.get("FUSIONGYM_CACHE", Path.home() / ".cache" / "fusiongym")) / "graphs"
    return root / f"{name}-{variant}-{_cache_key()}.json"


@lru_cache(maxsize=1)
def _cache_key() -> str:
    """Changes whenever the model's code, the importer or the libraries change.

    The model's code is every file of the zoo: builders share blocks across files (ViT's
    blocks are BERT's, EfficientNet's are MobileNetV2's), so a change to one file can change
    another model's graph.
    """
    from .. import relax_import, tir_cost, torch_import

    zoo_sources = [path.read_text() for path in sorted(Path(__file__).parent.glob("*.py"))]
    parts = [*zoo_sources, *(inspect.getsource(m) for m in (relax_import, tir_cost, torch_import))]
    parts += [importlib.metadata.version(p) for p in ("torch", "apache-tvm")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)
