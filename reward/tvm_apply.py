"""Apply a fusion plan to the Relax module a graph was imported from.

Every node of a graph imported by ``graphs.relax_import`` remembers the index of its
``call_tir`` binding in ``main``; a plan is applied to exactly those bindings, the way TVM's
own ``FuseOps`` would have done it: each group becomes a private Relax function with the
``Primitive`` attribute that ``main`` calls, and ``FuseTIR`` turns every such function into
one fused PrimFunc (one kernel). Constants are lifted to parameters and symbolic dims a
group cannot read off its parameters are passed as a trailing shape argument, as FuseOps
does, so re-applying TVM's own partition reproduces TVM's own kernels.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import tvm
from tvm import relax, tirx

from fusiongym.graphs import ComputeGraph, GraphError
from fusiongym.graphs.zoo import relax_module_of

from . import timing  # noqa: F401  (sizes TVM's thread pool before validate runs any kernel)
from .plan import Plan, require_legal

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_MAX_KERNEL_NAME = 64
_ANALYSIS_CACHE_SIZE = 8


class PlanApplicationError(GraphError):
    """A plan cannot be applied to the graph's Relax module; the message says why."""


# --------------------------------------------------------------------------- dims
def bind_dims(graph: ComputeGraph) -> tvm.IRModule:
    """The graph's Relax module with its symbolic dims bound to the graph's concrete sizes.

    A template graph (no concrete shapes) gets its module back unchanged.
    """
    return analyze(graph).mod


def tvm_dim_values(graph: ComputeGraph, mod: tvm.IRModule) -> dict[str, int]:
    """TVM symbolic var name -> concrete size for a concrete graph.

    The importer renames TVM's vars (``s77``) to user dim names (``batch``) and records the
    renaming in ``graph.source["tvm_dims"]``; with the graph's ``context["dims"]`` that gives
    most values. Vars it does not name (graphs from ``from_relax``, unnamed export dims) are
    read off the concrete shapes of the nodes, matched against their bindings' symbolic
    shapes; every match must agree.
    """
    dims = graph.context.get("dims", {})
    values = {tvm_name: int(dims[user]) for user, tvm_name in graph.source.get("tvm_dims", {}).items()
              if user in dims}
    bindings = _main_bindings(mod)
    for node in graph.nodes:
        binding = bindings[node.binding]
        arg_types = [arg.ty for arg in binding.value.args[1].fields if isinstance(arg.ty, relax.TensorType)]
        out_types = list(binding.var.ty.fields) if isinstance(binding.var.ty, relax.TupleType) else [binding.var.ty]
        for ty, spec in list(zip(arg_types, node.inputs)) + list(zip(out_types, node.outputs)):
            for symbolic, concrete in zip(ty.shape.values, spec.shape):
                if isinstance(symbolic, tirx.Var) and isinstance(concrete, int):
                    known = values.setdefault(symbolic.name, concrete)
                    if known != concrete:
                        raise PlanApplicationError(
                            f"{graph.name}: dim {symbolic.name} is {known} but node {node.id} has {concrete} "
                            f"there: the graph does not match its Relax module")
    return values


def _bind_symbolic_vars(graph: ComputeGraph, mod: tvm.IRModule) -> tvm.IRModule:
    """BindSymbolicVars on ``main`` with the sizes of a concrete graph (none for a template)."""
    symbolic = {var.name for var in relax.analysis.defined_symbolic_vars(mod["main"])}
    if graph.is_template or not symbolic:
        return mod
    values = tvm_dim_values(graph, mod)
    missing = sorted(symbolic - set(values))
    if missing:
        raise PlanApplicationError(
            f"{graph.name}: the size of TVM dim(s) {missing} is unknown; instantiate the graph from the "
            f"template imported with this module (graph.instantiate(dims)) so its context names every dim")
    return relax.transform.BindSymbolicVars({name: values[name] for name in symbolic}, "main")(mod)


# ---------------------------------------------------------------- main analysis
@dataclass(frozen=True, eq=False)
class Source:
    """What a ``call_tir`` argument really is, seen through aliases, tuples and tuple fields.

    ``kind`` is ``"param"`` (a parameter of ``main``), ``"const"`` (a constant), ``"node"``
    (output ``field`` of the ``call_tir`` at ``binding``; ``field`` None: the whole output)
    or ``"symbolic"`` (a PrimValue or shape of symbolic dims, passed to the kernel as is).
    """

    kind: str
    expr: relax.Expr
    binding: int = -1
    field: int | None = None

    @property
    def key(self) -> tuple:
        """Hashable identity: the same tensor gives the same key."""
        if self.kind == "node":
            return ("node", self.binding, self.field)
        if self.kind == "symbolic":
            return ("symbolic", str(self.expr))
        return (self.kind, self.expr.__chandle__())

    @property
    def is_tensor(self) -> bool:
        return self.kind != "symbolic"


class MainAnalysis:
    """The dataflow block of ``main`` analysed once for grouping.

    Knows which binding defines each var, what every ``call_tir`` argument resolves to,
    which non-call bindings the function result needs, and which node outputs are read
    outside their producer.
    """

    def __init__(self, mod: tvm.IRModule) -> None:
        main = mod["main"]
        blocks = list(main.body.blocks)
        if len(blocks) != 1 or not isinstance(blocks[0], relax.DataflowBlock):
            raise PlanApplicationError(
                "main must consist of one dataflow block (as TVM's frontends emit it) to apply a plan; "
                f"it has {len(blocks)} block(s)")
        self.mod = mod
        self.main = main
        self.bindings = list(blocks[0].bindings)
        self.index_of = {binding.var.__chandle__(): index for index, binding in enumerate(self.bindings)}
        self.params = {param.__chandle__() for param in main.params}
        self.calls = [i for i, b in enumerate(self.bindings) if is_call_tir(b.value)]
        self._resolved: dict[int, object] = {}
        self.args = {i: [self.resolve(arg) for arg in self.bindings[i].value.args[1].fields] for i in self.calls}
        self.readers: dict[int, list[tuple[int, int | None]]] = {i: [] for i in self.calls}
        for i in self.calls:  # (reading call, field read) per node output
            for source in self.args[i]:
                if source.kind == "node":
                    self.readers[source.binding].append((i, source.field))
        self.kept = self._bindings_needed_by_result()
        self.result_reads = self._node_fields_read_by_result()

    def resolve(self, expr):
        """A Source, or a tuple of them for a tuple literal."""
        if is_symbolic(expr):
            return Source("symbolic", expr)
        if is_constant(expr):
            return Source("const", expr)
        if isinstance(expr, relax.Tuple):
            return tuple(self.resolve(item) for item in expr.fields)
        handle = expr.__chandle__()
        if handle in self.params:
            return Source("param", expr)
        if handle not in self.index_of:
            raise PlanApplicationError(f"{expr} is used in main before it is defined")
        index = self.index_of[handle]
        if index not in self._resolved:
            self._resolved[index] = self._resolve_binding(index)
        return self._resolved[index]

    def _resolve_binding(self, index: int):
        binding = self.bindings[index]
        value = binding.value
        if is_call_tir(value):
            return Source("node", binding.var, index)
        if isinstance(value, (relax.Var, relax.Tuple)) or is_constant(value):
            return self.resolve(value)
        if isinstance(value, relax.TupleGetItem):
            whole = self.resolve(value.tuple_value)
            if isinstance(whole, tuple):
                return whole[value.index]
            if whole.kind == "node" and whole.field is None:
                return Source("node", whole.expr, whole.binding, value.index)
        raise PlanApplicationError(
            f"binding {index} of main ({binding.var.name} = {type(value).__name__}) is neither a call_tir "
            f"nor a tuple, tuple field or alias of one; only legalized modules can be fused")

    def _bindings_needed_by_result(self) -> list[int]:
        """Non-call bindings the function result reads, directly or through each other."""
        needed: set[int] = set()
        stack = [self.main.body.body]
        while stack:
            for var in relax.analysis.free_vars(stack.pop()):
                index = self.index_of.get(var.__chandle__())
                if index is not None and index not in needed and not is_call_tir(self.bindings[index].value):
                    needed.add(index)
                    stack.append(self.bindings[index].value)
        return sorted(needed)

    def _node_fields_read_by_result(self) -> set[tuple[int, int | None]]:
        """(binding, field) of node outputs that kept non-call bindings or the result name."""
        reads: set[tuple[int, int | None]] = set()
        for expr in [self.main.body.body] + [self.bindings[i].value for i in self.kept]:
            for var in relax.analysis.free_vars(expr):
                index = self.index_of.get(var.__chandle__())
                if index is not None and is_call_tir(self.bindings[index].value):
                    reads.update(self.whole_output(index))
        return reads

    def whole_output(self, index: int) -> list[tuple[int, int | None]]:
        """The output units of a node: one tensor, or every field of a tuple."""
        ty = self.bindings[index].var.ty
        if isinstance(ty, relax.TupleType):
            return [(index, k) for k in range(len(ty.fields))]
        return [(index, None)]

    def unit_type(self, unit: tuple[int, int | None]) -> relax.Type:
        index, k = unit
        ty = self.bindings[index].var.ty
        return ty if k is None else ty.fields[k]


def is_symbolic(expr) -> bool:
    """A dim value (PrimExpr) or a shape: passed to kernels as is, never a tensor."""
    return isinstance(expr, relax.ShapeExpr) or tvm.ir.is_prim_expr(expr)


def is_constant(expr) -> bool:
    """A tensor constant (weights embedded in the module); checked after ``is_symbolic``."""
    return isinstance(expr, (tvm.ir.Constant, tvm.ir.GenericConst))


def is_call_tir(value) -> bool:
    """A ``call_tir`` call: one operator kernel of a legalized module."""
    return isinstance(value, relax.Call) and value.op.same_as(_CALL_TIR)


def _main_bindings(mod: tvm.IRModule) -> list:
    return [binding for block in mod["main"].body.blocks for binding in block.bindings]


_ANALYSES: "OrderedDict[tuple[int, str], tuple[MainAnalysis, tvm.IRModule]]" = OrderedDict()


def analyze(graph: ComputeGraph) -> MainAnalysis:
    """The analysis of the graph's module with dims bound, cached for the last few graphs.

    The module comes from ``graph.relax_module`` or, for a graph loaded from JSON, is
    re-imported from its zoo source (``zoo.relax_module_of``).
    """
    try:
        source_module = relax_module_of(graph)
    except ValueError as error:
        raise PlanApplicationError(str(error)) from None
    key = (id(source_module), graph.hash)  # the entry holds the module, so its id stays unique
    if key not in _ANALYSES:
        _ANALYSES[key] = (MainAnalysis(_bind_symbolic_vars(graph, source_module)), source_module)
        while len(_ANALYSES) > _ANALYSIS_CACHE_SIZE:
            _ANALYSES.popitem(last=False)
    _ANALYSES.move_to_end(key)
    return _ANALYSES[key][0]


# ------------------------------------------------------------------ one group
@dataclass
class GroupFunction:
    """A group as a Primitive Relax function, and how ``main`` feeds and reads it."""

    name: str
    func: relax.Function
    inputs: list[Source]                      # one per tensor parameter, in parameter order
    shape_vars: list[tirx.Var]                # trailing shape argument ([] when none)
    outputs: list[tuple[int, int | None]]     # (binding, field) per returned tensor


def make_group_function(analysis: MainAnalysis, bindings: Sequence[int]) -> GroupFunction:
    """Wrap the ``call_tir`` bindings of one group into a private ``Primitive`` function.

    Parameters are the group's external tensors in order of first use (constants lifted
    to parameters), outputs the node outputs read outside the group, in binding order.
    """
    members = sorted(bindings)
    member_set = set(members)
    outputs = _group_outputs(analysis, members, member_set)
    inputs: dict[tuple, Source] = {}
    for index in members:
        for source in analysis.args[index]:
            if source.is_tensor and not (source.kind == "node" and source.binding in member_set):
                inputs.setdefault(source.key, source)
    name = _kernel_name([analysis.bindings[i].value.args[0].name_hint for i in members])
    func = _build_primitive(analysis, members, list(inputs.values()), outputs, [])
    shape_vars = list(relax.analysis.free_symbolic_vars(func))
    if shape_vars:
        func = _build_primitive(analysis, members, list(inputs.values()), outputs, shape_vars)
    return GroupFunction(name, func, list(inputs.values()), shape_vars, outputs)


def _group_outputs(analysis: MainAnalysis, members: list[int], member_set: set[int]) -> list[tuple[int, int | None]]:
    """Output units of members that anything outside the group reads."""
    read: set[tuple[int, int | None]] = {unit for unit in analysis.result_reads if unit[0] in member_set}
    for index in members:
        read.update((index, field) for reader, field in analysis.readers[index] if reader not in member_set)
    if not read:  # a dead group still computes its last node, so it is a real kernel
        read.update(analysis.whole_output(members[-1]))
    return sorted(read, key=lambda unit: (unit[0], -1 if unit[1] is None else unit[1]))


def _build_primitive(analysis: MainAnalysis, members: list[int], inputs: list[Source],
                     outputs: list[tuple[int, int | None]], shape_vars: list[tirx.Var]) -> relax.Function:
    params: list[relax.Var] = []
    values: dict[tuple, relax.Expr] = {}
    constants = 0
    for source in inputs:
        if source.kind == "const":
            name, constants = f"param_{constants}", constants + 1
        else:
            name = source.expr.name if source.field is None else f"{source.expr.name}_{source.field}"
        ty = source.expr.ty if source.kind != "node" else analysis.unit_type((source.binding, source.field))
        params.append(relax.Var(name, ty))
        values[source.key] = params[-1]
    if shape_vars:
        params.append(relax.Var("tir_vars", relax.ShapeType(shape_vars)))
    builder = relax.BlockBuilder()
    with builder.function("group", params, attrs={"Primitive": True}, private=True):
        with builder.dataflow():
            single = outputs[0] if len(outputs) == 1 and outputs[0][1] is None else None
            for index in members:
                binding = analysis.bindings[index]
                call = binding.value
                args = [_value_in_group(builder, values, source) for source in analysis.args[index]]
                new_call = relax.Call(call.op, [call.args[0], relax.Tuple(args), *call.args[2:]],
                                      call.attrs, call.ty_args)
                emit = builder.emit_output if single == (index, None) else builder.emit
                values[("node", index, None)] = emit(new_call, name_hint=binding.var.name)
            if single is not None:
                result = values[("node", *single)]
            else:
                result = builder.emit_output(relax.Tuple(
                    [_value_in_group(builder, values, Source("node", analysis.bindings[i].var, i, k))
                     for i, k in outputs]))
        builder.emit_func_output(result)
    return builder.get()["group"]


def _value_in_group(builder: relax.BlockBuilder, values: dict[tuple, relax.Expr], source: Source) -> relax.Expr:
    """The group-local value of a source; a tuple field of a member is extracted once."""
    if not source.is_tensor:
        return source.expr
    if source.key not in values:
        whole = values[("node", source.binding, None)]
        values[source.key] = builder.emit(relax.TupleGetItem(whole, source.field))
    return values[source.key]


def _kernel_name(callees: list[str]) -> str:
    """``fused_`` + callee names, like FuseOps; long names are cut and made unique by a hash."""
    name = "fused_" + "_".join(callees)
    if len(name) > _MAX_KERNEL_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:_MAX_KERNEL_NAME - 9]}_{digest}"
    return name


# ------------------------------------------------------------------ a whole plan
def group_bindings(graph: ComputeGraph, plan: Plan) -> list[list[int]]:
    """Binding indices per group of ``plan``, in plan order."""
    bindings = []
    for group in plan.groups:
        members = [graph.nodes[n].binding for n in group]
        if any(b is None for b in members):
            raise PlanApplicationError(f"{graph.name}: nodes of group {group[:6]} have no Relax binding")
        bindings.append(members)
    return bindings


def wrap_groups(analysis: MainAnalysis, groups: Sequence[Sequence[int]],
                tags: Sequence[str] | None = None) -> tuple[tvm.IRModule, list[str]]:
    """``main`` rewritten to call one Primitive function per group of call_tir bindings.

    Returns the module and the kernel (function) name of each given group. Bindings no
    group names become singleton groups. ``main`` keeps every non-call binding its result
    needs and emits groups in a topological order of their dependencies (the original order
    where possible), so any convex partition can be applied. Structurally equal groups share
    one function, unless their ``tags`` (e.g. schedules) differ.
    """
    mod = analysis.mod
    covered = {b for group in groups for b in group}
    all_groups = [sorted(g) for g in groups] + [[b] for b in analysis.calls if b not in covered]
    functions = [make_group_function(analysis, group) for group in all_groups]
    builder = relax.BlockBuilder(tvm.IRModule(
        {gv: func for gv, func in mod.functions.items() if gv.name_hint != "main"}, attrs=mod.attrs))
    group_vars = []
    for index, function in enumerate(functions):
        func = function.func
        if tags is not None and index < len(tags):
            func = func.with_attr("fusiongym.tag", tags[index])
        group_vars.append(builder.add_func(func, function.name))
    main = analysis.main
    attrs = {key: value for key, value in (main.attrs or {}).items() if key != "global_symbol"}
    with builder.function("main", list(main.params), attrs=attrs):
        with builder.dataflow():
            fields: dict[tuple[int, int | None], relax.Expr] = {}
            for kind, item in _emission_order(analysis, all_groups, functions):
                if kind == "binding":
                    builder.emit_normalized(analysis.bindings[item])
                else:
                    _emit_group_call(builder, analysis, functions[item], group_vars[item], fields)
        builder.emit_func_output(main.body.body)
    return builder.get(), [gv.name_hint for gv in group_vars[:len(groups)]]


def _emission_order(analysis: MainAnalysis, groups: list[list[int]],
                    functions: list[GroupFunction]) -> list[tuple[str, int]]:
    """Groups and kept bindings in a dependency order (Kahn, original position first)."""
    group_of = {b: g for g, members in enumerate(groups) for b in members}
    items = [("group", g) for g in range(len(groups))] + [("binding", i) for i in analysis.kept]
    position = {item: (min(groups[item[1]]) if item[0] == "group" else item[1]) for item in items}
    depends: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for g, function in enumerate(functions):
        depends[("group", g)] = {("group", group_of[s.binding]) for s in function.inputs if s.kind == "node"}
    for i in analysis.kept:
        deps = set()
        for var in relax.analysis.free_vars(analysis.bindings[i].value):
            index = analysis.index_of.get(var.__chandle__())
            if index is not None:
                deps.add(("group", group_of[index]) if index in group_of else ("binding", index))
        depends[("binding", i)] = deps
    for item, deps in depends.items():
        deps.discard(item)
    users: dict[tuple[str, int], list[tuple[str, int]]] = {item: [] for item in items}
    for item, deps in depends.items():
        for dep in deps:
            users[dep].append(item)
    waiting = {item: len(deps) for item, deps in depends.items()}
    ready = [(position[item], item) for item in items if waiting[item] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, item = heapq.heappop(ready)
        order.append(item)
        for user in users[item]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, (position[user], user))
    if len(order) != len(items):
        stuck = sorted(groups[g][:4] for kind, g in items if kind == "group" and waiting[(kind, g)])
        raise PlanApplicationError(f"the groups depend on each other in a cycle (non-convex plan); "
                                   f"bindings of groups involved: {stuck[:4]}")
    return order


def _emit_group_call(builder: relax.BlockBuilder, analysis: MainAnalysis, function: GroupFunction,
                     gvar: tvm.ir.GlobalVar, fields: dict[tuple[int, int | None], relax.Expr]) -> None:
    """Call a group from main and rebind its node outputs to the original vars.

    ``fields`` maps every (binding, field) emitted so far to its value in main; groups are
    emitted in dependency order, so every input of this group is already there.
    """
    args = [fields[(s.binding, s.field)] if s.kind == "node" else s.expr for s in function.inputs]
    if function.shape_vars:
        args.append(relax.ShapeExpr(function.shape_vars))
    call = relax.Call(gvar, args)
    single = len(function.outputs) == 1 and function.outputs[0][1] is None
    if single:
        index = function.outputs[0][0]
        builder.emit_normalized(relax.VarBinding(analysis.bindings[index].var, builder.normalize(call)))
        fields[function.outputs[0]] = analysis.bindings[index].var
        return
    result = builder.emit(call, name_hint="lv")
    for k, unit in enumerate(function.outputs):
        if unit[1] is None:
            builder.emit_normalized(relax.VarBinding(
                analysis.bindings[unit[0]].var, builder.normalize(relax.TupleGetItem(result, k))))
            fields[unit] = analysis.bindings[unit[0]].var
        else:
            fields[unit] = builder.emit(relax.TupleGetItem(result, k))
    for index in dict.fromkeys(unit[0] for unit in function.outputs if unit[1] is not None):
        units = analysis.whole_output(index)
        if all(unit in fields for unit in units):  # a tuple-valued node: rebuild its var
            builder.emit_normalized(relax.VarBinding(
                analysis.bindings[index].var, builder.normalize(relax.Tuple([fields[u] for u in units]))))


def fuse_tir(mod: tvm.IRModule) -> tvm.IRModule:
    """FuseTIR, then drop PrimFuncs no function calls any more."""
    fused = relax.transform.FuseTIR()(mod)
    return relax.transform.DeadCodeElimination(["main"])(fused)


def apply_plan(graph: ComputeGraph, plan: Plan) -> tvm.IRModule:
    """The graph's module (dims bound) with every group of ``plan`` fused into one PrimFunc."""
    require_legal(graph, plan)
    analysis = analyze(graph)
    return fuse_tir(wrap_groups(analysis, group_bindings(graph, plan))[0])


def group_module(graph: ComputeGraph, nodes: Sequence[int]) -> tvm.IRModule:
    """A standalone module for one group: its fused PrimFunc and a ``main`` calling it.

    ``main`` takes every external input of the group, constants included, as a parameter,
    so the module depends only on the group's structure and shapes, never on weights: the
    module can be built and timed alone, and equal groups give equal modules.
    """
    analysis = analyze(graph)
    members = [graph.nodes[n].binding for n in nodes]
    if any(b is None for b in members):
        raise PlanApplicationError(f"{graph.name}: nodes {list(nodes)[:6]} have no Relax binding")
    function = make_group_function(analysis, members)
    if function.shape_vars:
        raise PlanApplicationError(
            f"{graph.name}: group {list(nodes)[:6]} has symbolic dims {[v.name for v in function.shape_vars]}; "
            f"instantiate the graph (graph.instantiate(dims)) before building a group")
    callees = {analysis.bindings[b].value.args[0] for b in members}
    builder = relax.BlockBuilder(tvm.IRModule({gv: analysis.mod[gv] for gv in callees}))
    gvar = builder.add_func(function.func, function.name)
    params = [relax.Var(f"arg{k}", p.ty) for k, p in enumerate(function.func.params)]
    with builder.function("main", params):
        with builder.dataflow():
            output = builder.emit_output(relax.Call(gvar, params))
        builder.emit_func_output(output)
    return fuse_tir(builder.get())


def kernel_of(mod: tvm.IRModule) -> tuple[str, tirx.PrimFunc]:
    """Name and PrimFunc of the one kernel of a ``group_module``."""
    kernels = [(gv.name_hint, func) for gv, func in mod.functions.items() if isinstance(func, tirx.PrimFunc)]
    if len(kernels) != 1:
        raise PlanApplicationError(f"a group module has one kernel, this one has {len(kernels)}")
    return kernels[0]


# ------------------------------------------------------------------ validation
@dataclass(frozen=True)
class ValidationReport:
    """Fused vs unfused outputs on the same random inputs: the worst absolute and relative error."""

    ok: bool
    max_abs_error: float
    max_rel_error: float
    num_outputs: int
    num_groups: int
    rtol: float
    atol: float
    details: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


def random_inputs(main: relax.Function, seed: int = 0) -> list[np.ndarray]:
    """Seeded random arrays for the parameters of a function with concrete shapes."""
    specs = []
    for param in main.params:
        if not _is_static(param.ty):
            raise PlanApplicationError(f"parameter {param.name} of main has a symbolic shape {param.ty}; "
                                       f"instantiate the graph first")
        specs.append((tuple(int(d) for d in param.ty.shape.values), str(param.ty.dtype)))
    return random_arrays(specs, seed)


def random_arrays(specs: Sequence[tuple[tuple[int, ...], str]], seed: int = 0) -> list[np.ndarray]:
    """Seeded random arrays of the given (shape, dtype): small integers, booleans or normals.

    Integer inputs stay small so that index-like tensors (gather, embedding ids) stay in range.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype in specs:
        if dtype.startswith(("int", "uint")):
            arrays.append(rng.integers(0, 8, size=shape).astype(dtype))
        elif dtype == "bool":
            arrays.append(rng.integers(0, 2, size=shape).astype(bool))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def _is_static(ty) -> bool:
    return isinstance(ty, relax.TensorType) and ty.shape is not None and all(
        isinstance(d, tirx.IntImm) for d in ty.shape.values)


def main_only(mod: tvm.IRModule) -> tvm.IRModule:
    """Drop other public Relax functions (e.g. ``main_transform_params``) and what only they use."""
    kept = tvm.IRModule({gv: f for gv, f in mod.functions.items()
                         if gv.name_hint == "main" or not isinstance(f, relax.Function)}, attrs=mod.attrs)
    return relax.transform.DeadCodeElimination(["main"])(kept)


def run_module(mod: tvm.IRModule, inputs: Sequence[np.ndarray], target: tvm.target.Target | None = None) -> list[np.ndarray]:
    """Build ``main`` of ``mod`` for the CPU with ``tvm.compile`` and run it on ``inputs``."""
    target = target or tvm.target.Target({"kind": "llvm"})
    executable = tvm.compile(main_only(mod), target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(array) for array in inputs])
    return [tensor.numpy() for tensor in flatten_result(result)]


def flatten_result(result) -> list:
    """The tensors of a VM result (a tensor or nested tuples of them), in order."""
    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    return [leaf for item in result for leaf in flatten_result(item)]


def validate(graph: ComputeGraph, plan: Plan, rtol: float = 1e-4, atol: float = 1e-5, seed: int = 0) -> ValidationReport:
    """Run the fused and the unfused module on the same seeded inputs and compare outputs.

    A plan changes which kernels run, never what is computed: any difference beyond
    float reassociation noise means the plan was applied wrongly.
    """
    unfused = bind_dims(graph)
    inputs = random_inputs(unfused["main"], seed)
    expected = run_module(unfused, inputs)
    actual = run_module(apply_plan(graph, plan), inputs)
    details = []
    max_abs = max_rel = 0.0
    if len(expected) != len(actual):
        details.append(f"{len(actual)} outputs, expected {len(expected)}")
    for k, (want, got) in enumerate(zip(expected, actual)):
        if want.shape != got.shape:
            details.append(f"output {k}: shape {got.shape}, expected {want.shape}")
            continue
        error = np.abs(got.astype(np.float64) - want.astype(np.float64))
        scale = np.abs(want.astype(np.float64))
        max_abs = max(max_abs, float(error.max(initial=0.0)))
        max_rel = max(max_rel, float((error / np.maximum(scale, atol)).max(initial=0.0)))
        if not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
            details.append(f"output {k}: max abs error {float(error.max()):.3g} beyond rtol={rtol}, atol={atol}")
    return ValidationReport(not details, max_abs, max_rel, len(expected), plan.num_groups, rtol, atol, details)
