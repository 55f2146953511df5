"""PyTorch nn.Module -> ComputeGraph through torch.export and TVM's own Relax frontend."""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch

from .ir import ComputeGraph, GraphError
from .relax_import import UnsupportedOpError, from_relax


MIN_TORCH_FOR_SYMBOLIC_EXPORT = (2, 13)


class ModelExportError(GraphError):
    """torch.export or TVM's frontend could not capture the model."""


def from_torch(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    dynamic_shapes: Mapping | Sequence | None = None,
    name: str | None = None,
    source: Mapping[str, Any] | None = None,
) -> ComputeGraph:
    """Import ``module`` once; dims given as ``torch.export.Dim`` stay symbolic.

    The result is a template when ``dynamic_shapes`` is given: call
    ``graph.instantiate({"batch": 8})`` for concrete shapes, without re-exporting.
    """
    name = name or type(module).__name__
    program = _export(module, tuple(example_inputs), dynamic_shapes, name)
    mod = _to_relax(program, name)
    dim_names = _dim_names(program, dynamic_shapes)
    source = {**(source or {}), "tvm_dims": {user: tvm for tvm, user in dim_names.items()}}
    try:
        return from_relax(mod, name=name, dim_names=dim_names, source=source,
                          example_dims=_example_dims(program, example_inputs))
    except UnsupportedOpError as error:
        raise UnsupportedOpError(f"{error} (model {name}, imported from torch via torch.export)") from None


def _buffers_as_weights(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose floating-point buffers (batch-norm statistics, RoPE tables)
    are frozen parameters, so TVM lifts the ops on them out of ``main`` like any weight
    preprocessing instead of leaving constant-only kernels in the graph."""
    module = copy.deepcopy(module).eval()
    for submodule in module.modules():
        for buffer_name, buffer in list(submodule._buffers.items()):
            if buffer is not None and buffer.is_floating_point():
                del submodule._buffers[buffer_name]
                submodule._non_persistent_buffers_set.discard(buffer_name)
                submodule.register_parameter(buffer_name, torch.nn.Parameter(buffer, requires_grad=False))
    return module


def _export(module, example_inputs, dynamic_shapes, name: str):
    try:
        return torch.export.export(_buffers_as_weights(module), example_inputs, dynamic_shapes=dynamic_shapes)
    except Exception as error:  # torch raises many types here; all mean "cannot capture"
        reason = _first_line(error)
        raise ModelExportError(
            f"torch.export could not export {name}: {reason}. Hint: make control flow "
            f"independent of tensor values, give example inputs ≥ 2 along dynamic dims, and "
            f"check the Dim ranges in dynamic_shapes.{_older_torch_hint(torch.__version__)}"
        ) from error


def _older_torch_hint(version: str) -> str:
    """The upgrade to name when this torch predates the one the zoo's symbolic exports need:
    torch 2.11 (seen on a GPU machine) guards on the parity of a symbolic image size in
    max_pool2d's shape function and on the sequence length in Llama's attention, so ResNet
    and Llama templates fail there; torch 2.13 exports them."""
    major, minor = (int(part) for part in version.split("+")[0].split(".")[:2])
    if (major, minor) >= MIN_TORCH_FOR_SYMBOLIC_EXPORT:
        return ""
    wanted = ".".join(map(str, MIN_TORCH_FOR_SYMBOLIC_EXPORT))
    return (f" This is torch {version}; torch before {wanted} refuses symbolic sizes that {wanted} "
            f"exports (the zoo's ResNet image, Llama sequence): install torch>={wanted}.")


def _to_relax(program, name: str):
    """TVM's frontend on the exported program as captured; torch's decomposition to core
    ATen (10x slower on ResNet-50) only when the frontend does not know an op."""
    from tvm.relax.frontend.torch import from_exported_program

    try:
        return from_exported_program(program, keep_params_as_input=True, run_ep_decomposition=False)
    except Exception:  # noqa: BLE001 - any failure here is retried on the decomposed program
        pass
    try:
        return from_exported_program(program, keep_params_as_input=True)
    except Exception as error:  # AssertionError/ValueError/TVMError from the frontend
        raise UnsupportedOpError(
            f"TVM's torch frontend could not import {name}: {_first_line(error)}. Fix: rewrite the "
            f"named op with operators TVM supports (tvm.relax.frontend.torch)."
        ) from error


def _first_line(error: Exception, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def _example_dims(program, example_inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    """TVM symbol name (``s77``) -> its size in the example inputs."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    sizes: dict[str, int] = {}
    for input_name, example in zip(program.graph_signature.user_inputs, example_inputs):
        fake = placeholders[input_name].meta["val"]
        for symbol, size in zip(fake.shape, example.shape):
            if isinstance(symbol, torch.SymInt) and symbol.node.expr.is_Symbol:
                sizes[str(symbol.node.expr)] = int(size)
    return sizes


def _dim_names(program, dynamic_shapes) -> dict[str, str]:
    """TVM symbol name (``s77``) -> user Dim name (``batch``), via the exported placeholders."""
    if dynamic_shapes is None:
        return {}
    user_inputs = list(program.graph_signature.user_inputs)
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    names: dict[str, str] = {}
    for position, input_name in enumerate(user_inputs):
        spec = (dynamic_shapes.get(input_name) if isinstance(dynamic_shapes, Mapping)
                else dynamic_shapes[position] if position < len(dynamic_shapes) else None)
        if not spec:
            continue
        axes = spec.items() if isinstance(spec, Mapping) else enumerate(spec)
        fake = placeholders[input_name].meta["val"]
        for axis, dim in axes:
            if dim is None or not hasattr(dim, "__name__"):
                continue
            symbol = fake.shape[axis]
            if isinstance(symbol, torch.SymInt):
                names[str(symbol.node.expr)] = dim.__name__
    return names
