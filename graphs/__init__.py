"""fusiongym.graphs: the compute-graph IR, importers, model zoo and dynamic workloads.

TVM is imported lazily (``import tvm`` costs seconds): only ``from_torch`` and
``from_relax`` need it.
"""

from . import zoo
from .ir import ComputeGraph, Edge, GraphError, OpKind, OpNode, SymbolRange, TensorSpec
from .shape_program import GraphInstance, ShapeProgram
from .synthetic import synthetic
from .workloads import DimRange, LoadRange, Routing, Workload, get_workload, load_suite, suite_names


def from_torch(*args, **kwargs):
    from .torch_import import from_torch as _from_torch

    return _from_torch(*args, **kwargs)


from_torch.__doc__ = "See fusiongym.graphs.torch_import.from_torch."


def from_relax(*args, **kwargs):
    from .relax_import import from_relax as _from_relax

    return _from_relax(*args, **kwargs)


from_relax.__doc__ = "See fusiongym.graphs.relax_import.from_relax."

__all__ = ["ComputeGraph", "DimRange", "Edge", "GraphError", "GraphInstance", "LoadRange", "OpKind", "OpNode",
           "Routing", "ShapeProgram", "SymbolRange", "TensorSpec", "Workload", "from_relax", "from_torch",
           "get_workload", "load_suite", "suite_names", "synthetic", "zoo"]
