"""Run-time use of a fusion policy: the policy picks the plan a compiler builds.

Two entry points, both of which import the model at concrete shapes into the IR, ask the
policy for a plan and build the model with exactly that partition:

* ``torch.compile(model, backend=policy_backend(policy), dynamic=False)``: a torch.compile
  backend. At the first call with new shapes dynamo hands it the captured graph; the graph
  is imported, planned, and every group of the plan becomes one region compiled by
  TorchInductor (``reward.torch_ops.build_region``), run in a topological order of the
  groups. Dynamo guards on shapes, so each new input shape is imported and planned again.
* ``tvm_compile(model, example_inputs, policy)``: the same through TVM: the plan is applied
  to the Relax module (``TVMBackend.build_plan``) and run in TVM's VM.

Outputs equal the eager model's: regions compute each node with its exact operands
(the Relax module's wiring, constants and the scalar operands legalization folded into the
kernels) and the lifted weights TVM's ``main_transform_params`` computes from the model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree

from fusiongym.graphs import ComputeGraph, GraphError
from fusiongym.reward import Plan
from fusiongym.reward.plan import group_successors
from fusiongym.reward.torch_ops import TENSOR, CallArgs, Operand, Region, build_region, compile_region

__all__ = ["ImportedModel", "PlannedModule", "eager_region", "group_order", "import_model", "policy_backend", "tvm_compile"]


@dataclass
class ImportedModel:
    """A model at concrete shapes as the IR sees it, with everything needed to run it.

    ``operands``: per node, the exact source of each input; ``outside``: key -> value of
    weights (after TVM's weight transforms) and constants; ``results``: the operands the
    model returns, flattened; ``num_inputs``: flattened user inputs (``("input", i)`` keys);
    ``in_spec``/``out_spec``: the pytree structure of the model's inputs and outputs.
    """

    graph: ComputeGraph
    operands: list[list[Operand]]
    call_args: dict[int, CallArgs]
    outside: dict[Hashable, np.ndarray]
    weights: list[np.ndarray]
    results: list[Operand]
    num_inputs: int
    in_spec: Any
    out_spec: Any

    def flat_inputs(self, args: Sequence[Any]) -> list[torch.Tensor]:
        flat, spec = pytree.tree_flatten((tuple(args), {}))
        if spec != self.in_spec:
            raise ValueError(f"inputs are structured as {spec}, the model was compiled for {self.in_spec}")
        return flat


def import_model(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], name: str | None = None) -> ImportedModel:
    """torch.export -> TVM Relax -> IR at the example inputs' shapes, with the Relax details
    the IR leaves out (wiring, folded scalars, constants, lifted weights)."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from fusiongym.graphs import relax_import, torch_import
    from fusiongym.reward.tvm_apply import MainAnalysis

    name = name or type(model).__name__
    program = torch_import._export(model, tuple(example_inputs), None, name)
    # Through core ATen: TVM 0.27 imports an undecomposed aten.batch_norm with momentum as
    # its epsilon (0.1 instead of 1e-5), which changes the numbers, not the cost.
    mod = from_exported_program(program, keep_params_as_input=True)
    graph = relax_import.from_relax(mod, name=name)
    lowered = graph.relax_module
    analysis = MainAnalysis(lowered)
    main = lowered["main"]
    num_inputs = int(main.attrs["num_input"])
    position = {param.__chandle__(): index for index, param in enumerate(main.params)}
    outside: dict[Hashable, np.ndarray] = {}

    def operand(source) -> Operand:
        if source.kind == "node":
            return Operand(node_of[source.binding], source.field or 0)
        if source.kind == "param":
            index = position[source.expr.__chandle__()]
            return Operand(None, key=("input", index) if index < num_inputs else ("weight", index - num_inputs))
        key = ("const", source.expr.__chandle__())
        outside[key] = source.expr.value.numpy()
        return Operand(None, key=key)

    node_of = {node.binding: node.id for node in graph.nodes}
    operands = [[operand(s) for s in _leaves(analysis.args[node.binding]) if s.is_tensor] for node in graph.nodes]
    results = []
    for source in _leaves(analysis.resolve(main.body.body)):
        if source.kind == "node" and source.field is None and len(graph.nodes[node_of[source.binding]].outputs) > 1:
            results.extend(Operand(node_of[source.binding], k)
                           for k in range(len(graph.nodes[node_of[source.binding]].outputs)))
        else:
            results.append(operand(source))
    decomposed = relax.transform.DecomposeOpsForInference()(mod)
    by_binding = relax_import._align_op_names(
        _call_args(relax_import._main_bindings(decomposed)),
        relax_import._main_bindings(relax_import._legalize(decomposed)), relax_import._main_bindings(lowered))
    call_args = {node_of[b]: args for b, args in by_binding.items() if b in node_of}
    weights = _lifted_weights(program, lowered, tvm, relax)
    outside.update({("weight", k): w for k, w in enumerate(weights)})
    return ImportedModel(graph, operands, call_args, outside, weights, results, num_inputs,
                         program.call_spec.in_spec, program.call_spec.out_spec)


def _leaves(value) -> list:
    return [leaf for item in value for leaf in _leaves(item)] if isinstance(value, (list, tuple)) else [value]


def _call_args(bindings: list) -> dict[int, CallArgs]:
    """Binding index -> arguments of each high-level Relax op call (TENSOR for tensors)."""
    import tvm
    from tvm import relax

    result = {}
    for index, binding in enumerate(bindings):
        value = binding.value
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name != "relax.call_tir":
            result[index] = tuple(_python_value(arg) for arg in value.args)
    return result


def _python_value(expr) -> Any:
    """A Relax call argument as a Python value: scalars, shapes, tuples; TENSOR for tensors."""
    import tvm
    from tvm import relax

    if isinstance(expr, relax.Tuple):
        return [_python_value(field) for field in expr.fields]
    if isinstance(expr, relax.ShapeExpr):
        return [int(v) for v in expr.values]
    if isinstance(expr, (tvm.ir.Constant, tvm.ir.GenericConst)):
        value = expr.value
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        return array.item() if array.ndim == 0 else TENSOR
    inner = getattr(expr, "value", None)
    if isinstance(inner, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
        return inner.value
    return TENSOR


def _lifted_weights(program, lowered, tvm, relax) -> list[np.ndarray]:
    """The values of main's weight parameters: the model's parameters (in the exported
    program's order, as TVM's frontend declares them) through ``main_transform_params``."""
    kind = torch.export.graph_signature.InputKind.PARAMETER
    params = [program.state_dict[spec.target].detach().cpu().numpy()
              for spec in program.graph_signature.input_specs if spec.kind == kind]
    if "main_transform_params" not in [gv.name_hint for gv in lowered.get_global_vars()]:
        return params
    transform = relax.transform.DeadCodeElimination(["main_transform_params"])(tvm.IRModule(
        {gv: f for gv, f in lowered.functions.items() if gv.name_hint != "main"}))
    vm = relax.VirtualMachine(tvm.compile(transform, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    from fusiongym.reward.tvm_apply import flatten_result

    lifted = vm["main_transform_params"]([tvm.runtime.tensor(p) for p in params])
    return [tensor.numpy() for tensor in flatten_result(lifted)]


def group_order(graph: ComputeGraph, plan: Plan) -> list[int]:
    """Indices of the plan's groups in an order where every producer group runs first."""
    successors = group_successors(graph, plan)
    waiting = [0] * plan.num_groups
    for targets in successors:
        for b in targets:
            waiting[b] += 1
    ready = [g for g in range(plan.num_groups) if waiting[g] == 0]
    order = []
    while ready:
        g = ready.pop()
        order.append(g)
        for b in sorted(successors[g], reverse=True):
            waiting[b] -= 1
            if waiting[b] == 0:
                ready.append(b)
    if len(order) != plan.num_groups:
        raise GraphError(f"{graph.name}: the plan's groups depend on each other in a cycle (non-convex plan)")
    return order


RegionCompiler = Callable[[Region, Sequence[torch.Tensor]], Callable[..., tuple[torch.Tensor, ...]]]


def eager_region(region: Region, example_inputs: Sequence[torch.Tensor]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """A region run op by op without compiling: the reference semantics of the mapping."""
    return region.module


class PlannedModule:
    """An imported model run region by region: one Inductor-compiled region per plan group.

    Each region is compiled on the first call, for the shapes it meets then (seconds each
    on the CPU). ``device``: where weights live and regions run; ``compiler``: how a region
    becomes callable (``compile_region``: TorchInductor; ``eager_region``: no compiler).
    """

    def __init__(self, imported: ImportedModel, plan: Plan, device: str | torch.device = "cpu",
                 compiler: RegionCompiler = compile_region) -> None:
        self.imported = imported
        self.plan = plan
        self.device = torch.device(device)
        self.compiler = compiler
        graph = imported.graph
        self.regions = [build_region(graph, plan.groups[g], imported.operands, imported.call_args)
                        for g in group_order(graph, plan)]
        self.runs: list[Callable | None] = [None] * len(self.regions)
        self.outside = {key: torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
                        for key, value in imported.outside.items()}

    def __call__(self, *args: Any) -> Any:
        values: dict[Hashable, torch.Tensor] = {("outside", key): t for key, t in self.outside.items()}
        for index, tensor in enumerate(self.imported.flat_inputs(args)):
            values[("outside", ("input", index))] = tensor
        for index, region in enumerate(self.regions):
            args = [values[operand.identity] for operand in region.inputs]
            if self.runs[index] is None:
                self.runs[index] = self.compiler(region, args)
            outputs = self.runs[index](*args)
            for (node, k), tensor in zip(region.outputs, outputs):
                values[("node", node, k)] = tensor
        flat = [values[operand.identity] for operand in self.imported.results]
        return pytree.tree_unflatten(flat, self.imported.out_spec)


def policy_backend(policy, device: str = "cpu") -> Callable:
    """A ``torch.compile`` backend that builds each captured graph as ``policy`` plans it.

    Use with ``dynamic=False``: every new input shape is imported and planned anew (the
    plan depends on the shapes). ``compiled.plans`` lists the plans made, newest last.
    """
    from fusiongym.reward.torch_backend import TorchBackend

    backend = TorchBackend(device=device, measure_load=False)

    def compile_graph(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable:
        if _is_dynamic(gm):
            raise ValueError("policy_backend plans for concrete shapes, this graph has symbolic ones: "
                             "call torch.compile(..., dynamic=False)")
        imported = import_model(gm, example_inputs, name=type(gm).__name__)
        planned = PlannedModule(imported, policy.decide(imported.graph, backend), device)
        compile_graph.plans.append(planned.plan)
        return planned

    compile_graph.plans = []
    return compile_graph


def _is_dynamic(gm: torch.fx.GraphModule) -> bool:
    """Whether dynamo captured the graph with symbolic sizes (inputs that are sizes, or tensors
    with symbolic dims)."""
    for node in gm.graph.find_nodes(op="placeholder"):
        value = node.meta.get("example_value")
        if isinstance(value, torch.SymInt) or any(isinstance(d, torch.SymInt) for d in getattr(value, "shape", ())):
            return True
    return False


def tvm_compile(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], policy,
                target: str = "llvm") -> Callable:
    """``model`` imported at the example inputs' shapes, planned by ``policy`` and built by TVM
    with that plan; returns a callable taking and returning torch tensors (same structure)."""
    import tvm
    from tvm import relax

    from fusiongym.reward.tvm_apply import flatten_result
    from fusiongym.reward.tvm_backend import TVMBackend

    imported = import_model(model, example_inputs)
    backend = TVMBackend(target=target, measure_load=False)
    plan = policy.decide(imported.graph, backend)
    device = tvm.cpu() if target == "llvm" else tvm.cuda()
    vm = relax.VirtualMachine(backend.build_plan(imported.graph, plan), device)
    weights = [tvm.runtime.tensor(w, device) for w in imported.weights]

    def run(*args: Any) -> Any:
        inputs = [tvm.runtime.tensor(x.detach().cpu().numpy(), device) for x in imported.flat_inputs(args)]
        result = flatten_result(vm["main"](*inputs, *weights))
        return pytree.tree_unflatten([torch.from_numpy(t.numpy()) for t in result], imported.out_spec)

    run.plan = plan
    return run
