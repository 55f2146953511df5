"""ShapeProgram: a template compiled once, instantiated at new dims in a fraction of a millisecond.

``template.instantiate(dims)`` used to build a ComputeGraph object by object and its arrays
and hash as much again: milliseconds each for ResNet-50, paid on every new run-time
context. A ShapeProgram, built once per template (``instantiate`` keeps one on the
template), evaluates each distinct dim expression once and then:

- ``instance(dims)``: multiplies out every distinct tensor shape in one numpy product and
  sums the tensors into nodes and edges with bincounts: a ``GraphInstance`` with the arrays
  of ``template.instantiate(dims)``, bit for bit, in tens of microseconds, no graph built;
- ``graph(dims)``: the ComputeGraph itself, sharing every tensor spec the dims do not
  change, with those arrays attached and a record of how it was built, so that its hash
  is a join of precompiled JSON fragments instead of a JSON dump of every node, and its
  ``structure_key`` lets cost models reuse what depends only on the template's structure.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from itertools import chain
from typing import Any, Iterable, Mapping

import numpy as np

from .ir import _KIND_ORDER, ComputeGraph, Edge, GraphArrays, OpNode, TensorSpec, dtype_bytes
from .symbolic import Dim, evaluate_dims

EXACT_BYTES_LIMIT = 2.0 ** 52   # float64 sums of whole byte counts below this are exact
_NODE_FIELDS = operator.attrgetter("id", "op", "kind", "inputs", "outputs", "flops", "attrs", "binding")
_HOLE = "\ue000{}{}\ue001"      # a placeholder in the skeleton's payload: e(xpression) or c(ontext), number
_HOLE_TEXT = re.compile(r'"\\ue000([ec])(\d+)\\ue001"')   # the same placeholder in JSON text


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
class NodeRecipe:
    """How to build one node of an instance: fixed fields plus positions in the instance's pools."""

    id: int                    # the node's id in the instance (renumbered past dead nodes)
    template: OpNode           # op, kind, attrs and binding come from here, unchanged
    inputs: tuple[int, ...]    # positions in the spec pool (template specs, then evaluated ones)
    outputs: tuple[int, ...]
    flops: int                 # position of its FLOPs expression, -1 when FLOPs are a number


@dataclass(frozen=True)
class LivePart:
    """The nodes (and edges) that survive one pattern of empty outputs, renumbered in order."""

    key: str                   # "<template hash>/<hex of the dead-node pattern>": the structure_key
    node_ids: np.ndarray       # [N'] int64 template node ids kept
    edge_ids: np.ndarray       # [E'] int64 template edges kept (both ends alive)
    edge_index: np.ndarray     # [2, E'] int32, renumbered
    op_names: tuple[str, ...]
    op_table: tuple[str, ...]
    op_code: np.ndarray        # [N'] int32
    edges: tuple[Edge, ...]    # renumbered (the template's own when nothing dies)
    outputs: tuple[tuple[int, int], ...]
    recipes: tuple[NodeRecipe, ...]


class ShapeProgram:
    """The arrays (and graph) of ``template.instantiate(dims)`` from tables built once.

    Value table: position 0 holds 1, then every distinct dim of the template (a number or
    an expression) in order of first use; a tensor shape is a row of positions (padded
    with 0), a node's FLOPs one position. Everything else is index arrays fixed at
    construction. Expressions are evaluated in the order ``instantiate`` always met them
    (node by node: inputs, outputs, FLOPs), so a broken template fails the same way.
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
        self._expressions = _expressions_in_use_order(template)
        self._expression_positions = np.array([self._position[dim] for dim in self._expressions], dtype=np.int64)
        self._constant_values = np.array([0.0 if isinstance(dim, str) else float(dim) for dim in self._position])
        self._kind_index = np.array([_KIND_ORDER[node.kind] for node in template.nodes], dtype=np.int8)
        self._src, self._dst = (np.array([getattr(e, end) for e in template.edges], dtype=np.int64)
                                for end in ("src", "dst"))
        self._specs = _SpecTable(template, {dim: i for i, dim in enumerate(self._expressions)})
        self._live_parts: dict[bytes, LivePart] = {}
        self._skeletons: dict[str, _Skeleton | None] = {}
        self._whole = self._live_part(np.ones(template.num_nodes, dtype=bool), b"")

    # ------------------------------------------------------------ construction
    def _value_position(self, dim: Dim) -> int:
        return self._position.setdefault(dim, len(self._position))

    def _shape_row(self, shapes: dict[tuple[Dim, ...], int], shape: tuple[Dim, ...]) -> int:
        return shapes.setdefault(tuple(shape), len(shapes))

    def _output_row(self, shapes: dict[tuple[Dim, ...], int], node_id: int, index: int) -> int:
        return self._shape_row(shapes, self.template.nodes[node_id].outputs[index].shape)

    def _output_bytes(self, node_id: int, index: int) -> int:
        return dtype_bytes(self.template.nodes[node_id].outputs[index].dtype)

    def _live_part(self, alive: np.ndarray, pattern: bytes) -> LivePart:
        template = self.template
        node_ids = np.flatnonzero(alive)
        new_id = np.cumsum(alive) - 1
        src, dst = self._src, self._dst
        edge_ids = np.flatnonzero(alive[src] & alive[dst])
        op_names = tuple(template.nodes[i].op for i in node_ids)
        op_position: dict[str, int] = {}
        op_code = np.array([op_position.setdefault(op, len(op_position)) for op in op_names], dtype=np.int32)
        edge_index = np.stack([new_id[src[edge_ids]], new_id[dst[edge_ids]]]).astype(np.int32).reshape(2, -1)
        if alive.all():
            edges, outputs = tuple(template.edges), tuple(template.outputs)
        else:
            renumber = new_id.tolist()
            edges = tuple(Edge(renumber[e.src], renumber[e.dst], e.src_output) for e in map(template.edges.__getitem__,
                                                                                           edge_ids.tolist()))
            outputs = tuple((renumber[n], i) for n, i in template.outputs if alive[n])
        recipes = tuple(self._specs.recipe(new, template.nodes[old]) for new, old in enumerate(node_ids.tolist()))
        return LivePart(f"{template.hash}/{pattern.hex()}", node_ids, edge_ids, edge_index, op_names,
                        tuple(op_position), op_code, edges, outputs, recipes)

    # --------------------------------------------------------------- evaluation
    def evaluate(self, dims: Mapping[str, int]) -> list[int | float]:
        """Every distinct dim expression of the template at ``dims``, in ``_expressions`` order."""
        memo: dict[str, int] = {}
        return [evaluate_dims(expression, dims, memo) for expression in self._expressions]

    def values(self, dims: Mapping[str, int]) -> np.ndarray:
        """[V] float64: the value table with every dim expression evaluated at ``dims``."""
        return self._value_table(self.evaluate(dims))

    def _value_table(self, evaluated: list[int | float]) -> np.ndarray:
        values = self._constant_values.copy()
        values[self._expression_positions] = evaluated
        return values

    def instance(self, dims: Mapping[str, int], context: Mapping[str, Any] | None = None) -> "GraphInstance":
        """The template at ``dims`` (checked as ``instantiate`` checks them), with ``context``."""
        values_by_name = self.template.checked_dims(dims)
        values = self.values(values_by_name)
        shape_values = values[self._shape_table]                             # [S, R]
        arrays = self._arrays(values, np.prod(shape_values, axis=1), self._part(self._outputs_empty(shape_values)))
        return GraphInstance(self, values_by_name, dict(context or {}), arrays)

    def graph(self, dims: Mapping[str, int], context: Mapping[str, Any] | None = None) -> ComputeGraph:
        """``template.instantiate(dims, context)``: the same graph, arrays attached when exact."""
        template = self.template
        values_by_name = template.checked_dims(dims)
        evaluated = self.evaluate(values_by_name)
        values = self._value_table(evaluated)
        shape_values = values[self._shape_table]                             # [S, R]
        part = self._part(self._outputs_empty(shape_values))
        specs = self._specs.pool(evaluated)
        fields = [_node_fields(recipe, specs, evaluated) for recipe in part.recipes]
        graph = ComputeGraph([OpNode(*f) for f in fields], list(part.edges), list(part.outputs), name=template.name,
                             context={**template.context, "dims": dict(values_by_name), **(context or {})},
                             source={**template.source, "template_hash": template.hash})
        graph.relax_module = template.relax_module
        graph._arrays = self._exact_arrays(values, shape_values, part)
        graph._recipe = InstanceRecipe(self, part, evaluated, fields)
        return graph

    def _outputs_empty(self, shape_values: np.ndarray) -> np.ndarray:
        """[N] bool: every output of the node has a 0 dim (``instantiate``'s test for dead ops)."""
        has_zero = (shape_values == 0).any(axis=1)                            # [S]
        nonempty = np.bincount(self._written.row, weights=~has_zero[self._written.shape],
                               minlength=self.template.num_nodes)
        return nonempty == 0

    def _arrays(self, values: np.ndarray, numel: np.ndarray, part: LivePart) -> GraphArrays:
        """The arrays of the live part at this value table and [S] shape sizes."""
        n, keep = self.template.num_nodes, part.node_ids
        return GraphArrays(
            op_names=part.op_names, op_table=part.op_table, op_code=part.op_code,
            kind_index=self._kind_index[keep], flops=values[self._flops][keep],
            bytes_read=self._read.sum(numel, n)[keep], bytes_written=self._written.sum(numel, n)[keep],
            param_bytes=self._params.sum(numel, n)[keep], output_bytes_external=self._external.sum(numel, n)[keep],
            edge_index=part.edge_index, edge_bytes=self._edges.sum(numel, self.template.num_edges)[part.edge_ids],
        )

    def _exact_arrays(self, values: np.ndarray, shape_values: np.ndarray, part: LivePart) -> GraphArrays | None:
        """The arrays when float64 arithmetic on them is exact, as ``GraphArrays.of``'s integer
        sums are (whole dims >= 0, byte totals below 2**52): then they equal it. None otherwise."""
        if not ((shape_values >= 0).all() and (np.floor(shape_values) == shape_values).all()):
            return None
        arrays = self._arrays(values, np.prod(shape_values, axis=1), part)
        return arrays if arrays.bytes_read.sum() + arrays.bytes_written.sum() < EXACT_BYTES_LIMIT else None

    def _part(self, outputs_empty: np.ndarray) -> LivePart:
        """The live nodes for this pattern of all-empty outputs (cached per pattern)."""
        if not outputs_empty.any() and self._whole.node_ids.size == self.template.num_nodes:
            return self._whole
        key = np.packbits(outputs_empty).tobytes()
        if key not in self._live_parts:
            alive = np.array(self.template.live_nodes(outputs_empty.tolist()), dtype=bool)
            self._live_parts[key] = self._live_part(alive, key)
        return self._live_parts[key]

    def skeleton(self, part: LivePart) -> "_Skeleton | None":
        """The canonical-JSON skeleton of ``part`` (compiled on first use; None if it cannot be)."""
        if part.key not in self._skeletons:
            self._skeletons[part.key] = _Skeleton.compile(self, part)
        return self._skeletons[part.key]


class _SpecTable:
    """The template's tensor specs: those without expressions are shared by every instance,
    each distinct spec with an expression is evaluated once per instance.

    An instance's spec pool is the shared specs followed by the evaluated ones; a node
    recipe names its tensors by position in that pool.
    """

    def __init__(self, template: ComputeGraph, expression_index: dict[str, int]) -> None:
        self._expression_index = expression_index
        self.shared: list[TensorSpec] = []
        self._shared_position: dict[int, int] = {}                 # id(spec) -> position in shared
        self.symbolic: list[TensorSpec] = []                       # distinct template specs with expressions
        self._symbolic_position: dict[tuple, int] = {}
        self._dims: list[tuple[tuple[int, Dim], ...]] = []        # per symbolic spec: (expression or -1, number)
        for node in template.nodes:
            for spec in node.inputs + node.outputs:
                self._register(spec)

    def _register(self, spec: TensorSpec) -> None:
        if not _is_symbolic(spec):
            if id(spec) not in self._shared_position:
                self._shared_position[id(spec)] = len(self.shared)
                self.shared.append(spec)
        elif _spec_key(spec) not in self._symbolic_position:
            self._symbolic_position[_spec_key(spec)] = len(self.symbolic)
            self.symbolic.append(spec)
            self._dims.append(tuple((self._expression_index[d], 0) if isinstance(d, str) else (-1, d)
                                    for d in spec.shape))

    def _pool_position(self, spec: TensorSpec) -> int:
        if _is_symbolic(spec):
            return len(self.shared) + self._symbolic_position[_spec_key(spec)]
        return self._shared_position[id(spec)]

    def recipe(self, new_id: int, node: OpNode) -> NodeRecipe:
        """How to build ``node`` as node ``new_id`` of an instance."""
        flops = self._expression_index[node.flops] if isinstance(node.flops, str) else -1
        return NodeRecipe(new_id, node, tuple(map(self._pool_position, node.inputs)),
                          tuple(map(self._pool_position, node.outputs)), flops)

    def pool(self, evaluated: list) -> list[TensorSpec]:
        """The instance's spec pool at these expression values (any objects: the skeleton
        passes placeholders)."""
        return self.shared + [TensorSpec(tuple(evaluated[e] if e >= 0 else d for e, d in dims), spec.dtype,
                                         spec.is_param) for spec, dims in zip(self.symbolic, self._dims)]


def _is_symbolic(spec: TensorSpec) -> bool:
    return any(isinstance(d, str) for d in spec.shape)


def _spec_key(spec: TensorSpec) -> tuple:
    """Equal for specs equal to the letter (1 and 1.0 stay apart: JSON writes them apart)."""
    return tuple((type(d), d) for d in spec.shape), spec.dtype, spec.is_param


def _node_fields(recipe: NodeRecipe, specs: list[TensorSpec], evaluated: list) -> tuple:
    """The field values of one instance node, in ``OpNode`` field order."""
    node = recipe.template
    return (recipe.id, node.op, node.kind, tuple(map(specs.__getitem__, recipe.inputs)),
            tuple(map(specs.__getitem__, recipe.outputs)),
            evaluated[recipe.flops] if recipe.flops >= 0 else node.flops, node.attrs, node.binding)


def _expressions_in_use_order(template: ComputeGraph) -> list[str]:
    """The distinct dim expressions in the order instantiating node by node meets them."""
    seen: dict[str, None] = {}
    for node in template.nodes:
        for spec in node.inputs + node.outputs:
            seen.update((d, None) for d in spec.shape if isinstance(d, str))
        if isinstance(node.flops, str):
            seen[node.flops] = None
    return list(seen)


class _Skeleton:
    """The canonical JSON (``ComputeGraph.canonical_json``) of every instance of one live
    part, as fixed fragments with holes: one per occurrence of a dim expression (in a shape
    or as FLOPs) and one for the context. An instance's text is a join, not a JSON dump.
    """

    def __init__(self, fragments: list[str], order: list[int]) -> None:
        self._fragments = fragments
        self._pick = operator.itemgetter(*order)   # fragments and hole texts, in text order

    @staticmethod
    def compile(program: "ShapeProgram", part: LivePart) -> "_Skeleton | None":
        """The skeleton of ``part``: the canonical JSON of an instance whose expression
        values and context are placeholders, split at them. None when a template string
        looks like a placeholder (the count of holes tells)."""
        expressions = len(program._expressions)
        text, holes = _placeholder_json(program, part)
        pieces = _HOLE_TEXT.split(text)           # fragment, (kind, number, fragment) per hole
        if len(pieces) != 3 * holes + 1:
            return None
        fragments = pieces[0::3]
        texts = [len(fragments) + (expressions if kind == "c" else int(number))   # positions of hole texts
                 for kind, number in zip(pieces[1::3], pieces[2::3])]
        order = [position for pair in zip(range(len(fragments)), texts + [0]) for position in pair][:-1]
        return _Skeleton(fragments, order)

    def fill(self, evaluated: list, context: Mapping[str, Any]) -> str:
        """The canonical JSON of the instance at these expression values and context."""
        texts = [_json_number(value) for value in evaluated]
        texts.append(json.dumps(context, sort_keys=True, separators=(",", ":")))
        return "".join(self._pick(self._fragments + texts))


def _placeholder_json(program: ShapeProgram, part: LivePart) -> tuple[str, int]:
    """The canonical JSON of an instance of ``part`` with a placeholder for every expression
    value and for the context, and the number of placeholders put in."""
    placeholders = [_HOLE.format("e", i) for i in range(len(program._expressions))]
    specs = program._specs.pool(placeholders)
    nodes = [OpNode(*_node_fields(recipe, specs, placeholders)) for recipe in part.recipes]
    graph = ComputeGraph(nodes, list(part.edges), list(part.outputs))
    graph.context = _HOLE.format("c", 0)
    holes = 1 + sum(isinstance(value, str) for node in nodes
                    for value in (node.flops, *(d for spec in node.inputs + node.outputs for d in spec.shape)))
    return graph.canonical_json(), holes


def _json_number(value: int | float) -> str:
    """``json.dumps(value)``, quicker for the common int."""
    return int.__repr__(value) if type(value) is int else json.dumps(value)


class InstanceRecipe:
    """How ``ShapeProgram.graph`` built an instance: enough to write its canonical JSON
    from the skeleton and to name its structure, as long as the graph is unchanged."""

    def __init__(self, program: ShapeProgram, part: LivePart, evaluated: list, fields: list[tuple]) -> None:
        self.program = program
        self.part = part
        self.evaluated = evaluated
        self.fields = fields          # per node, its field values as built

    @property
    def structure_key(self) -> str:
        return self.part.key

    def describes(self, graph: ComputeGraph) -> bool:
        """Whether ``graph`` still has the nodes (the very field objects), edges and outputs
        it was built with: a node replaced by an equal one of other types (4 for 4.0) would
        write other JSON."""
        return (not graph.symbols and tuple(graph.outputs) == self.part.outputs
                and _same_objects(graph.edges, self.part.edges)
                and _same_objects(chain.from_iterable(map(_NODE_FIELDS, graph.nodes)),
                                  chain.from_iterable(self.fields)))

    def canonical_json(self, context: Mapping[str, Any]) -> str | None:
        """The graph's canonical JSON from the skeleton (None when there is none)."""
        skeleton = self.program.skeleton(self.part)
        return None if skeleton is None else skeleton.fill(self.evaluated, context)


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


def _same_objects(these: Iterable, those: Iterable) -> bool:
    """Whether two sequences hold the same objects, one by one, and as many."""
    return all(map(operator.is_, chain(these, [_END]), chain(those, [_END])))


_END = object()   # marks the end of a sequence in _same_objects, so lengths must match


def _terms(rows: list[tuple[int, int, int]]) -> TensorTerms:
    table = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return TensorTerms(table[:, 0], table[:, 1], table[:, 2].astype(np.float64))
