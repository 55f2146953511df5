"""IR nodes as torch operations, and groups of them as regions for TorchInductor.

Why: the ``torch`` backend and the run-time compiler (``fusiongym.agents.jit``) both turn a
group of a plan into one function that TorchInductor compiles as a whole, so the group's
ops become the kernels Inductor fuses them into (C++ on CPU, Triton on CUDA). Each node is
one legalized Relax operator; ``torch_op`` maps it, with its Relax attributes, to the
torch call with the same semantics, and ``build_region`` strings the nodes of a group into
an FX graph over the group's external inputs.

What the IR does not carry: legalization folds scalar operands (``x + 1e-5``, ``pow(x,
2)``, ``clip(x, 0, 6)``) and the bounds of ``arange`` / ``strided_slice`` into the TIR of
the kernel. The run-time compiler reads them off the Relax call (``call_args``); without
them (a graph loaded from JSON) placeholders of the same cost stand in (scalar 1, slices
from 0), which is all a latency measurement needs. Likewise which input slot an edge feeds
is not recorded: ``infer_operands`` recovers it from shapes, exact up to swapping tensors of
equal shape and dtype (which costs the same).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F

from fusiongym.graphs import ComputeGraph, GraphError, OpNode, TensorSpec

TORCH_DTYPES = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
    "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}


class UnsupportedOpError(GraphError):
    """A node has no torch mapping (or attributes the mapping cannot honour)."""


class _Tensor:
    """Marks a tensor operand among the arguments of a Relax call."""

    def __repr__(self) -> str:
        return "TENSOR"


TENSOR = _Tensor()
CallArgs = Sequence[Any]   # a Relax call's arguments: TENSOR for tensors, Python values otherwise


def torch_dtype(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[str(name)]
    except KeyError:
        raise UnsupportedOpError(f"dtype {name!r} has no torch equivalent (known: {sorted(TORCH_DTYPES)})") from None


# ------------------------------------------------------------------ op bodies
# Kwargs of FX nodes must print as Python literals: ops are named by string, looked up here.
_UNARY: dict[str, Callable] = {
    "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "sin": torch.sin, "cos": torch.cos,
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "negative": torch.neg,
    "abs": torch.abs, "erf": torch.erf, "silu": F.silu, "gelu": F.gelu,
}
_BINARY: dict[str, Callable] = {
    "add": operator.add, "subtract": operator.sub, "multiply": operator.mul, "divide": operator.truediv,
    "power": operator.pow, "maximum": torch.maximum, "minimum": torch.minimum, "greater": operator.gt,
    "greater_equal": operator.ge, "less": operator.lt, "less_equal": operator.le, "equal": operator.eq,
    "not_equal": operator.ne, "mod": torch.fmod, "floor_mod": torch.remainder,
}
_REDUCE: dict[str, Callable] = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax, "min": torch.amin}


# Module-level functions, so FX graph code names them and Inductor traces through them.

def scalar_binary(x: torch.Tensor, *, op: str, scalar: float, scalar_first: bool,
                  dtype: torch.dtype) -> torch.Tensor:
    fn = _BINARY[op]
    out = fn(scalar, x) if scalar_first else fn(x, scalar)
    return out if out.dtype == dtype else out.to(dtype)


def tensor_binary(a: torch.Tensor, b: torch.Tensor, *, op: str, dtype: torch.dtype) -> torch.Tensor:
    out = _BINARY[op](a, b)
    return out if out.dtype == dtype else out.to(dtype)


def conv(x: torch.Tensor, weight: torch.Tensor, *, strides: tuple[int, ...], padding: tuple[int, ...],
         dilation: tuple[int, ...], groups: int, data_perm: tuple[int, ...] | None,
         kernel_perm: tuple[int, ...] | None, out_perm: tuple[int, ...] | None,
         dtype: torch.dtype) -> torch.Tensor:
    """Relax conv1d / conv2d: padding (begin of each spatial axis, then end of each); layouts
    permuted to and from NC[H]W / OI[H]W."""
    if data_perm is not None:
        x = x.permute(data_perm)
    if kernel_perm is not None:
        weight = weight.permute(kernel_perm)
    spatial = len(strides)
    convolve = F.conv1d if spatial == 1 else F.conv2d
    begin, end = padding[:spatial], padding[spatial:]
    if begin == end:
        out = convolve(x, weight, stride=strides, padding=begin, dilation=dilation, groups=groups)
    else:
        # F.pad takes (begin, end) pairs from the last axis back.
        pairs = [side for axis in reversed(range(spatial)) for side in (begin[axis], end[axis])]
        out = convolve(F.pad(x, pairs), weight, stride=strides, dilation=dilation, groups=groups)
    if out_perm is not None:
        out = out.permute(out_perm)
    return out if out.dtype == dtype else out.to(dtype)


def max_pool2d(x: torch.Tensor, *, pool_size: tuple[int, int], strides: tuple[int, int],
               padding: tuple[int, ...], dilation: tuple[int, int], ceil_mode: bool) -> torch.Tensor:
    top, left, bottom, right = padding
    if (top, left) != (bottom, right):
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        top = left = 0
    return F.max_pool2d(x, pool_size, strides, (top, left), dilation, ceil_mode=ceil_mode)


def avg_pool2d(x: torch.Tensor, *, pool_size: tuple[int, int], strides: tuple[int, int],
               padding: tuple[int, int], ceil_mode: bool, count_include_pad: bool) -> torch.Tensor:
    return F.avg_pool2d(x, pool_size, strides, padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, *, rank: int, epsilon: float,
               center: bool, scale: bool) -> torch.Tensor:
    return F.layer_norm(x, x.shape[x.dim() - rank:], gamma if scale else None, beta if center else None,
                        epsilon)


def matmul(a: torch.Tensor, b: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    out = torch.matmul(a, b)
    return out if out.dtype == dtype else out.to(dtype)


def reduce(x: torch.Tensor, *, op: str, axis: tuple[int, ...] | None, keepdims: bool) -> torch.Tensor:
    if axis is None:
        axis = tuple(range(x.dim()))
    return _REDUCE[op](x, dim=axis, keepdim=keepdims)


def reshape(x: torch.Tensor, *, shape: tuple[int, ...]) -> torch.Tensor:
    return x.reshape(shape)


def broadcast_to(x: torch.Tensor, *, shape: tuple[int, ...]) -> torch.Tensor:
    return x.expand(shape)


def permute(x: torch.Tensor, *, axes: tuple[int, ...]) -> torch.Tensor:
    return x.permute(axes)


def astype(x: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


def concat(*tensors: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.cat(tensors, dim=axis)


def split(x: torch.Tensor, *, sections: int | tuple[int, ...], axis: int) -> tuple[torch.Tensor, ...]:
    return torch.tensor_split(x, sections, dim=axis)


def strided_slice(x: torch.Tensor, *, slices: tuple[tuple[int, int, int, int], ...]) -> torch.Tensor:
    """``slices``: (axis, begin, end, stride) per sliced axis; ends past the size are clamped."""
    index = [slice(None)] * x.dim()
    for axis, begin, end, stride in slices:
        index[axis] = slice(begin, end, stride)
    return x[tuple(index)]


def take(x: torch.Tensor, indices: torch.Tensor, *, axis: int, mode: str,
         shape: tuple[int, ...]) -> torch.Tensor:
    """Relax take: out shape = x.shape[:axis] + indices.shape + x.shape[axis + 1:]."""
    size = x.shape[axis]
    flat = indices.reshape(-1)
    if mode == "clip":
        flat = flat.clamp(0, size - 1)
    elif mode == "wrap":
        flat = torch.remainder(flat, size)
    return x.index_select(axis, flat).reshape(shape)


def gather_elements(x: torch.Tensor, indices: torch.Tensor, *, axis: int) -> torch.Tensor:
    return torch.gather(x, axis, indices.long())


def arange(*, start: float, end: float, step: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(start, end, step, dtype=dtype)


def clip(x: torch.Tensor, *, low: float, high: float) -> torch.Tensor:
    return x.clamp(low, high)


def softmax(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    return torch.softmax(x, axis)


def where(condition: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(condition, a, b)


# ----------------------------------------------------------------- converters
@dataclass(frozen=True)
class TorchOp:
    """One node as a torch call: ``fn(*tensor inputs, **kwargs)``.

    ``index_bounds`` maps input positions that hold indices to their exclusive upper bound,
    so random inputs for a measurement stay in range.
    """

    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    index_bounds: Mapping[int, int] = field(default_factory=dict)

    def __call__(self, *tensors: torch.Tensor) -> Any:
        return self.fn(*tensors, **self.kwargs)


# The scalar a folded operand takes when the Relax call is not at hand (cost is the same).
_PLACEHOLDER_SCALAR = {"power": 2.0}


def _shape(spec: TensorSpec) -> tuple[int, ...]:
    return tuple(int(d) for d in spec.shape)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _layout_perm(layout: str, canonical: str) -> tuple[int, ...] | None:
    """Permutation taking a tensor in ``layout`` to ``canonical`` (None when they are equal)."""
    if sorted(layout) != sorted(canonical):
        raise ValueError(f"layout {layout!r} is not a permutation of {canonical!r}")
    return None if layout == canonical else tuple(layout.index(c) for c in canonical)


def _scalars(args: CallArgs | None) -> list[tuple[int, Any]]:
    return [(i, a) for i, a in enumerate(args or ()) if a is not TENSOR]


def _binary(node: OpNode, args: CallArgs | None) -> TorchOp:
    dtype = torch_dtype(node.outputs[0].dtype)
    if len(node.inputs) == 2:
        return TorchOp(tensor_binary, {"op": node.op, "dtype": dtype})
    scalars = _scalars(args)
    position, value = scalars[0] if scalars else (1, _PLACEHOLDER_SCALAR.get(node.op, 1.0))
    return TorchOp(scalar_binary, {"op": node.op, "scalar": value, "scalar_first": position == 0, "dtype": dtype})


def _unary(node: OpNode, args: CallArgs | None) -> TorchOp:
    return TorchOp(_UNARY[node.op])


def _reduce(node: OpNode, args: CallArgs | None) -> TorchOp:
    axis = node.attrs.get("axis")
    return TorchOp(reduce, {"op": node.op, "axis": None if axis is None else tuple(axis),
                            "keepdims": bool(node.attrs.get("keepdims", False))})


def _conv(node: OpNode, args: CallArgs | None) -> TorchOp:
    a = node.attrs
    data_layout, kernel_layout = ("NCW", "OIW") if len(a["strides"]) == 1 else ("NCHW", "OIHW")
    return TorchOp(conv, {
        "strides": tuple(a["strides"]), "padding": tuple(a["padding"]), "dilation": tuple(a["dilation"]),
        "groups": int(a["groups"]), "data_perm": _layout_perm(a["data_layout"], data_layout),
        "kernel_perm": _layout_perm(a["kernel_layout"], kernel_layout),
        "out_perm": _layout_perm(data_layout, a.get("out_layout") or a["data_layout"]),
        "dtype": torch_dtype(node.outputs[0].dtype)})


def _check_nchw(attrs: dict) -> None:
    if attrs.get("layout", "NCHW") != "NCHW" or attrs.get("out_layout", "NCHW") != "NCHW":
        raise ValueError(f"layout {attrs.get('layout')}/{attrs.get('out_layout')}: only NCHW is mapped")


def _max_pool2d(node: OpNode, args: CallArgs | None) -> TorchOp:
    a = node.attrs
    _check_nchw(a)
    return TorchOp(max_pool2d, {"pool_size": tuple(a["pool_size"]), "strides": tuple(a["strides"]),
                                "padding": tuple(a["padding"]), "dilation": tuple(a["dilation"]),
                                "ceil_mode": bool(a["ceil_mode"])})


def _avg_pool2d(node: OpNode, args: CallArgs | None) -> TorchOp:
    a = node.attrs
    _check_nchw(a)
    top, left, bottom, right = a["padding"]
    if (top, left) != (bottom, right) or tuple(a["dilation"]) != (1, 1):
        raise ValueError(f"padding {a['padding']}, dilation {a['dilation']}: only symmetric padding "
                         "and no dilation are mapped (torch avg_pool2d)")
    return TorchOp(avg_pool2d, {"pool_size": tuple(a["pool_size"]), "strides": tuple(a["strides"]),
                                "padding": (top, left), "ceil_mode": bool(a["ceil_mode"]),
                                "count_include_pad": bool(a["count_include_pad"])})


def _layer_norm(node: OpNode, args: CallArgs | None) -> TorchOp:
    a = node.attrs
    rank = len(node.inputs[0].shape)
    axes = sorted(_axis(x, rank) for x in a["axes"])
    if axes != list(range(rank - len(axes), rank)):
        raise ValueError(f"axes {a['axes']}: only trailing axes are mapped (torch layer_norm)")
    return TorchOp(layer_norm, {"rank": len(axes), "epsilon": float(a["epsilon"]),
                                "center": bool(a.get("center", True)), "scale": bool(a.get("scale", True))})


def _split(node: OpNode, args: CallArgs | None) -> TorchOp:
    sections = node.attrs["indices_or_sections"]
    return TorchOp(split, {"sections": sections if isinstance(sections, int) else tuple(sections),
                           "axis": _axis(int(node.attrs["axis"]), len(node.inputs[0].shape))})


def _strided_slice(node: OpNode, args: CallArgs | None) -> TorchOp:
    in_shape, out_shape = _shape(node.inputs[0]), _shape(node.outputs[0])
    if args:  # (x, axes, begin, end, strides?)
        axes, begins, ends = args[1], args[2], args[3]
        strides = args[4] if len(args) > 4 else [1] * len(axes)
        if any(s < 1 for s in strides):
            raise ValueError(f"strides {list(strides)}: negative strides are not mapped")
        slices = tuple((_axis(int(x), len(in_shape)), int(b), int(e), int(s))
                       for x, b, e, s in zip(axes, begins, ends, strides))
    else:  # bounds unknown: a slice of the same size from 0 costs the same
        slices = tuple((axis, 0, o, 1) for axis, (i, o) in enumerate(zip(in_shape, out_shape)) if i != o)
    return TorchOp(strided_slice, {"slices": slices})


def _take(node: OpNode, args: CallArgs | None) -> TorchOp:
    axis = _axis(int(node.attrs.get("axis", 0)), len(node.inputs[0].shape))
    return TorchOp(take, {"axis": axis, "mode": str(node.attrs.get("mode", "fast")),
                          "shape": _shape(node.outputs[0])}, {1: _shape(node.inputs[0])[axis]})


def _gather_elements(node: OpNode, args: CallArgs | None) -> TorchOp:
    axis = _axis(int(node.attrs.get("axis", 0)), len(node.inputs[0].shape))
    return TorchOp(gather_elements, {"axis": axis}, {1: _shape(node.inputs[0])[axis]})


def _arange(node: OpNode, args: CallArgs | None) -> TorchOp:
    start, end, step = args if args else (0, _shape(node.outputs[0])[0], 1)
    return TorchOp(arange, {"start": start, "end": end, "step": step,
                            "dtype": torch_dtype(node.outputs[0].dtype)})


def _clip(node: OpNode, args: CallArgs | None) -> TorchOp:
    low, high = args[1:3] if args else (0.0, 6.0)
    return TorchOp(clip, {"low": low, "high": high})


def _permute_dims(node: OpNode, args: CallArgs | None) -> TorchOp:
    axes = node.attrs.get("axes")
    rank = len(node.inputs[0].shape)
    return TorchOp(permute, {"axes": tuple(axes) if axes is not None else tuple(reversed(range(rank)))})


def _to_output_shape(fn: Callable) -> Callable[[OpNode, CallArgs | None], TorchOp]:
    """Ops fully described by their output shape (reshape, expand_dims, squeeze, broadcast_to)."""
    return lambda node, args: TorchOp(fn, {"shape": _shape(node.outputs[0])})


CONVERTERS: dict[str, Callable[[OpNode, CallArgs | None], TorchOp]] = {
    **{name: _unary for name in _UNARY},
    **{name: _binary for name in _BINARY},
    **{name: _reduce for name in _REDUCE},
    "conv1d": _conv,
    "conv2d": _conv,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "layer_norm": _layer_norm,
    "matmul": lambda node, args: TorchOp(matmul, {"dtype": torch_dtype(node.outputs[0].dtype)}),
    "softmax": lambda node, args: TorchOp(softmax, {"axis": int(node.attrs.get("axis", -1))}),
    "astype": lambda node, args: TorchOp(astype, {"dtype": torch_dtype(node.outputs[0].dtype)}),
    "concat": lambda node, args: TorchOp(concat, {"axis": int(node.attrs.get("axis", 0))}),
    "reshape": _to_output_shape(reshape),
    "expand_dims": _to_output_shape(reshape),
    "squeeze": _to_output_shape(reshape),
    "broadcast_to": _to_output_shape(broadcast_to),
    "permute_dims": _permute_dims,
    "split": _split,
    "strided_slice": _strided_slice,
    "take": _take,
    "gather_elements": _gather_elements,
    "arange": _arange,
    "clip": _clip,
    "where": lambda node, args: TorchOp(where),
}


def supported_ops() -> list[str]:
    return sorted(CONVERTERS)


def torch_op(node: OpNode, args: CallArgs | None = None, model: str = "graph") -> TorchOp:
    """The torch call computing ``node``; ``args``: its Relax call's arguments, when known.

    Raises UnsupportedOpError naming the op, the model and the fix.
    """
    converter = CONVERTERS.get(node.op)
    if converter is None:
        raise UnsupportedOpError(
            f"{model}: node {node.id} is a {node.op!r}, which has no torch mapping (fusiongym.reward.torch_ops "
            f"maps {len(CONVERTERS)} Relax ops). Fix: add a converter for {node.op!r} to "
            f"torch_ops.CONVERTERS, or measure this graph with the tvm backend.")
    try:
        return converter(node, args)
    except (KeyError, ValueError, TypeError, IndexError) as error:
        raise UnsupportedOpError(
            f"{model}: node {node.id} ({node.op}, attrs {node.attrs}) cannot be mapped to torch: {error}. "
            f"Fix: extend the {node.op!r} converter in fusiongym.reward.torch_ops.") from error


def unsupported_reason(graph: ComputeGraph, nodes: Sequence[int]) -> str | None:
    """Why these nodes cannot run through torch, or None."""
    for n in nodes:
        node = graph.nodes[n]
        if node.op not in CONVERTERS:
            return f"op {node.op!r} (node {n}) has no torch mapping"
    return None


# ------------------------------------------------------------------- wiring
@dataclass(frozen=True)
class Operand:
    """Where one tensor input of a node comes from: output ``output`` of node ``node``, or,
    with ``node`` None, a tensor from outside the graph identified by ``key`` (equal keys:
    the same tensor)."""

    node: int | None
    output: int = 0
    key: Hashable = None

    @property
    def identity(self) -> Hashable:
        return ("node", self.node, self.output) if self.node is not None else ("outside", self.key)


def infer_operands(graph: ComputeGraph) -> list[list[Operand]]:
    """Per node, the source of each input, recovered from the graph alone.

    The importer lists a node's in-edges in the order their tensors first appear among its
    inputs, so each edge is matched to the first remaining input of its tensor's shape and
    dtype; inputs no edge explains come from outside (weights, graph inputs). An outside
    tensor of the same shape as an edge's may swap places with it: the cost is the same.
    """
    in_edges: list[list] = [[] for _ in graph.nodes]
    for edge in graph.edges:
        in_edges[edge.dst].append(edge)
    result = []
    for node in graph.nodes:
        pending = list(in_edges[node.id])
        consumed: list = []
        operands = []
        for position, spec in enumerate(node.inputs):
            operand = _match_edge(graph, spec, pending, consumed)
            operands.append(operand or Operand(None, key=(node.id, position)))
        if pending:
            raise GraphError(f"{graph.name}: node {node.id} ({node.op}) has in-edges from nodes "
                             f"{[e.src for e in pending]} that match none of its inputs")
        result.append(operands)
    return result


def _match_edge(graph: ComputeGraph, spec: TensorSpec, pending: list, consumed: list) -> Operand | None:
    def produces(edge) -> bool:
        out = graph.nodes[edge.src].outputs[edge.src_output]
        return out.shape == spec.shape and out.dtype == spec.dtype

    if spec.is_param:
        return None
    if pending and produces(pending[0]):
        edge = pending.pop(0)
        consumed.append(edge)
        return Operand(edge.src, edge.src_output)
    for edge in consumed:  # a tensor read twice is one edge
        if produces(edge):
            return Operand(edge.src, edge.src_output)
    return None


# -------------------------------------------------------------------- regions
@dataclass
class Region:
    """A group of nodes as one FX graph: ``module(*inputs) -> tuple of outputs``.

    ``inputs`` are the group's external tensors in parameter order (``input_specs`` their
    shapes), ``outputs`` the ``(node, output)`` pairs it returns: those read outside the
    group or leaving the graph. ``index_bounds``: input position -> exclusive bound of the
    indices it holds.
    """

    nodes: list[int]
    module: torch.fx.GraphModule
    inputs: list[Operand]
    input_specs: list[TensorSpec]
    outputs: list[tuple[int, int]]
    index_bounds: dict[int, int]

    def random_inputs(self, device: str | torch.device = "cpu", seed: int = 0) -> list[torch.Tensor]:
        """Seeded random tensors for the inputs: normals, booleans, in-range or small integers."""
        generator = torch.Generator().manual_seed(seed)
        tensors = []
        for position, spec in enumerate(self.input_specs):
            shape, dtype = _shape(spec), torch_dtype(spec.dtype)
            if dtype == torch.bool:
                tensor = torch.randint(0, 2, shape, generator=generator).bool()
            elif dtype.is_floating_point:
                tensor = torch.randn(shape, generator=generator).to(dtype)
            else:
                tensor = torch.randint(0, self.index_bounds.get(position, 8), shape, generator=generator,
                                       dtype=dtype)
            tensors.append(tensor.to(device))
        return tensors


def region_outputs(graph: ComputeGraph, nodes: Sequence[int]) -> list[tuple[int, int]]:
    """(node, output) of members read outside the group or leaving the graph, in order;
    a group nobody reads still returns its last node's outputs (it is a real kernel)."""
    members = set(nodes)
    leaving = {(n, k) for n, k in graph.outputs if n in members}
    leaving.update((e.src, e.src_output) for e in graph.edges if e.src in members and e.dst not in members)
    if not leaving:
        last = max(members)
        leaving = {(last, k) for k in range(len(graph.nodes[last].outputs))}
    return sorted(leaving)


def build_region(graph: ComputeGraph, nodes: Sequence[int], operands: Sequence[Sequence[Operand]],
                 call_args: Mapping[int, CallArgs] | None = None) -> Region:
    """The FX graph computing ``nodes`` (one convex group) from its external inputs.

    ``operands``: per node of the graph, where its inputs come from (``infer_operands`` or
    the Relax module's exact wiring); ``call_args``: node id -> Relax call arguments.
    """
    members = sorted(int(n) for n in nodes)
    member_set = set(members)
    fx = torch.fx.Graph()
    values: dict[Hashable, torch.fx.Node] = {}
    inputs: list[Operand] = []
    specs: list[TensorSpec] = []
    bounds: dict[int, int] = {}
    for n in members:
        node = graph.nodes[n]
        op = torch_op(node, (call_args or {}).get(n), graph.name)
        args = []
        for position, operand in enumerate(operands[n]):
            if operand.node is not None and operand.node in member_set:
                args.append(values[operand.identity])
                continue
            if operand.identity not in values:
                values[operand.identity] = fx.placeholder(f"in{len(inputs)}")
                inputs.append(operand)
                specs.append(node.inputs[position])
            if position in op.index_bounds:
                index = inputs.index(operand)
                bounds[index] = min(bounds.get(index, op.index_bounds[position]), op.index_bounds[position])
            args.append(values[operand.identity])
        result = fx.call_function(op.fn, tuple(args), dict(op.kwargs))
        if len(node.outputs) == 1:
            values[("node", n, 0)] = result
        else:
            for k in range(len(node.outputs)):
                values[("node", n, k)] = fx.call_function(operator.getitem, (result, k))
    outputs = region_outputs(graph, members)
    fx.output(tuple(values[("node", n, k)] for n, k in outputs))
    return Region(members, torch.fx.GraphModule(torch.nn.Module(), fx), inputs, specs, outputs, bounds)


def compile_region(region: Region, example_inputs: Sequence[torch.Tensor]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The region compiled by TorchInductor for the example inputs' shapes (C++ on CPU,
    Triton on CUDA).

    ``torch._inductor.compile`` takes the FX graph as it is, without dynamo: the region is
    already a graph, and at run time no dynamo frame evaluation is involved, so regions can
    run inside a model that dynamo itself is compiling (``fusiongym.agents.jit``).
    """
    return torch._inductor.compile(region.module, list(example_inputs))
