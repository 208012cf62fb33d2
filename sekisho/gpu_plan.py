"""GPU requests derived from serve app configs, for the cluster's placement
planner (which knows nothing of serve): each model's size and KV cache per
token come from its resolved files (config.json, safetensors headers)."""

from __future__ import annotations

import json
from pathlib import Path

from airlock.safetensors_check import read_header
from cluster import GpuRequest, Inventory, Plan, plan_placement
from foundation import UserError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def count_parameters(model_dir: Path) -> int:
    """Parameters in a model folder, from its safetensors headers (no tensor is read)."""
    return sum(read_header(f).elements for f in sorted(Path(model_dir).glob("*.safetensors")))


def _dtype_bytes(engine_dtype: str, hf: dict) -> int:
    if engine_dtype != "auto":
        return DTYPE_BYTES[engine_dtype]
    return DTYPE_BYTES.get(str(hf.get("torch_dtype") or hf.get("dtype") or "bfloat16"), 2)


def serve_requests(app) -> list[GpuRequest]:
    """One request per model of a resolved serve app (serve.builder.ResolvedApp)."""
    out = []
    for spec in app.config.models:
        m = app.models[spec.name]
        folder = Path(getattr(m, "path", m))
        hf = json.loads((folder / "config.json").read_text())
        dbytes = _dtype_bytes(spec.engine.dtype, hf)
        heads = hf.get("num_attention_heads", 1)
        head_dim = hf.get("head_dim") or hf.get("hidden_size", 0) // max(heads, 1)
        kv = 2 * hf.get("num_hidden_layers", 0) * hf.get("num_key_value_heads", heads) * head_dim * dbytes
        out.append(
            GpuRequest(
                name=f"{app.config.name}-{spec.name}".lower().replace("_", "-")[:63],
                kind="serve",
                params_billions=max(count_parameters(folder), 1) / 1e9,
                dtype_bytes=dbytes,
                tensor_parallel=spec.engine.tensor_parallel_size,
                data_parallel=spec.max_replicas,
                max_model_len=spec.engine.max_model_len,
                max_num_seqs=spec.engine.max_num_seqs,
                kv_bytes_per_token=kv if spec.task == "generate" else 0,
            )
        )
    return out


def plan_serve_app(app, inventory_path: str | Path) -> Plan:
    """Plan the app on an inventory; PlacementError (a UserError) says what does not fit."""
    return plan_placement(Inventory.from_yaml(inventory_path), serve_requests(app))


def check_against_running_cluster(config, gpus_per_node: list[float]) -> None:
    """Refuse engines that need more GPUs than any live node has (GPU clusters only)."""
    most = max(gpus_per_node, default=0)
    if most == 0:
        return
    for i, spec in enumerate(config.models):
        tp = spec.engine.tensor_parallel_size
        if tp > most:
            raise UserError(
                f"models.{i}.engine.tensor_parallel_size: {tp} GPUs per replica, but the "
                f"largest node of this cluster has {int(most)}; use {int(most)} or fewer "
                f"(tensor parallelism stays inside one node)."
            )
