"""GPU requests derived from serve app configs, for the cluster's placement
planner (which knows nothing of serve): each model's size and KV cache per
token come from its resolved files (config.json, safetensors headers)."""

from __future__ import annotations

import json
from pathlib import Path

from airlock.safetensors_check import read_header
from cluster import GpuRequest, Inventory, PlacementError, Plan, plan_placement
from foundation import UserError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def count_parameters(model_dir: Path) -> int:
    """Parameters in a model folder, from its safetensors headers (no tensor is read)."""
    return sum(read_header(f).elements for f in sorted(Path(model_dir).glob("*.safetensors")))


def _dtype_bytes(engine_dtype: str, hf: dict) -> int:
    if engine_dtype != "auto":
        return DTYPE_BYTES[engine_dtype]
    return DTYPE_BYTES.get(str(hf.get("torch_dtype") or hf.get("dtype") or "bfloat16"), 2)


def request_name(app_name: str, model_name: str) -> str:
    """The planner's name for one model of an app (a DNS label)."""
    return f"{app_name}-{model_name}".lower().replace("_", "-").replace(".", "-").replace(":", "-")[:63]


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
                name=request_name(app.config.name, spec.name),
                kind="serve",
                params_billions=max(count_parameters(folder), 1) / 1e9,
                dtype_bytes=dbytes,
                tensor_parallel=spec.engine.tensor_parallel_size,
                pipeline_parallel=spec.engine.pipeline_parallel_size,
                data_parallel=spec.max_replicas,
                max_model_len=spec.engine.max_model_len,
                max_num_seqs=spec.engine.max_num_seqs,
                kv_bytes_per_token=kv if spec.task == "generate" else 0,
            )
        )
    return out


def plan_serve_app(app, inventory_path: str | Path) -> Plan:
    """Plan the app on an inventory and pin its engines to the plan: each pipeline
    stage of each model may run only on the nodes the plan chose for that stage
    (`app.stage_nodes`, which serve.builder turns into the replicas' placement
    groups).

    Raises:
        PlacementError: (a UserError) what does not fit, and what would.
    """
    try:
        plan = plan_placement(Inventory.from_yaml(inventory_path), serve_requests(app))
    except PlacementError as err:  # the planner's words, in the serve config's fields
        fields = ", ".join(
            f"{request_name(app.config.name, m.name)} = models.{i}" for i, m in enumerate(app.config.models)
        )
        raise PlacementError(
            f"{err} [{fields}; tensor_parallel is engine.tensor_parallel_size, pipeline_parallel "
            f"is engine.pipeline_parallel_size, data_parallel is num_replicas]"
        ) from None
    app.stage_nodes = {
        spec.name: stage_nodes(plan, request_name(app.config.name, spec.name)) for spec in app.config.models
    }
    return plan


def stage_nodes(plan: Plan, request: str) -> list[list[str]]:
    """Per pipeline stage, the nodes the plan put that stage on (one per replica,
    in inventory order). Serve gives every replica of a deployment the same
    placement-group options, so replica r's stage k may land on any node chosen
    for stage k of some replica."""
    order = [n.name for n in plan.inventory.nodes]
    stages: dict[int, set[str]] = {}
    for g in plan.groups:
        if g.request == request:
            stages.setdefault(g.stage, set()).add(g.node)
    return [sorted(stages[k], key=order.index) for k in sorted(stages)]


def check_against_running_cluster(config, gpus_per_node: list[float]) -> None:
    """Refuse engines that cannot be placed on the live nodes (GPU clusters only):
    a stage's tensor-parallel GPUs must share one node, and the nodes must hold
    all pipeline stages of a replica.

    Raises:
        UserError: naming the field (models.N.engine....) and what would fit.
    """
    most = max(gpus_per_node, default=0)
    if most == 0:
        for i, spec in enumerate(config.models):
            if spec.engine.pipeline_parallel_size > 1 and spec.engine.enforce_eager:
                # vLLM 0.32's CPU model runner allocates the buffer a later stage
                # receives into only while compiling; eager, stage 1 fails its first
                # request (gpu_model_runner: assert self.intermediate_tensors is not None).
                raise UserError(
                    f"models.{i}.engine.enforce_eager: vLLM's CPU build cannot run pipeline "
                    f"stages eagerly (the first request fails); set it to false."
                )
        return
    for i, spec in enumerate(config.models):
        tp, pp = spec.engine.tensor_parallel_size, spec.engine.pipeline_parallel_size
        if tp > most:
            raise UserError(
                f"models.{i}.engine.tensor_parallel_size: {tp} GPUs per replica, but the "
                f"largest node of this cluster has {int(most)}; use {int(most)} or fewer "
                f"(tensor parallelism stays inside one node)."
            )
        stages = sum(int(g // tp) for g in gpus_per_node)
        if pp > stages:
            raise UserError(
                f"models.{i}.engine.pipeline_parallel_size: {pp} stages of {tp} GPUs each, but the "
                f"live nodes ({', '.join(str(int(g)) for g in gpus_per_node if g)} GPUs) hold at most "
                f"{stages} such stages; lower it to {stages} or fewer, or add a node."
            )
