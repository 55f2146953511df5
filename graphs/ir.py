"""ComputeGraph: the operator graph every other layer of fusiongym works on.

A node is one operator as TVM sees it after legalization (one ``call_tir`` binding of the
Relax ``main`` function); an edge is a tensor from its producer to a consumer. A graph is
either *concrete* (every shape is a number) or a *template* whose shapes are expressions
over named dynamic dims such as ``batch`` and ``seq``; ``instantiate`` evaluates a template
at run-time sizes without re-exporting the model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Mapping, TypeVar

import numpy as np

from .symbolic import Dim, evaluate_dims

if TYPE_CHECKING:
    from .shape_program import InstanceRecipe, ShapeProgram


class OpKind(IntEnum):
    """TVM's operator pattern kinds (``relay/op_attr_types.h``), with TVM's own values."""

    ELEMWISE = 0
    BROADCAST = 1
    INJECTIVE = 2
    COMM_REDUCE = 3
    OUT_ELEMWISE_FUSABLE = 4
    TUPLE = 7
    OPAQUE = 8

    @property
    def label(self) -> str:
        return _KIND_LABELS[self]


_KIND_LABELS = {
    OpKind.ELEMWISE: "elemwise",
    OpKind.BROADCAST: "broadcast",
    OpKind.INJECTIVE: "injective",
    OpKind.COMM_REDUCE: "comm-reduce",
    OpKind.OUT_ELEMWISE_FUSABLE: "out-elemwise-fusable",
    OpKind.TUPLE: "tuple",
    OpKind.OPAQUE: "opaque",
}

DTYPE_BYTES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1,
    "bool": 1,
}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype``; unknown dtypes are an error, not a guess."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one tensor. In a template a dim may be an expression string."""

    shape: tuple[Dim, ...]
    dtype: str
    is_param: bool = False

    @property
    def numel(self) -> int:
        return math.prod(int(d) for d in self.shape)

    @property
    def size_bytes(self) -> int:
        return self.numel * dtype_bytes(self.dtype)

    def to_dict(self) -> dict:
        spec = {"shape": list(self.shape), "dtype": self.dtype}
        if self.is_param:
            spec["is_param"] = True
        return spec

    @staticmethod
    def from_dict(data: Mapping) -> "TensorSpec":
        return TensorSpec(tuple(data["shape"]), data["dtype"], bool(data.get("is_param", False)))


@dataclass
class OpNode:
    """One operator: what it computes, on what, and at what cost.

    ``binding`` is the index of the node's binding in the dataflow block of the Relax
    ``main`` function it was imported from, so a backend can apply a plan to exactly that
    module (binding names repeat; indices do not).
    """

    id: int
    op: str
    kind: OpKind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    flops: Dim
    attrs: dict[str, Any] = field(default_factory=dict)
    binding: int | None = None

    @property
    def bytes_read(self) -> int:
        return sum(t.size_bytes for t in self.inputs)

    @property
    def bytes_written(self) -> int:
        return sum(t.size_bytes for t in self.outputs)

    @property
    def param_bytes(self) -> int:
        return sum(t.size_bytes for t in self.inputs if t.is_param)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "op": self.op, "kind": int(self.kind),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "flops": self.flops, "attrs": self.attrs, "binding": self.binding,
        }

    @staticmethod
    def from_dict(data: Mapping) -> "OpNode":
        return OpNode(
            id=int(data["id"]), op=data["op"], kind=OpKind(data["kind"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            flops=data["flops"], attrs=dict(data.get("attrs", {})), binding=data.get("binding"),
        )


@dataclass(frozen=True)
class Edge:
    """A tensor flowing from output ``src_output`` of node ``src`` into node ``dst``."""

    src: int
    dst: int
    src_output: int = 0

    def to_list(self) -> list[int]:
        return [self.src, self.dst, self.src_output]


@dataclass(frozen=True)
class SymbolRange:
    """A named dynamic dim and the range the model was exported for."""

    name: str
    min: int
    max: int


class GraphError(ValueError):
    """A graph is malformed or an operation on it is impossible; the message says why."""


class ComputeGraph:
    """An operator DAG with shapes, FLOPs and bytes per node and tensor sizes per edge.

    Nodes are stored in topological order with ``node.id == position``. ``outputs`` lists
    ``(node, output index)`` pairs that leave the graph. ``context`` carries the run-time
    situation the graph was sampled for (dims, MoE routing, device load); ``source`` says
    how to rebuild the model it came from (e.g. a zoo entry), so a real backend can
    re-import it.
    """

    def __init__(
        self,
        nodes: list[OpNode],
        edges: list[Edge],
        outputs: list[tuple[int, int]],
        name: str = "graph",
        symbols: Iterable[SymbolRange] = (),
        context: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> None:
        self.nodes = nodes
        self.edges = edges
        self.outputs = [tuple(o) for o in outputs]
        self.name = name
        self.symbols = {s.name: s for s in symbols}
        self.context = dict(context or {})
        self.source = dict(source or {})
        self.relax_module = None  # the Relax IRModule it was imported from, if any (not serialized)
        self._check_structure()
        self._hash: str | None = None
        self._arrays: GraphArrays | None = None
        self._forget_compiled()

    def _forget_compiled(self) -> None:
        self._recipe: InstanceRecipe | None = None     # how ShapeProgram.graph built it, if it did
        self._program: ShapeProgram | None = None      # a template's compiled form, once instantiated

    def __getstate__(self) -> dict:
        """Pickled as before there was a compiled form: it is a cache, rebuilt on demand."""
        return {key: value for key, value in self.__dict__.items() if key not in ("_recipe", "_program")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._forget_compiled()

    # ----------------------------------------------------------------- structure
    def _check_structure(self) -> None:
        for position, node in enumerate(self.nodes):
            if node.id != position:
                raise GraphError(f"node ids must equal positions: node at {position} has id {node.id}")
        n = len(self.nodes)
        for edge in self.edges:
            if not (0 <= edge.src < n and 0 <= edge.dst < n):
                raise GraphError(f"edge {edge} points outside the {n} nodes")
            if edge.src >= edge.dst:
                raise GraphError(f"edge {edge} goes backwards: nodes must be in topological order")
            if edge.src_output >= len(self.nodes[edge.src].outputs):
                raise GraphError(f"edge {edge} reads output {edge.src_output} that node {edge.src} lacks")

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    @property
    def is_template(self) -> bool:
        return bool(self.symbols)

    def topological_order(self) -> list[int]:
        """Node ids in an order where every producer precedes its consumers."""
        return list(range(self.num_nodes))

    def edge_size_bytes(self, edge: Edge) -> int:
        return self.nodes[edge.src].outputs[edge.src_output].size_bytes

    @property
    def arrays(self) -> "GraphArrays":
        """Numpy views of the graph for fast cost models and observations (cached)."""
        if self.is_template:
            raise GraphError(f"{self.name} is a template over {sorted(self.symbols)}; instantiate it first")
        if self._arrays is None:
            self._arrays = GraphArrays.of(self)
        return self._arrays

    # --------------------------------------------------------------------- hash
    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of structure, shapes and context (not the name).

        A template instance unchanged since ``instantiate`` built it has its text joined
        from the template's compiled skeleton (``ShapeProgram``), the same bytes in a
        fraction of the time of a JSON dump.
        """
        if self._hash is None:
            self._hash = hashlib.sha256(self._hash_text().encode()).hexdigest()[:16]
        return self._hash

    def _hash_text(self) -> str:
        """The canonical JSON, joined from the skeleton when this is an unchanged instance."""
        if self._recipe is not None and not self._recipe.describes(self):
            self._recipe = None                         # changed since it was built: no structure key either
        text = self._recipe.canonical_json(self.context) if self._recipe is not None else None
        return text if text is not None else self.canonical_json()

    def canonical_json(self) -> str:
        """What ``hash`` digests: the JSON of everything but name and source, keys sorted, no spaces."""
        payload = self._content_dict()
        payload.pop("name")
        payload.pop("source")
        return json.dumps(payload, sort_keys=True, separators=(",", ":"))

    @property
    def structure_key(self) -> str | None:
        """Equal for graphs that differ at most in shapes, FLOPs and context: instances of
        one template with the same live nodes (same ops, kinds, dtypes, edges, outputs).
        Cost models key what depends on structure alone by it. None when unknown: a graph
        not built by ``instantiate``, or changed since (checked when the hash is computed)."""
        self.hash
        return self._recipe.structure_key if self._recipe is not None else None

    # --------------------------------------------------------------------- json
    def _content_dict(self) -> dict:
        return {
            "format": "fusiongym.ComputeGraph/1",
            "name": self.name,
            "nodes": [node.to_dict() for node in self.nodes],
            "edges": [edge.to_list() for edge in self.edges],
            "outputs": [list(o) for o in self.outputs],
            "symbols": [[s.name, s.min, s.max] for s in self.symbols.values()],
            "context": self.context,
            "source": self.source,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self._content_dict(), sort_keys=True, indent=indent)

    @staticmethod
    def from_json(text: str) -> "ComputeGraph":
        data = json.loads(text)
        if data.get("format") != "fusiongym.ComputeGraph/1":
            raise GraphError(f"not a fusiongym graph (format={data.get('format')!r})")
        return ComputeGraph(
            nodes=[OpNode.from_dict(n) for n in data["nodes"]],
            edges=[Edge(*e) for e in data["edges"]],
            outputs=[tuple(o) for o in data["outputs"]],
            name=data["name"],
            symbols=[SymbolRange(*s) for s in data["symbols"]],
            context=data["context"],
            source=data["source"],
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ComputeGraph) and self._content_dict() == other._content_dict()

    def __repr__(self) -> str:
        dims = f" over {sorted(self.symbols)}" if self.symbols else ""
        return f"ComputeGraph({self.name!r}, {self.num_nodes} nodes, {self.num_edges} edges{dims})"

    # -------------------------------------------------------------- instantiate
    def instantiate(self, dims: Mapping[str, int], context: Mapping[str, Any] | None = None) -> "ComputeGraph":
        """Evaluate a template's shapes at ``dims``; nodes with only empty outputs drop out.

        An MoE expert that receives zero tokens has empty outputs: it and the nodes that
        only fed it (its weight transposes) leave the graph, as they would at run time.
        The first call compiles the template (a ``ShapeProgram``, kept on it); every call
        builds the instance from its recipes, arrays attached, hash joined from a skeleton.
        """
        program = self._compiled()
        if program is None:
            return self.instantiate_node_by_node(dims, context)
        return program.graph(dims, context)

    def instantiate_node_by_node(self, dims: Mapping[str, int],
                                 context: Mapping[str, Any] | None = None) -> "ComputeGraph":
        """``instantiate`` without the compiled template: each node evaluated on its own.
        The reference the compiled path is tested against, and the path for templates
        with a dtype ``dtype_bytes`` does not know (the compiled form sizes every tensor)."""
        values = self.checked_dims(dims)
        memo: dict[str, int] = {}
        nodes = [_instantiate_node(node, values, memo) for node in self.nodes]
        graph = ComputeGraph(
            nodes, list(self.edges), list(self.outputs), name=self.name,
            context={**self.context, "dims": dict(values), **(context or {})}, source=self.source,
        )
        graph.relax_module = self.relax_module
        graph.source = {**self.source, "template_hash": self.hash}
        return graph.without_dead_nodes()

    def _compiled(self) -> "ShapeProgram | None":
        """The template's ShapeProgram, built on first use; None when it cannot be built."""
        if self._program is None:
            from .shape_program import ShapeProgram

            try:
                self._program = ShapeProgram(self)
            except ValueError:                          # an unknown dtype: no program, ever
                self._program = _NO_PROGRAM
        return None if self._program is _NO_PROGRAM else self._program

    def checked_dims(self, dims: Mapping[str, int]) -> dict[str, int]:
        """``dims`` as ints, every dim of the template given and within its range (or 0)."""
        missing = sorted(set(self.symbols) - set(dims))
        if missing:
            raise GraphError(f"{self.name}: needs values for dims {missing} (a template over {sorted(self.symbols)})")
        for name, value in dims.items():
            if name not in self.symbols:
                raise GraphError(f"{self.name}: unknown dim {name!r}; dims are {sorted(self.symbols)}")
            rng = self.symbols[name]
            if value != 0 and not rng.min <= value <= rng.max:  # 0: the ops this dim sizes do not run
                raise GraphError(f"{self.name}: dim {name}={value} outside its range [{rng.min}, {rng.max}]")
        return {name: int(value) for name, value in dims.items()}

    def without_dead_nodes(self) -> "ComputeGraph":
        """Drop nodes whose outputs are all empty, then nodes whose results nobody uses."""
        keep = self.live_nodes([all(0 in t.shape for t in node.outputs) for node in self.nodes])
        if all(keep):
            return self
        return self.subgraph([node.id for node in self.nodes if keep[node.id]])

    def live_nodes(self, outputs_empty: list[bool]) -> list[bool]:
        """Per node, whether it survives when the nodes flagged in ``outputs_empty`` produce
        nothing: those go, then (reverse topological order) every node whose results nobody
        left uses and that is no graph output."""
        keep = [not empty for empty in outputs_empty]
        consumers = [0] * self.num_nodes
        for edge in self.edges:
            if keep[edge.src] and keep[edge.dst]:
                consumers[edge.src] += 1
        is_output = set(node for node, _ in self.outputs)
        in_edges = self._in_edges()
        for node in reversed(self.nodes):  # dead-code elimination in reverse topological order
            if keep[node.id] and consumers[node.id] == 0 and node.id not in is_output:
                keep[node.id] = False
                for edge in in_edges[node.id]:
                    consumers[edge.src] -= 1
        return keep

    def _in_edges(self) -> list[list[Edge]]:
        in_edges: list[list[Edge]] = [[] for _ in self.nodes]
        for edge in self.edges:
            in_edges[edge.dst].append(edge)
        return in_edges

    def subgraph(self, node_ids: list[int]) -> "ComputeGraph":
        """The induced subgraph on ``node_ids`` (renumbered in order; outputs kept if inside)."""
        new_id = {old: new for new, old in enumerate(sorted(node_ids))}
        nodes = [replace(self.nodes[old], id=new) for old, new in new_id.items()]
        edges = [Edge(new_id[e.src], new_id[e.dst], e.src_output)
                 for e in self.edges if e.src in new_id and e.dst in new_id]
        outputs = [(new_id[n], i) for n, i in self.outputs if n in new_id]
        graph = ComputeGraph(nodes, edges, outputs, name=self.name, symbols=self.symbols.values(),
                             context=self.context, source=self.source)
        graph.relax_module = self.relax_module
        return graph

    # ------------------------------------------------------------ conversions
    def to_networkx(self):
        """A ``networkx.MultiDiGraph`` with node and edge attributes (op, kind, flops, bytes)."""
        import networkx as nx

        nxg = nx.MultiDiGraph(name=self.name, hash=self.hash)
        for node in self.nodes:
            nxg.add_node(node.id, op=node.op, kind=node.kind.label, flops=float(node.flops),
                         bytes_read=node.bytes_read, bytes_written=node.bytes_written,
                         param_bytes=node.param_bytes)
        for edge in self.edges:
            nxg.add_edge(edge.src, edge.dst, size_bytes=self.edge_size_bytes(edge))
        return nxg

    def to_pyg(self):
        """A ``torch_geometric.data.Data`` with ``x`` = [kind one-hot | log2 features] per node."""
        import torch
        from torch_geometric.data import Data

        arrays = self.arrays
        kind_onehot = np.zeros((self.num_nodes, len(OpKind)), dtype=np.float32)
        kind_onehot[np.arange(self.num_nodes), arrays.kind_index] = 1.0
        numeric = np.log2(1.0 + np.stack(
            [arrays.flops, arrays.bytes_read, arrays.bytes_written, arrays.param_bytes], axis=1))
        x = np.concatenate([kind_onehot, numeric.astype(np.float32)], axis=1)
        return Data(
            x=torch.from_numpy(x),                                      # [N, 7 + 4]
            edge_index=torch.from_numpy(arrays.edge_index.astype(np.int64)),  # [2, E]
            edge_attr=torch.from_numpy(np.log2(1.0 + arrays.edge_bytes)[:, None].astype(np.float32)),
            op=list(arrays.op_names), num_nodes=self.num_nodes,
        )

    def summary(self) -> str:
        """A readable table: totals, then ops, FLOPs and bytes per pattern kind."""
        if self.is_template:
            return f"{self!r} (template; instantiate for costs)"
        arrays = self.arrays
        lines = [
            f"{self.name}  hash={self.hash}  nodes={self.num_nodes}  edges={self.num_edges}",
            f"  FLOPs {arrays.flops.sum() / 1e9:.3f} G   read {arrays.bytes_read.sum() / 2**20:.1f} MiB"
            f"   written {arrays.bytes_written.sum() / 2**20:.1f} MiB"
            f"   params {arrays.param_bytes.sum() / 2**20:.1f} MiB",
            f"  {'kind':<22}{'ops':>6}{'GFLOPs':>10}{'MiB moved':>12}  top ops",
        ]
        for kind in OpKind:
            mask = arrays.kind_index == _KIND_ORDER[kind]
            if not mask.any():
                continue
            ops: dict[str, int] = {}
            for node_id in np.flatnonzero(mask):
                ops[arrays.op_names[node_id]] = ops.get(arrays.op_names[node_id], 0) + 1
            top = ", ".join(f"{op}×{count}" for op, count in sorted(ops.items(), key=lambda kv: -kv[1])[:4])
            moved = (arrays.bytes_read[mask].sum() + arrays.bytes_written[mask].sum()) / 2**20
            lines.append(f"  {kind.label:<22}{int(mask.sum()):>6}{arrays.flops[mask].sum() / 1e9:>10.3f}"
                         f"{moved:>12.1f}  {top}")
        if self.context:
            lines.append(f"  context {json.dumps(self.context, sort_keys=True)}")
        return "\n".join(lines)


_KIND_ORDER = {kind: position for position, kind in enumerate(OpKind)}

Structural = TypeVar("Structural")


class StructureCache(Generic[Structural]):
    """What ``build`` derives from a graph's structure alone, kept per ``graph.structure_key``
    (the ``size`` most recently used keys): instances of one template share it. A graph
    without a key (not built by ``instantiate``, or changed since) gets its own, uncached."""

    def __init__(self, build: Callable[[ComputeGraph], Structural], size: int) -> None:
        self._build, self._size = build, size
        self._by_key: OrderedDict[str, Structural] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_key)

    def __call__(self, graph: ComputeGraph) -> Structural:
        key = graph.structure_key
        if key is None:
            return self._build(graph)
        found = self._by_key.get(key)
        if found is None:
            found = self._by_key[key] = self._build(graph)
            if len(self._by_key) > self._size:
                self._by_key.popitem(last=False)
        else:
            self._by_key.move_to_end(key)
        return found


_NO_PROGRAM: Any = object()   # ComputeGraph._program of a template ShapeProgram cannot compile


@dataclass(frozen=True)
class GraphArrays:
    """Per-node and per-edge numbers of a concrete graph as numpy arrays.

    Shapes: N nodes, E edges. ``edge_index`` is [2, E]; ``kind_index`` is the position of
    the node's OpKind in ``OpKind`` order (0..6).
    """

    op_names: tuple[str, ...]     # [N]
    op_table: tuple[str, ...]     # the distinct op names, in order of first appearance
    op_code: np.ndarray           # [N] int32, position of the node's op in op_table
    kind_index: np.ndarray        # [N] int8
    flops: np.ndarray             # [N] float64
    bytes_read: np.ndarray        # [N] float64, all inputs incl. parameters
    bytes_written: np.ndarray     # [N] float64
    param_bytes: np.ndarray       # [N] float64
    output_bytes_external: np.ndarray  # [N] float64, bytes of outputs that leave the graph
    edge_index: np.ndarray        # [2, E] int32
    edge_bytes: np.ndarray        # [E] float64

    @staticmethod
    def of(graph: ComputeGraph) -> "GraphArrays":
        nodes = graph.nodes
        external = np.zeros(len(nodes))
        for node_id, output in set(graph.outputs):
            external[node_id] += nodes[node_id].outputs[output].size_bytes
        edge_index = np.array([[e.src for e in graph.edges], [e.dst for e in graph.edges]],
                              dtype=np.int32).reshape(2, -1)
        op_position: dict[str, int] = {}
        op_code = np.array([op_position.setdefault(node.op, len(op_position)) for node in nodes], dtype=np.int32)
        return GraphArrays(
            op_names=tuple(node.op for node in nodes), op_table=tuple(op_position), op_code=op_code,
            kind_index=np.array([_KIND_ORDER[node.kind] for node in nodes], dtype=np.int8),
            flops=np.array([float(node.flops) for node in nodes]),
            bytes_read=np.array([node.bytes_read for node in nodes], dtype=np.float64),
            bytes_written=np.array([node.bytes_written for node in nodes], dtype=np.float64),
            param_bytes=np.array([node.param_bytes for node in nodes], dtype=np.float64),
            output_bytes_external=external,
            edge_index=edge_index,
            edge_bytes=np.array([graph.edge_size_bytes(e) for e in graph.edges], dtype=np.float64),
        )


def _instantiate_node(node: OpNode, dims: Mapping[str, int], memo: dict[str, int]) -> OpNode:
    return replace(
        node,
        inputs=tuple(_instantiate_tensor(t, dims, memo) for t in node.inputs),
        outputs=tuple(_instantiate_tensor(t, dims, memo) for t in node.outputs),
        flops=evaluate_dims(node.flops, dims, memo),
    )


def _instantiate_tensor(tensor: TensorSpec, dims: Mapping[str, int], memo: dict[str, int]) -> TensorSpec:
    if all(isinstance(d, int) for d in tensor.shape):
        return tensor
    return TensorSpec(tuple(evaluate_dims(d, dims, memo) for d in tensor.shape), tensor.dtype, tensor.is_param)
