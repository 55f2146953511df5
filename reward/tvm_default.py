"""TVM's own fusion decision as a Plan: the baseline every learned plan is compared with.

``relax.transform.FuseOps`` is run on the very module the graph indexes into, and its
decision is read back, not re-implemented: every ``call_tir`` inside each fused function
(and every one FuseOps left alone in ``main``) is matched to the base binding with the
same callee and the same operands. Applying the recovered plan with ``apply_plan``
reproduces TVM's fused PrimFuncs exactly.
"""

from __future__ import annotations

import tvm
from tvm import relax

from fusiongym.graphs import ComputeGraph

from .plan import DEFAULT_SCHEDULE, Plan
from .tvm_apply import MainAnalysis, PlanApplicationError, analyze, is_call_tir, is_constant, is_symbolic


def tvm_default_plan(graph: ComputeGraph) -> Plan:
    """The partition TVM's FuseOps chooses for ``graph``, every group with the default schedule.

    ``plan.meta["kernels"]`` names the fused function FuseOps made for each group (None for
    operators it left unfused).
    """
    analysis = analyze(graph)
    fused = relax.transform.FuseOps()(analysis.mod)
    groups = _FuseOpsDecision(analysis, fused).groups()
    node_of = {node.binding: node.id for node in graph.nodes}
    plan_groups, kernels = [], []
    for kernel, bindings in groups:
        nodes = sorted(node_of[b] for b in bindings if b in node_of)  # dead bindings are no nodes
        if nodes:
            plan_groups.append(nodes)
            kernels.append(kernel)
    order = sorted(range(len(plan_groups)), key=lambda g: plan_groups[g][0])
    return Plan([plan_groups[g] for g in order], [DEFAULT_SCHEDULE] * len(order), graph.hash,
                meta={"source": "tvm.relax.transform.FuseOps", "kernels": [kernels[g] for g in order]})


class _FuseOpsDecision:
    """Reads FuseOps' output back as groups of base binding indices."""

    def __init__(self, base: MainAnalysis, fused: tvm.IRModule) -> None:
        self.base = base
        self.fused = fused
        self.candidates: dict[tuple, list[int]] = {}
        for index in base.calls:
            key = (base.bindings[index].value.args[0].name_hint, tuple(s.key for s in base.args[index]))
            self.candidates.setdefault(key, []).append(index)

    def groups(self) -> list[tuple[str | None, list[int]]]:
        """(fused function name or None, base bindings) per kernel, in main's order."""
        main = self.fused["main"]
        env = {param.__chandle__(): ("param", base.__chandle__())
               for param, base in zip(main.params, self.base.main.params)}
        groups: list[tuple[str | None, list[int]]] = []
        for block in main.body.blocks:
            for binding in block.bindings:
                value = binding.value
                if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar) \
                        and isinstance(self.fused[value.op], relax.Function):
                    members: list[int] = []
                    args = [self._key(env, arg) for arg in value.args]
                    env[binding.var.__chandle__()] = self._walk_function(self.fused[value.op], args, members)
                    groups.append((value.op.name_hint, members))
                else:
                    members = []
                    env[binding.var.__chandle__()] = self._value(env, value, members)
                    if members:
                        groups.append((None, members))
        return groups

    def _walk_function(self, func: relax.Function, args: list, members: list[int]):
        env = {param.__chandle__(): arg for param, arg in zip(func.params, args)}
        for block in func.body.blocks:
            for binding in block.bindings:
                env[binding.var.__chandle__()] = self._value(env, binding.value, members)
        return self._key(env, func.body.body)

    def _value(self, env: dict, value, members: list[int]):
        """Key of a bound value; a call_tir is matched to its base binding and recorded."""
        if is_call_tir(value):
            operands = tuple(self._key(env, arg) for arg in value.args[1].fields)
            found = self.candidates.get((value.args[0].name_hint, operands))
            if not found:
                raise PlanApplicationError(
                    f"FuseOps produced a call to {value.args[0].name_hint} that matches no binding of the "
                    f"graph's module; cannot read its decision back")
            index = found.pop(0)
            members.append(index)
            return ("node", index, None)
        if isinstance(value, relax.TupleGetItem):
            whole = self._key(env, value.tuple_value)
            if isinstance(whole, list):
                return whole[value.index]
            return ("node", whole[1], value.index)
        return self._key(env, value)

    def _key(self, env: dict, expr):
        """Base Source key of an operand (a list of keys for a tuple)."""
        if is_symbolic(expr):
            return ("symbolic", str(expr))
        if is_constant(expr):
            return ("const", expr.__chandle__())
        if isinstance(expr, relax.Tuple):
            return [self._key(env, item) for item in expr.fields]
        return env[expr.__chandle__()]
