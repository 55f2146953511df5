"""Relax IRModule -> ComputeGraph.

The module is lowered the way TVM itself lowers it before fusion
(DecomposeOpsForInference -> LegalizeOps -> AnnotateTIROpPattern -> LiftTransformParams);
every ``call_tir`` binding of ``main`` becomes one node that remembers its binding index, so
a backend can later apply a plan to exactly this module.

A template (symbolic dims) is lowered so that ``template.instantiate(dims)`` equals a static
import at those dims: op patterns are the ones TVM annotates at static shapes, and
computations that read weights and dims but no run-time input (a position table sliced by
``seq``) are lifted out of ``main`` as LiftTransformParams lifts them at static shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import tvm
from tvm import relax, tirx

from .ir import ComputeGraph, Edge, GraphError, OpKind, OpNode, SymbolRange, TensorSpec
from .tir_cost import count_flops, prim_expr_to_python


_CONSTANTS = (tvm.ir.Constant, tvm.ir.GenericConst)
_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


class UnsupportedOpError(GraphError):
    """The model contains an operator the importer cannot turn into a graph node."""


def lower_for_fusion(mod: tvm.IRModule, example_dims: Mapping[str, int] | None = None) -> tvm.IRModule:
    """The passes TVM runs before FuseOps: decomposed, legalized to TIR, patterns annotated,
    and weight preprocessing lifted out of ``main`` (see ``from_relax`` for ``example_dims``)."""
    return _lower(relax.transform.DecomposeOpsForInference()(mod), example_dims)[1]


def _lower(decomposed: tvm.IRModule, example_dims: Mapping[str, int] | None) -> tuple[tvm.IRModule, tvm.IRModule]:
    """(legalized, lowered) modules of a decomposed one; ``legalized`` has main's bindings
    one to one with ``decomposed``."""
    legalized = _legalize(decomposed)
    at_example = _legalize_at_example_dims(decomposed, example_dims)
    folded: frozenset[str] = frozenset()
    if at_example is not None:
        legalized = _annotate_static_op_patterns(legalized, at_example)
        folded = _folded_at_static_shapes(legalized, at_example)
    lowered = _remove_dead_bindings(_lift_weight_transforms(legalized, folded))
    return legalized, lowered


def _legalize(decomposed: tvm.IRModule) -> tvm.IRModule:
    return relax.transform.AnnotateTIROpPattern()(relax.transform.LegalizeOps()(decomposed))


def _legalize_at_example_dims(decomposed: tvm.IRModule, example_dims: Mapping[str, int] | None) -> tvm.IRModule | None:
    """The module legalized with main's symbolic dims bound to example sizes: what a static
    import gives. None when main has no symbolic dims or no example size for any of them."""
    symbolic = {var.name for var in relax.analysis.defined_symbolic_vars(decomposed["main"])}
    sizes = {name: int(size) for name, size in (example_dims or {}).items() if name in symbolic}
    if not sizes:
        return None
    return _legalize(relax.transform.BindSymbolicVars(sizes, "main")(decomposed))


def _annotate_static_op_patterns(legalized: tvm.IRModule, at_example: tvm.IRModule) -> tvm.IRModule:
    """Each PrimFunc ``main`` calls, annotated with the op pattern its calls get at static shapes.

    AnnotateTIROpPattern labels a reshape over symbolic dims ``opaque`` (its indices take
    ``% batch``, which the pattern analysis cannot see through); the same reshape at static
    shapes is ``injective``. A PrimFunc called at several sites takes the most restrictive
    (highest) pattern of its calls. Graph kinds, the module and FuseOps then agree."""
    patterns: dict[str, int] = {}
    for symbolic, static in _paired_bindings(legalized, at_example):
        if _is_call_tir(symbolic.value) and _is_call_tir(static.value):
            pattern = int(at_example[static.value.args[0]].attrs["op_pattern"])
            callee = symbolic.value.args[0].name_hint
            patterns[callee] = max(patterns.get(callee, pattern), pattern)
    functions = {gv: func.with_attr("op_pattern", patterns[gv.name_hint]) if gv.name_hint in patterns else func
                 for gv, func in legalized.functions.items()}
    return tvm.IRModule(functions, attrs=legalized.attrs)


def _folded_at_static_shapes(legalized: tvm.IRModule, at_example: tvm.IRModule) -> frozenset[str]:
    """Names of main's kernels that LegalizeOps folds into constants at static shapes
    (``arange(seq)`` is ``arange(40)``, a constant): in a template they are sized by dims."""
    return frozenset(symbolic.var.name for symbolic, static in _paired_bindings(legalized, at_example)
                     if _is_call_tir(symbolic.value) and isinstance(static.value, _CONSTANTS))


def _paired_bindings(legalized: tvm.IRModule, at_example: tvm.IRModule) -> list[tuple]:
    """Main's bindings of the symbolic and the static legalization, which LegalizeOps
    rewrites in place."""
    symbolic, static = _main_bindings(legalized), _main_bindings(at_example)
    if [b.var.name for b in symbolic] != [b.var.name for b in static]:
        raise GraphError("binding the symbolic dims of main to example sizes changed its bindings; "
                         "cannot read static op patterns off it")
    return list(zip(symbolic, static))


def _is_call_tir(value) -> bool:
    return isinstance(value, relax.Call) and value.op.same_as(_CALL_TIR)


def _lift_weight_transforms(mod: tvm.IRModule, folded: frozenset[str]) -> tvm.IRModule:
    """Move ops that depend only on weights (batch-norm statistics, bias reshapes) into
    ``main_transform_params``, as TVM deployments do: they run once, not per inference.
    ``folded``: kernels a static import has as constants (see ``_lift_transforms_over_dims``)."""
    attrs = mod["main"].attrs
    if attrs is None or "num_input" not in attrs:
        return mod  # weights are constants; nothing to lift
    return _lift_transforms_over_dims(relax.transform.LiftTransformParams()(mod), folded)


def _lift_transforms_over_dims(mod: tvm.IRModule, folded: frozenset[str]) -> tvm.IRModule:
    """Lift what LiftTransformParams leaves in ``main`` only because it is sized by dims.

    At static shapes a binding that reads weights and no run-time input is lifted, and an
    ``arange`` is a constant; over symbolic dims LiftTransformParams keeps both in ``main``
    (``take(rope_table, arange(seq))``, a class token broadcast over ``batch``). Here each
    binding that reads no run-time input and reads a weight or is ``folded`` becomes a
    parameter of ``main`` (after the weights; ``num_input`` is unchanged), and
    ``main_transform_params`` computes it from the weights and a trailing shape of
    ``main``'s dims. Bindings of constants and dims only (a causal mask) stay, as they do
    at static shapes."""
    main = mod["main"]
    bindings = _main_bindings(mod)
    lifted = _transforms_over_dims(main, bindings, folded)
    if not lifted:
        return mod
    lifted_vars = {bindings[i].var for i in lifted}
    kept_reads = {var for b in bindings if b.var not in lifted_vars for var in relax.analysis.free_vars(b.value)}
    kept_reads.update(relax.analysis.free_vars(main.body.body))
    read = [bindings[i].var for i in lifted if bindings[i].var in kept_reads]
    params = {var: relax.Var(var.name, var.ty) for var in read}
    transform = mod.get_global_var("main_transform_params")
    functions = dict(mod.functions)
    functions[mod.get_global_var("main")] = _main_with_params(main, params)
    functions[transform] = _transform_params_with(mod[transform], main, bindings, read)
    return tvm.IRModule(functions, attrs=mod.attrs)


def _transforms_over_dims(main: relax.Function, bindings: list, folded: frozenset[str]) -> list[int]:
    """Indices of the bindings ``_lift_transforms_over_dims`` lifts, in order."""
    num_input = int(main.attrs["num_input"])
    run_time, weights = set(main.params[:num_input]), set(main.params[num_input:])
    lifted = []
    for index, binding in enumerate(bindings):
        reads = set(relax.analysis.free_vars(binding.value))
        if reads & run_time:
            run_time.add(binding.var)
        elif reads & weights:
            weights.add(binding.var)
            lifted.append(index)
        elif binding.var.name in folded:
            lifted.append(index)
    return lifted


@relax.expr_functor.mutator
class _Copier(relax.PyExprMutator):
    """TVM's ExprMutator as is: copies an expression, replacing the vars remapped on it."""


def _main_with_params(main: relax.Function, params: Mapping) -> relax.Function:
    """``main`` reading ``params`` (old var -> new parameter) instead of computing the old
    vars; the bindings that computed them, now unused, are removed."""
    extended = relax.Function(list(main.params) + list(params.values()), main.body, main.ret_ty,
                              main.is_pure, main.attrs)
    copier = _Copier()
    for old, new in params.items():
        copier.set_var_remap(old, new)
    return relax.analysis.remove_all_unused(copier.visit_expr(extended))


def _transform_params_with(transform: relax.Function, main: relax.Function, bindings: list,
                           values: list) -> relax.Function:
    """``main_transform_params`` that also returns ``values`` (vars of main), computed from
    main's weights (its own results) and a trailing shape argument that defines main's dims
    (``R.Shape([seq, batch])``: its symbolic vars, in the order main defines them)."""
    num_input = int(main.attrs["num_input"])
    needed = set(values)
    closure = []
    for binding in reversed(bindings):
        if binding.var in needed:
            closure.append(binding)
            needed.update(relax.analysis.free_vars(binding.value))
    dims = relax.Var("dims", relax.ShapeType(list(relax.analysis.defined_symbolic_vars(main))))
    attrs = {key: value for key, value in (transform.attrs or {}).items() if key != "global_symbol"}
    builder = relax.BlockBuilder()
    with builder.function("main_transform_params", [*transform.params, dims], attrs=attrs):
        with builder.dataflow():
            for block in transform.body.blocks:
                for binding in block.bindings:
                    builder.emit_normalized(binding)
            weights = builder.emit(transform.body.body)
            for k, weight in enumerate(main.params[num_input:]):
                builder.emit_normalized(relax.VarBinding(weight, relax.TupleGetItem(weights, k)))
            for binding in reversed(closure):
                builder.emit_normalized(binding)
            output = builder.emit_output(relax.Tuple(list(main.params[num_input:]) + values))
        builder.emit_func_output(output)
    return relax.utils.copy_with_new_vars(builder.get()["main_transform_params"])


def _remove_dead_bindings(mod: tvm.IRModule) -> tvm.IRModule:
    """DeadCodeElimination: LiftTransformParams leaves bindings whose only readers it lifted
    (``cast(arange(40))`` of a static import), which would shift binding indices between a
    static and a template import (they are dead either way, never nodes)."""
    return relax.transform.DeadCodeElimination()(mod)


def from_relax(
    mod: tvm.IRModule,
    name: str = "relax_module",
    dim_names: Mapping[str, str] | None = None,
    source: Mapping[str, Any] | None = None,
    example_dims: Mapping[str, int] | None = None,
) -> ComputeGraph:
    """Import the ``main`` function of ``mod`` (high-level or already legalized Relax).

    ``dim_names`` renames TVM's symbolic vars (e.g. ``{"s77": "batch"}``); unnamed symbolic
    vars keep their TVM names. ``example_dims`` gives TVM's symbolic vars example sizes
    (e.g. ``{"s77": 2}``): op patterns are read at those static shapes, and kernels a static
    import folds into constants are lifted; without them a template keeps TVM's symbolic
    annotation. The lowered module is kept on ``graph.relax_module``.
    """
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise GraphError(f"{name}: the IRModule has no 'main' function to import")
    decomposed = relax.transform.DecomposeOpsForInference()(mod)
    legalized, lowered = _lower(decomposed, example_dims)
    op_names = _align_op_names(_relax_op_names(decomposed), _main_bindings(legalized), _main_bindings(lowered))
    graph = _GraphBuilder(lowered, name, dict(dim_names or {}), op_names).build().without_dead_nodes()
    graph.source = dict(source or {})
    graph.relax_module = lowered
    return graph


@dataclass(frozen=True)
class _NodeOutput:
    node: int
    output: int


@dataclass(frozen=True)
class _Opaque:
    """A value that is not produced by a node: a graph input or a constant."""

    spec: TensorSpec


def _relax_op_names(mod: tvm.IRModule) -> dict[int, tuple[str, dict]]:
    """Binding index -> (op name, attrs) of high-level Relax calls, before legalization.

    LegalizeOps rewrites each call in place, so binding indices carry over.
    """
    names: dict[int, tuple[str, dict]] = {}
    for index, binding in enumerate(_main_bindings(mod)):
        value = binding.value
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            op_name = str(value.op.name)
            if op_name.startswith("relax.") and op_name != "relax.call_tir":
                names[index] = (op_name.rsplit(".", 1)[-1], _attrs_dict(value.attrs))
    return names


def _align_op_names(names: dict[int, tuple[str, dict]], before: list, after: list) -> dict[int, tuple[str, dict]]:
    """Carry op names across LiftTransformParams, whose bindings are a subsequence of the
    input's (it creates new Var objects, so match on var name and callee in order)."""
    aligned: dict[int, tuple[str, dict]] = {}
    position = 0
    for index, binding in enumerate(after):
        while position < len(before) and not _same_binding(before[position], binding):
            position += 1
        if position == len(before):
            return aligned
        if position in names:
            aligned[index] = names[position]
        position += 1
    return aligned


def _same_binding(a, b) -> bool:
    if a.var.name != b.var.name:
        return False
    a_tir, b_tir = _is_call_tir(a.value), _is_call_tir(b.value)
    return a_tir == b_tir and (not a_tir or a.value.args[0].name_hint == b.value.args[0].name_hint)


def _main_bindings(mod: tvm.IRModule) -> list:
    body = mod["main"].body
    return [binding for block in body.blocks for binding in block.bindings]


def _attrs_dict(attrs) -> dict:
    if attrs is None:
        return {}
    result = {}
    for key in dir(attrs):
        if key.startswith("_") or key in {"id_", "is_", "same_as", "get_int", "get_int_tuple", "get_str"}:
            continue
        value = getattr(attrs, key)
        if callable(value):
            continue
        converted = _json_value(value)
        if converted is not None:
            result[key] = converted
    return result


def _json_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tirx.IntImm, tirx.FloatImm)):
        return value.value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Array":
        items = [_json_value(v) for v in value]
        return items if all(v is not None for v in items) else None
    if value is None:
        return None
    text = str(value)
    return text if len(text) < 64 else None


class _GraphBuilder:
    """Walks the bindings of a lowered ``main`` once, in order."""

    def __init__(self, mod: tvm.IRModule, name: str, dim_names: dict[str, str],
                 op_names: dict[int, tuple[str, dict]]) -> None:
        self.mod = mod
        self.name = name
        self.dim_names = dim_names
        self.op_names = op_names
        self.values: dict[Any, Any] = {}   # relax Var -> _NodeOutput | _Opaque | tuple
        self.nodes: list[OpNode] = []
        self.edges: list[Edge] = []
        self.flops_cache: dict[str, Any] = {}   # callee name -> its PrimFunc's FLOPs expression
        self.function_names = {gv.name_hint for gv in mod.get_global_vars()}
        self.seen_dims: set[str] = set()   # dim names that appear in some shape

    # ------------------------------------------------------------------ entry
    def build(self) -> ComputeGraph:
        main = self.mod["main"]
        num_inputs = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else len(main.params)
        for position, param in enumerate(main.params):
            self.values[param] = _Opaque(self._spec(param.ty, is_param=position >= num_inputs))
        for index, binding in enumerate(_main_bindings(self.mod)):
            self._bind(index, binding)
        outputs = [(v.node, v.output) for v in self._flatten(self._resolve(main.body.body))
                   if isinstance(v, _NodeOutput)]
        if not self.nodes:
            raise GraphError(f"{self.name}: main has no operators (no call_tir after legalization)")
        return ComputeGraph(self.nodes, self.edges, outputs, name=self.name, symbols=self._symbols(main))

    def _symbols(self, main) -> list[SymbolRange]:
        """Every dim a shape mentions, with the bounds TVM recorded for it."""
        attrs = main.attrs or {}
        lower = {str(k): int(v) for k, v in dict(attrs.get("tir_var_lower_bound", {})).items()}
        upper = {str(k): int(v) for k, v in dict(attrs.get("tir_var_upper_bound", {})).items()}
        tvm_names = {self.dim_names.get(n, n): n for n in set(lower) | set(upper)}
        return [SymbolRange(dim, lower.get(tvm_names.get(dim, dim), 1), upper.get(tvm_names.get(dim, dim), 2**31 - 1))
                for dim in sorted(self.seen_dims)]

    # --------------------------------------------------------------- bindings
    def _bind(self, index: int, binding) -> None:
        value = binding.value
        var = binding.var
        if _is_call_tir(value):
            self.values[var] = self._add_node(index, var, value)
        elif isinstance(value, relax.Tuple):
            self.values[var] = tuple(self._resolve(field) for field in value.fields)
        elif isinstance(value, relax.TupleGetItem):
            self.values[var] = self._resolve(value.tuple_value)[value.index]
        elif isinstance(value, (tvm.ir.Var, *_CONSTANTS)):
            self.values[var] = self._resolve(value)
        else:
            op = value.op.name if isinstance(value, relax.Call) and hasattr(value.op, "name") else type(value).__name__
            raise UnsupportedOpError(
                f"{self.name}: unsupported operator {op} at binding {index} ({var.name}) of main: "
                f"only operators that TVM's LegalizeOps lowers to TIR can be fused. Fix: replace the "
                f"op in the model or register a legalization for it (tvm.relax.transform.LegalizeOps)."
            )

    def _resolve(self, expr):
        if isinstance(expr, _CONSTANTS):
            return _Opaque(self._spec(expr.ty, is_param=True))
        if isinstance(expr, relax.Tuple):
            return tuple(self._resolve(field) for field in expr.fields)
        if expr in self.values:
            return self.values[expr]
        if not isinstance(getattr(expr, "ty", None), (relax.TensorType, relax.TupleType)):
            return ()  # symbolic shape values and prim values carry no tensor
        raise GraphError(f"{self.name}: {expr} is used before it is defined")

    @staticmethod
    def _flatten(value) -> list:
        if isinstance(value, tuple):
            return [leaf for item in value for leaf in _GraphBuilder._flatten(item)]
        return [value]

    # ------------------------------------------------------------------ nodes
    def _add_node(self, index: int, var, call: relax.Call):
        callee = call.args[0]
        args = list(call.args[1].fields)
        node_id = len(self.nodes)
        sources = tuple(self._resolve(arg) for arg in args)
        inputs: list[TensorSpec] = []
        in_edges: dict[Edge, None] = {}  # ordered set: a tensor read twice is one edge
        for leaf in self._flatten(sources):
            if isinstance(leaf, _NodeOutput):
                inputs.append(self.nodes[leaf.node].outputs[leaf.output])
                in_edges[Edge(leaf.node, node_id, leaf.output)] = None
            else:
                inputs.append(leaf.spec)
        self.edges.extend(in_edges)
        out_types = list(var.ty.fields) if isinstance(var.ty, relax.TupleType) else [var.ty]
        outputs = tuple(self._spec(ty) for ty in out_types)
        op, attrs = self.op_names.get(index, (self._callee_op_name(callee.name_hint), {}))
        func = self.mod[callee]
        kind = int(func.attrs["op_pattern"]) if func.attrs and "op_pattern" in func.attrs else int(OpKind.OPAQUE)
        self.nodes.append(OpNode(
            id=node_id, op=op, kind=OpKind(kind) if kind in OpKind._value2member_map_ else OpKind.OPAQUE,
            inputs=tuple(inputs), outputs=outputs, flops=self._flops(callee, func, args, out_types),
            attrs={**attrs, "callee": callee.name_hint}, binding=index,
        ))
        if len(outputs) == 1:
            return _NodeOutput(node_id, 0)
        return tuple(_NodeOutput(node_id, i) for i in range(len(outputs)))

    def _callee_op_name(self, callee: str) -> str:
        """``add1`` -> ``add`` when ``add`` exists too (BlockBuilder's de-duplicated names)."""
        base = callee.rstrip("0123456789")
        return base if base != callee and base in self.function_names else callee

    def _flops(self, callee, func, args, out_types):
        """FLOPs of one call, with the PrimFunc's shape vars bound to this call's shapes.

        The TIR walk runs once per PrimFunc: BlockBuilder shares one PrimFunc between
        structurally equal calls (every repeated block of a ResNet or transformer)."""
        if callee.name_hint not in self.flops_cache:
            self.flops_cache[callee.name_hint] = count_flops(func)
        flops = self.flops_cache[callee.name_hint]
        if isinstance(flops, tirx.IntImm):
            return int(flops.value)
        binding = {}
        shapes = [arg.ty.shape.values for arg in args if isinstance(arg.ty, relax.TensorType)]
        shapes += [ty.shape.values for ty in out_types]
        for param, shape in zip(func.params, shapes):
            for buffer_dim, call_dim in zip(getattr(param, "shape", None) or (), shape):
                if isinstance(buffer_dim, tirx.Var) and buffer_dim.name not in binding:
                    binding[buffer_dim.name] = self._dim(call_dim)
        return prim_expr_to_python(flops, lambda v: self._bound_name(v, binding))

    def _bound_name(self, var, binding: dict[str, Any]) -> str:
        if var.name not in binding:
            return self._var_name(var)
        bound = binding[var.name]
        return f"({bound})" if isinstance(bound, str) else str(bound)

    # ----------------------------------------------------------------- shapes
    def _var_name(self, var) -> str:
        name = self.dim_names.get(var.name, var.name)
        self.seen_dims.add(name)
        return name

    def _dim(self, dim):
        return prim_expr_to_python(dim, self._var_name)

    def _spec(self, ty, is_param: bool = False) -> TensorSpec:
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise UnsupportedOpError(f"{self.name}: a value of type {ty} is not a tensor of known rank")
        return TensorSpec(tuple(self._dim(d) for d in ty.shape.values), str(ty.dtype), is_param)
