"""Ray Train wrapper: `build_trainer(cfg, ...)` -> TorchTrainer running the job's
recipe (`train.registry`) on N workers; rank 0 logs to MLflow. Every
`checkpoint_every` steps and at the end the workers report a resumable checkpoint
(the last one also holds the export); a restarted worker group continues from the
latest one (`ray.train.get_checkpoint`)."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from train.config import RECIPE_CONFIGS, JobFields
from train.registry import build_recipe


@dataclass(frozen=True)
class JobInputs:
    """What a job trains on, resolved by the driver (paths visible to every worker)."""

    base_model_dir: str
    tokens_path: str
    mlflow_uri: str
    run_id: str
    state_dir: str = ""
    fingerprint: str = ""


def next_attempt(state_dir: str, rank: int) -> int:
    """Count this worker start (1 for the first) in `state_dir`, one file per rank
    so that no rank waits for another; all ranks restart together."""
    if not state_dir:
        return 1
    path = Path(state_dir, f"attempts-rank{rank}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        f.write("x\n")
        f.seek(0)
        return len(f.read().splitlines())


def train_loop_per_worker(loop_config: dict) -> None:
    """The function every Ray Train worker runs."""
    import ray.train
    from ray.train import Checkpoint

    from foundation import offline

    offline.apply()
    from experiments import RunLogger
    from train.fault_injection import StepHook

    cfg = RECIPE_CONFIGS[loop_config["cfg"]["recipe"]].model_validate(loop_config["cfg"])
    inputs = JobInputs(**loop_config["inputs"])
    if loop_config.get("test_hooks_dir"):
        # Test-only fault injection: the folder travels with the loop config, so it
        # reaches workers of a cluster started before the test set it.
        from train.fault_injection import ENV

        os.environ[ENV] = loop_config["test_hooks_dir"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    logger = RunLogger(inputs.run_id, inputs.mlflow_uri, rank=rank)
    wrap = None
    if world > 1:
        from ray.train.torch import prepare_model

        wrap = lambda m: prepare_model(m, move_to_device=cfg.scaling.use_gpu)  # noqa: E731
    recipe = build_recipe(cfg, rank=rank, world_size=world)
    recipe.setup(inputs.base_model_dir, inputs.tokens_path, wrap_model=wrap)
    recipe.attempt = next_attempt(inputs.state_dir, rank)
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            recipe.load_checkpoint(folder)
    hook = StepHook(cfg.name, rank)

    flushed = [time.monotonic()]

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        # The attempt goes with every logged step, so steps re-run after a
        # restore show which attempt ran them. Written at least every second, so
        # the driver's progress lines (train.progress) follow the training.
        now = time.monotonic()
        flush = step % (cfg.log_every * 10) == 0 or now - flushed[0] >= 1.0
        logger.log_metrics({**metrics, "attempt": recipe.attempt}, step, flush=flush)
        if flush:
            flushed[0] = now

    def on_checkpoint(step: int, last: dict[str, float]) -> None:
        # Flush first: whatever a restore might repeat is already in MLflow.
        logger.flush()
        with tempfile.TemporaryDirectory() as tmp:
            recipe.save_checkpoint(tmp, {"fingerprint": inputs.fingerprint, "run_id": inputs.run_id})
            ray.train.report(
                {**last, "step": step, "attempt": recipe.attempt}, checkpoint=Checkpoint.from_directory(tmp)
            )

    recipe.train(
        on_metrics=on_metrics,
        on_checkpoint=on_checkpoint,
        on_step=(lambda _: hook(recipe)) if hook.active else None,
    )
    logger.flush()
    recipe.cleanup()


def build_trainer(cfg: JobFields, inputs: JobInputs, storage_path: str | Path, run_name: str | None = None):
    """Turn a job config into a Ray Train TorchTrainer (not yet started).

    Args:
        storage_path, run_name: where checkpoints go (`storage_path/run_name`); a
            trainer built with the same two continues from that run's latest checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.node_env import FULL_PRIORITY_ENV
    from train.examples import count_examples
    from train.fault_injection import ENV
    from train.loop import resolve_epochs

    # The workers get the number of steps, not `epochs` (no need to count the data again).
    cfg = resolve_epochs(cfg, count_examples(inputs.tokens_path), cfg.scaling.num_workers)
    s = cfg.scaling
    env_vars = dict(FULL_PRIORITY_ENV)  # not Ray's worker niceness (docs/design-notes.md)
    # Test hooks follow the driver's environment even onto a cluster started before it.
    if os.environ.get(ENV):
        env_vars[ENV] = os.environ[ENV]
    worker_env = {"env_vars": env_vars}
    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "inputs": inputs.__dict__,
            "test_hooks_dir": os.environ.get(ENV),
        },
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker={"CPU": s.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_name or cfg.name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env=worker_env,
        ),
    )
