"""Export a trained policy to ONNX for ``FusionPolicy``: the network plus its metadata.

The exported graph is ``FusionGNN`` over ``CsrStructure`` (gathers, one float64 cumulative
sum per layer, row-pointer differences): no ScatterElements, which onnxruntime runs an
order of magnitude slower. The metadata JSON (feature schema, op vocabulary, schedule
menu, sizes, training command and seed, versions, last evaluation) is stored in the ONNX
``metadata_props`` under ``"fusiongym"`` and, for humans and other tools, in a sidecar
``.json`` beside the ``.onnx``.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from fusiongym.envs.observation import OP_VOCAB
from fusiongym.graphs import synthetic
from fusiongym.reward import get_backend

from .fusion_policy import (EDGE_FLOATS, FEATURE_SCHEMA, FORMAT, GLOBAL_INPUTS, GLOBAL_SCALES, METADATA_KEY,
                            FeatureDevice, FloatColumns, ONNX_INPUTS, ONNX_OUTPUTS, encode_graphs)
from .gnn import CsrStructure, FusionGNN
from .policy import parameter_count

OPSET = 17
# Dynamic axes of the exported inputs: M nodes, K edges, B graphs.
DYNAMIC_AXES = {
    "op": {0: "M"}, "floats": {0: "M"}, "glob": {0: "B"}, "end_index": {0: "K"},
    "edge_x": {0: "K"}, "edge_x_sorted": {0: "K1"}, "nbr_index": {0: "K1"}, "nbr_hi": {0: "M"}, "nbr_lo": {0: "M"},
    "inv_deg": {0: "M"}, "graph_ptr": {0: "B1"}, "inv_count": {0: "B"},
    "edge_logits": {0: "K"}, "schedule_logits": {0: "M"}, "stop_logit": {0: "B"}, "value": {0: "B"},
}


class CsrFusionGNN(nn.Module):
    """The inference form: ``FusionGNN`` whose graph operations read the CSR inputs."""

    def __init__(self, gnn: FusionGNN) -> None:
        super().__init__()
        self.gnn = gnn

    def forward(self, op: torch.Tensor, floats: torch.Tensor, glob: torch.Tensor, end_index: torch.Tensor,
                edge_x: torch.Tensor, edge_x_sorted: torch.Tensor, nbr_index: torch.Tensor, nbr_hi: torch.Tensor, nbr_lo: torch.Tensor, inv_deg: torch.Tensor,
                graph_ptr: torch.Tensor, inv_count: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inputs as in ``fusiongym.agents.fusion_policy.EncodedBatch``; returns
        (edge_logits [K], schedule_logits [M, S], stop_logit [B], value [B])."""
        structure = CsrStructure(nbr_index, nbr_hi, nbr_lo, inv_deg, graph_ptr, inv_count)
        edge_context = structure.edge_mean(edge_x_sorted).flatten(1)          # [M, 2C]
        return self.gnn(op, floats, glob, end_index, edge_x, edge_context, structure)


def policy_metadata(gnn: FusionGNN, vocab_size: int, schedules: list[str], run: dict[str, Any]) -> dict[str, Any]:
    """The metadata ``FusionPolicy`` needs (and a reader wants): schema, menus, provenance."""
    config = run.get("config", {})
    return {
        "format": FORMAT,
        "feature_schema": FEATURE_SCHEMA,
        "op_vocab": list(OP_VOCAB[:vocab_size]),
        "schedules": list(schedules),
        "global_inputs": list(GLOBAL_INPUTS),
        "global_scales": [GLOBAL_SCALES[name] for name in GLOBAL_INPUTS],
        "node_floats": FloatColumns(len(schedules)).count,
        "edge_floats": EDGE_FLOATS,
        "feature_profile": run.get("backend", {}).get("profile"),
        "hidden": gnn.encoder.op.embedding_dim,
        "layers": len(gnn.convs),
        "parameters": parameter_count(gnn),
        "inputs": list(ONNX_INPUTS),
        "outputs": list(ONNX_OUTPUTS),
        "training": {
            "command": run.get("command", ""),
            "seed": config.get("seed"),
            "suite": config.get("suite"),
            "backend": config.get("backend"),
            "reward_backend": run.get("backend"),
            "timesteps": run.get("timesteps_done", config.get("timesteps")),
            "wall_s": run.get("wall_s"),
            "checkpoint": run.get("checkpoint"),
            "eval": run.get("last_eval"),
        },
        "versions": run.get("versions", {}),
        "exported_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def export_gnn(gnn: FusionGNN, out: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``out`` (.onnx, metadata in metadata_props) and its sidecar ``.json``."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"export target must end in .onnx, got {out}")
    gnn = gnn.eval()
    sample = encode_graphs([synthetic(n_nodes=40, seed=0), synthetic(n_nodes=25, seed=1)],
                           FeatureDevice.of(metadata), len(metadata["op_vocab"]), len(metadata["schedules"]))
    feed = sample.onnx_feed()
    args = tuple(torch.from_numpy(feed[name]) for name in ONNX_INPUTS)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript; this small static graph exports identically with either.
        warnings.simplefilter("ignore")
        torch.onnx.export(CsrFusionGNN(gnn), args, buffer, dynamo=False, input_names=list(ONNX_INPUTS),
                          output_names=list(ONNX_OUTPUTS), dynamic_axes=DYNAMIC_AXES, opset_version=OPSET)
    model = onnx.load_from_string(buffer.getvalue())
    text = json.dumps(metadata, sort_keys=True)
    onnx.helper.set_model_props(model, {METADATA_KEY: text})
    model.doc_string = "fusiongym fusion policy (FusionGNN over CSR inputs); see metadata_props['fusiongym']"
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out))
    out.with_suffix(".json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return out


def op_types(path: str | Path) -> list[str]:
    """Distinct ONNX op types of an exported model (a check that no Scatter op slipped in)."""
    return sorted({node.op_type for node in onnx.load(str(path)).graph.node})



def export_run(run_dir: str | Path, out: str | Path, checkpoint: str = "final") -> Path:
    """Export a training run: ``checkpoint`` is ``final``, ``best`` or a path to a .zip."""
    from sb3_contrib import MaskablePPO

    run_dir = Path(run_dir)
    run_file = run_dir / "run.json"
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file} does not exist: {run_dir} is not a training run directory")
    run = json.loads(run_file.read_text())
    model_path = Path(checkpoint) if checkpoint.endswith(".zip") else run_dir / f"{checkpoint}.zip"
    if not model_path.exists():
        raise FileNotFoundError(f"checkpoint {model_path} does not exist (choose final, best or a .zip path)")
    model = MaskablePPO.load(model_path, device="cpu")
    layout = model.policy.features_extractor.layout
    config = run.get("config", {})
    schedules = list(get_backend("analytical", device=config.get("device", "cpu")).schedules)
    if len(schedules) != layout.num_schedules:
        raise ValueError(f"the model has {layout.num_schedules} schedule actions but the {config.get('device')} "
                         f"menu has {len(schedules)} ({schedules})")
    if model_path.name != "final.zip" or run.get("checkpoint") != "final.zip":
        run = {**run, "last_eval": None}   # the recorded evaluation belongs to final.zip
    run = {**run, "checkpoint": str(model_path.relative_to(run_dir) if model_path.is_relative_to(run_dir)
                                    else model_path), "timesteps_done": model.num_timesteps}
    return export_gnn(model.policy.gnn, out, policy_metadata(model.policy.gnn, layout.vocab_size, schedules, run))
