"""ShapeProgram: a template's per-node costs as vector formulas of its dims.

``template.instantiate(dims)`` builds a ComputeGraph object by object: milliseconds for
ResNet-50, and its arrays and hash as much again. A planner that meets new shapes, routing
and load on every call needs only the numbers the arrays hold. A ShapeProgram, built once
per template, evaluates each distinct dim expression once, multiplies out every distinct
tensor shape in one numpy product and sums the tensors into nodes and edges with
bincounts: a ``GraphInstance`` with the arrays of ``template.instantiate(dims)``, bit for
bit, in tens of microseconds. The ComputeGraph itself is built only if something asks
for it (``materialize()``, ``hash``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .ir import _KIND_ORDER, ComputeGraph, GraphArrays, dtype_bytes
from .symbolic import Dim, evaluate_dims


@dataclass(frozen=True)
class TensorTerms:
    """Tensors summed into rows (nodes or edges): ``bytes[row] += numel[shape] * dtype_bytes``."""

    row: np.ndarray            # [T] int64 node (or edge) the tensor counts for
    shape: np.ndarray          # [T] int64 row of the program's shape table
    dtype_bytes: np.ndarray    # [T] float64

    def sum(self, numel: np.ndarray, rows: int) -> np.ndarray:
        """[rows] float64 bytes."""
        return np.bincount(self.row, weights=numel[self.shape] * self.dtype_bytes, minlength=rows)


@dataclass(frozen=True)
class LivePart:
    """The nodes (and edges) that survive one pattern of empty outputs, renumbered in order."""

    node_ids: np.ndarray       # [N'] int64 template node ids kept
    edge_ids: np.ndarray       # [E'] int64 template edges kept (both ends alive)
    edge_index: np.ndarray     # [2, E'] int32, renumbered
    op_names: tuple[str, ...]
    op_table: tuple[str, ...]
    op_code: np.ndarray        # [N'] int32


class ShapeProgram:
    """The arrays of ``template.instantiate(dims)`` without building the graph.

    Value table: position 0 holds 1, then every distinct dim of the template (a number or
    an expression) in order of first use; a tensor shape is a row of positions (padded
    with 0), a node's FLOPs one position. Everything else is index arrays fixed at
    construction.
    """

    def __init__(self, template: ComputeGraph) -> None:
        self.template = template
        self._position: dict[Dim, int] = {1: 0}
        shapes: dict[tuple[Dim, ...], int] = {}
        read, written, params = [], [], []   # (node, shape row, dtype bytes)
        for node in template.nodes:
            for tensor in node.inputs:
                term = (node.id, self._shape_row(shapes, tensor.shape), dtype_bytes(tensor.dtype))
                read.append(term)
                if tensor.is_param:
                    params.append(term)
            for tensor in node.outputs:
                written.append((node.id, self._shape_row(shapes, tensor.shape), dtype_bytes(tensor.dtype)))
        self._read, self._written, self._params = (_terms(t) for t in (read, written, params))
        self._external = _terms([(node_id, self._output_row(shapes, node_id, index), self._output_bytes(node_id, index))
                                 for node_id, index in sorted(set(template.outputs))])
        self._edges = _terms([(position, self._output_row(shapes, edge.src, edge.src_output),
                               self._output_bytes(edge.src, edge.src_output))
                              for position, edge in enumerate(template.edges)])
        self._flops = np.array([self._value_position(node.flops) for node in template.nodes], dtype=np.int64)
        rank = max((len(shape) for shape in shapes), default=0)
        self._shape_table = np.zeros((len(shapes), rank), dtype=np.int64)   # [S, R] value positions
        for shape, row in shapes.items():
            self._shape_table[row, :len(shape)] = [self._value_position(dim) for dim in shape]
        self._expressions = [dim for dim in self._position if isinstance(dim, str)]
        self._expression_positions = np.array([self._position[dim] for dim in self._expressions], dtype=np.int64)
        self._constant_values = np.array([0.0 if isinstance(dim, str) else float(dim) for dim in self._position])
        self._kind_index = np.array([_KIND_ORDER[node.kind] for node in template.nodes], dtype=np.int8)
        self._src, self._dst = (np.array([getattr(e, end) for e in template.edges], dtype=np.int64)
                                for end in ("src", "dst"))
        self._live_parts: dict[bytes, LivePart] = {}
        self._whole = self._live_part(np.ones(template.num_nodes, dtype=bool))

    # ------------------------------------------------------------ construction
    def _value_position(self, dim: Dim) -> int:
        return self._position.setdefault(dim, len(self._position))

    def _shape_row(self, shapes: dict[tuple[Dim, ...], int], shape: tuple[Dim, ...]) -> int:
        return shapes.setdefault(tuple(shape), len(shapes))

    def _output_row(self, shapes: dict[tuple[Dim, ...], int], node_id: int, index: int) -> int:
        return self._shape_row(shapes, self.template.nodes[node_id].outputs[index].shape)

    def _output_bytes(self, node_id: int, index: int) -> int:
        return dtype_bytes(self.template.nodes[node_id].outputs[index].dtype)

    def _live_part(self, alive: np.ndarray) -> LivePart:
        node_ids = np.flatnonzero(alive)
        new_id = np.cumsum(alive) - 1
        src, dst = self._src, self._dst
        edge_ids = np.flatnonzero(alive[src] & alive[dst])
        op_names = tuple(self.template.nodes[i].op for i in node_ids)
        op_position: dict[str, int] = {}
        op_code = np.array([op_position.setdefault(op, len(op_position)) for op in op_names], dtype=np.int32)
        edge_index = np.stack([new_id[src[edge_ids]], new_id[dst[edge_ids]]]).astype(np.int32).reshape(2, -1)
        return LivePart(node_ids, edge_ids, edge_index, op_names, tuple(op_position), op_code)

    # --------------------------------------------------------------- evaluation
    def values(self, dims: Mapping[str, int]) -> np.ndarray:
        """[V] float64: the value table with every dim expression evaluated at ``dims``."""
        memo: dict[str, int] = {}
        values = self._constant_values.copy()
        values[self._expression_positions] = [evaluate_dims(expression, dims, memo) for expression in self._expressions]
        return values

    def instance(self, dims: Mapping[str, int], context: Mapping[str, Any] | None = None) -> "GraphInstance":
        """The template at ``dims`` (checked as ``instantiate`` checks them), with ``context``."""
        values_by_name = self.template.checked_dims(dims)
        values = self.values(values_by_name)
        numel = np.prod(values[self._shape_table], axis=1)                 # [S]
        n = self.template.num_nodes
        nonempty_outputs = np.bincount(self._written.row, weights=numel[self._written.shape] > 0, minlength=n)
        part = self._part(nonempty_outputs == 0)
        keep = part.node_ids
        edge_bytes = self._edges.sum(numel, self.template.num_edges)
        arrays = GraphArrays(
            op_names=part.op_names, op_table=part.op_table, op_code=part.op_code,
            kind_index=self._kind_index[keep], flops=values[self._flops][keep],
            bytes_read=self._read.sum(numel, n)[keep], bytes_written=self._written.sum(numel, n)[keep],
            param_bytes=self._params.sum(numel, n)[keep], output_bytes_external=self._external.sum(numel, n)[keep],
            edge_index=part.edge_index, edge_bytes=edge_bytes[part.edge_ids],
        )
        return GraphInstance(self, values_by_name, dict(context or {}), arrays)

    def _part(self, outputs_empty: np.ndarray) -> LivePart:
        """The live nodes for this pattern of all-empty outputs (cached per pattern)."""
        if not outputs_empty.any() and self._whole.node_ids.size == self.template.num_nodes:
            return self._whole
        key = np.packbits(outputs_empty).tobytes()
        if key not in self._live_parts:
            alive = np.array(self.template.live_nodes(outputs_empty.tolist()), dtype=bool)
            self._live_parts[key] = self._live_part(alive)
        return self._live_parts[key]


class GraphInstance:
    """A concrete graph known by its arrays: what ``policy.decide`` and cost models read.

    Stands in for ``template.instantiate(dims, context)``: same ``name``, ``context``,
    ``arrays``, node numbering and (computed on first use, by building that graph)
    ``hash``; ``materialize()`` returns the ComputeGraph for anything that needs nodes.
    """

    is_template = False

    def __init__(self, program: ShapeProgram, dims: dict[str, int], extra_context: dict[str, Any],
                 arrays: GraphArrays) -> None:
        self.program = program
        self.dims = dims
        self.extra_context = extra_context    # what the caller added (routing, device load)
        self.context = {**program.template.context, "dims": dict(dims), **extra_context}
        self.arrays = arrays
        self.name = program.template.name
        self._graph: ComputeGraph | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.arrays.op_names)

    @property
    def num_edges(self) -> int:
        return int(self.arrays.edge_index.shape[1])

    def materialize(self) -> ComputeGraph:
        """``template.instantiate(dims, context)``, built once."""
        if self._graph is None:
            self._graph = self.program.template.instantiate(self.dims, self.extra_context)
        return self._graph

    @property
    def hash(self) -> str:
        return self.materialize().hash

    def __repr__(self) -> str:
        return f"GraphInstance({self.name!r}, {self.num_nodes} nodes, {self.num_edges} edges, dims={self.dims})"


def _terms(rows: list[tuple[int, int, int]]) -> TensorTerms:
    table = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return TensorTerms(table[:, 0], table[:, 1], table[:, 2].astype(np.float64))
