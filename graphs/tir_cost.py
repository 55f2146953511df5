"""FLOPs of a TIR PrimFunc as an expression over its symbolic dims.

Counting on the legalized TIR (instead of per-op formulas) covers every operator TVM can
lower, with one rule: each arithmetic operation in a stored value counts once per
iteration of the loops around it. Index arithmetic (inside buffer loads) and selects do
not count. Convolution and matmul therefore count 2 FLOPs per multiply-accumulate.
"""

from __future__ import annotations

from typing import Callable

import tvm
from tvm import tirx
from tvm.sym import Analyzer
from tvm.s_tir import SBlock, SBlockRealize

_ARITHMETIC = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Mod, tirx.FloorDiv, tirx.FloorMod,
               tirx.Max, tirx.Min)
_ANALYZER = Analyzer()
_FREE_CALLS = {"if_then_else", "likely", "reinterpret", "assume"}  # selection and hints, not arithmetic


def count_flops(func: tirx.PrimFunc) -> tirx.PrimExpr:
    """Total arithmetic operations executed by ``func`` (a PrimExpr; constant when static)."""
    total = _stmt_flops(func.body, tirx.const(1, "int64"))
    return _ANALYZER.simplify(total)


def _stmt_flops(stmt, trip_count) -> tirx.PrimExpr:
    if isinstance(stmt, tirx.For):
        return _stmt_flops(stmt.body, trip_count * stmt.extent)
    if isinstance(stmt, tirx.SeqStmt):
        total = tirx.const(0, "int64")
        for child in stmt.seq:
            total = total + _stmt_flops(child, trip_count)
        return total
    if isinstance(stmt, SBlockRealize):
        return _stmt_flops(stmt.block, trip_count)
    if isinstance(stmt, SBlock):
        return _stmt_flops(stmt.body, trip_count)  # init blocks only store constants
    if isinstance(stmt, tirx.BufferStore):
        return trip_count * _expr_ops(stmt.value)
    if isinstance(stmt, tirx.IfThenElse):
        taken = _stmt_flops(stmt.then_case, trip_count)
        if stmt.else_case is not None:
            taken = tvm.tirx.max(taken, _stmt_flops(stmt.else_case, trip_count))
        return taken
    body = getattr(stmt, "body", None)  # LetStmt, AttrStmt, AllocBuffer, DeclBuffer, ...
    return _stmt_flops(body, trip_count) if body is not None else tirx.const(0, "int64")


def _expr_ops(expr) -> int:
    if isinstance(expr, _ARITHMETIC):
        return 1 + _expr_ops(expr.a) + _expr_ops(expr.b)
    if isinstance(expr, tvm.ir.Call):
        own = 0 if str(expr.op.name).rsplit(".", 1)[-1] in _FREE_CALLS else 1
        return own + sum(_expr_ops(arg) for arg in expr.args)
    if isinstance(expr, tirx.Cast):
        return _expr_ops(expr.value)
    if isinstance(expr, tirx.Select):
        return max(_expr_ops(expr.true_value), _expr_ops(expr.false_value))
    return 0  # loads, constants, variables


def prim_expr_to_python(expr, name_of: Callable[[tirx.Var], str]) -> int | str:
    """A Python expression string for ``expr`` (an int when constant).

    ``name_of`` renames variables, e.g. TVM's ``s77`` to the user's dim name ``batch``.
    """
    expr = _ANALYZER.simplify(expr)
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    return _to_python(expr, name_of)


_BINARY_SYNTAX = {
    tirx.Add: "({} + {})", tirx.Sub: "({} - {})", tirx.Mul: "({} * {})",
    tirx.FloorDiv: "({} // {})", tirx.FloorMod: "({} % {})", tirx.Div: "({} // {})",
    tirx.Max: "max({}, {})", tirx.Min: "min({}, {})",
}


def _to_python(expr, name_of: Callable[[tirx.Var], str]) -> str:
    if isinstance(expr, tirx.IntImm):
        return str(int(expr.value))
    if isinstance(expr, tirx.FloatImm):
        return repr(float(expr.value))
    if isinstance(expr, tirx.Var):
        return name_of(expr)
    if isinstance(expr, tirx.Cast):
        return _to_python(expr.value, name_of)
    syntax = _BINARY_SYNTAX.get(type(expr))
    if syntax is None:
        raise ValueError(f"cannot express symbolic shape term {expr} ({type(expr).__name__}) in Python")
    return syntax.format(_to_python(expr.a, name_of), _to_python(expr.b, name_of))
