"""Ray Train wrapper: `build_trainer(cfg, ...)` -> TorchTrainer running the recipe
on N workers; rank 0 logs to MLflow and returns the adapter as the checkpoint."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from train.config import LoraJobConfig


@dataclass(frozen=True)
class JobInputs:
    """What a job trains on, resolved by the driver (paths visible to every worker)."""

    base_model_dir: str
    tokens_path: str
    mlflow_uri: str
    run_id: str


def train_loop_per_worker(loop_config: dict) -> None:
    """The function every Ray Train worker runs."""
    import ray.train
    from ray.train import Checkpoint

    from cluster import offline
    offline.apply()
    from experiments import RunLogger
    from train.recipe import LoraRecipe

    cfg = LoraJobConfig.model_validate(loop_config["cfg"])
    inputs = JobInputs(**loop_config["inputs"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    logger = RunLogger(inputs.run_id, inputs.mlflow_uri, rank=rank)
    recipe = LoraRecipe(cfg, rank=rank, world_size=world)
    wrap = None
    if world > 1:
        from ray.train.torch import prepare_model
        wrap = lambda m: prepare_model(m, move_to_device=cfg.scaling.use_gpu)  # noqa: E731
    recipe.setup(inputs.base_model_dir, inputs.tokens_path, wrap_model=wrap)

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        logger.log_metrics(metrics, step, flush=step % (cfg.log_every * 10) == 0)

    last = recipe.train(on_metrics=on_metrics)
    logger.flush()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            recipe.save(Path(tmp, "adapter"))
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report({**last, "step": recipe.step}, checkpoint=checkpoint)
    recipe.cleanup()


def build_trainer(cfg: LoraJobConfig, inputs: JobInputs, storage_path: str | Path):
    """Turn a job config into a Ray Train TorchTrainer (not yet started)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    s = cfg.scaling
    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "inputs": inputs.__dict__},
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker}),
        run_config=RunConfig(name=cfg.name, storage_path=str(storage_path)),
    )
