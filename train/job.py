"""A fine-tuning job end to end: resolve the base model, prepare the data, train
under Ray Train, and bring the adapter (or merged weights) into the model store
and register it with its lineage (`airlock.register_trained`).

A job's storage is stable per job name (`<home>/jobs/<name>`): `job_state.json`
there names the MLflow run, the training fingerprint and, once registered, the
version. With `resume: auto` a rerun of the same name continues that run from its
latest checkpoint (same MLflow run, same Ray Train run folder), or returns the
registered version without training when it had finished.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from airlock import load, register_trained
from data import DatasetConfig, prepare
from experiments import tracking_uri, use_store
from foundation import UserError, sekisho_home
from train.config import JobFields
from train.examples import count_examples
from train.loop import resolve_epochs
from train.progress import Printer, ProgressWatch
from train.registry import recipe_class, trains_on_raw_text
from train.trainer import JobInputs, build_trainer

if TYPE_CHECKING:
    from cluster import Inventory


@dataclass(frozen=True)
class JobResult:
    """A finished job; `adapter_dir` is the exported folder (the adapter, or the
    merged full weights for sft_full / cpt)."""

    run_id: str
    model_name: str
    version: str
    adapter_dir: Path
    metrics: dict
    dataset_manifest: dict


def config_hash(cfg: JobFields) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Fields that change how a run is operated, not what it computes: a rerun may change them.
# `experiment` too: where the run is recorded (a resumed run stays where it started).
OPERATIONAL_FIELDS = {
    "resume",
    "max_failures",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "experiment",
}


def training_fingerprint(cfg: JobFields, base_sha256: str, dataset_version: str) -> str:
    """What a checkpoint must match to be resumed: config (less operational fields),
    base model bytes and dataset version."""
    body = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in OPERATIONAL_FIELDS}
    body.update(base_model_sha256=base_sha256, dataset_version=dataset_version)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_job_state(work: Path) -> dict | None:
    path = work / "job_state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_job_state(work: Path, **state) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "job_state.json").write_text(json.dumps(state, indent=1))


def check_job(cfg: JobFields, data_cfg: DatasetConfig, inventory: Inventory | None = None) -> None:
    """Refuse, before any worker starts, what the recipe cannot train.

    Args:
        inventory: the cluster the job runs on; its GPU nodes' host memory
            (`memory_gb`, smallest node) replaces the job's plan.cpu_memory_gb in the
            host-memory check.

    Raises:
        UserError: the dataset's format does not suit the recipe, the job's `plan`
            does not fit the GPUs (train.check_fits), or the config asks for something
            the recipe does not do yet.
    """
    raw_text = trains_on_raw_text(cfg)
    if raw_text != (data_cfg.format == "text"):
        want = "format: text (raw text)" if raw_text else "a chat, instruction or prompt_completion format"
        raise UserError(
            f"job {cfg.name!r}: recipe {cfg.recipe!r} needs a dataset with {want}; "
            f"{cfg.dataset} has format: {data_cfg.format}."
        )
    if cfg.plan is not None:
        from train.memory import check_fits

        host_gb = inventory.gpu_node_memory_gb if inventory is not None else None
        if host_gb is not None:  # the nodes' own RAM, not the config's assumption
            cfg = cfg.model_copy(update={"plan": cfg.plan.model_copy(update={"cpu_memory_gb": host_gb})})
        check_fits(cfg)
    recipe_class(cfg).check(cfg)


def run_job(
    cfg: JobFields,
    yaml_text: str | None = None,
    home: Path | None = None,
    inventory: Inventory | None = None,
    progress: Printer | None = None,
) -> JobResult:
    """Run a fine-tuning job on the Ray cluster this process is connected to; with
    `cfg.resume == "auto"` a rerun of the same job name resumes it (module doc).

    Raises:
        UserError: the base model or dataset is missing or invalid, the dataset does
            not suit the recipe, an unfinished run of this name was started with a
            different config, base or data, or training failed.
        ConfigError: with `epochs`, the derived steps are fewer than warmup_steps
            or checkpoint_every.

    `inventory`: the cluster's nodes, whose host memory the job's memory check uses.
    `progress`: called with one line per logged step while the job trains
    (train.progress: step/total, loss, lr, tokens/s, ETA).
    """
    home = home or sekisho_home()
    work = home / "jobs" / cfg.name
    data_cfg = DatasetConfig.from_yaml(cfg.dataset)
    check_job(cfg, data_cfg, inventory)
    base = load(cfg.base_model)
    manifest = prepare(data_cfg, base.path, work / "data")
    # From here on the job has its number of steps (derived from the data with `epochs`):
    # what is logged, fingerprinted and trained.
    cfg = resolve_epochs(cfg, count_examples(work / "data" / "tokens.parquet"), cfg.scaling.num_workers)
    fingerprint = training_fingerprint(cfg, base.sha256, manifest["version"])

    from mlflow import MlflowClient

    use_store()
    previous = read_job_state(work) if cfg.resume == "auto" else None
    if previous and previous["fingerprint"] != fingerprint:
        raise UserError(
            f"job {cfg.name!r} has an unfinished or finished run ({previous['run_id']}) started with a "
            f"different config, base model or dataset; resuming it would mix two trainings. "
            f"Set `resume: never` to start a new run under this name, or rename the job."
        )
    if previous and previous.get("version"):
        run = MlflowClient().get_run(previous["run_id"])
        return JobResult(
            previous["run_id"],
            cfg.register_as,
            previous["version"],
            Path(previous["adapter_dir"]),
            dict(run.data.metrics),
            manifest,
        )
    if previous:
        run_id = previous["run_id"]
        MlflowClient().update_run(run_id, status="RUNNING")
    else:
        run_id = _start_run(cfg, yaml_text, base, data_cfg, manifest)
        write_job_state(work, run_id=run_id, fingerprint=fingerprint, version=None)

    inputs = JobInputs(
        str(base.path),
        str(work / "data" / "tokens.parquet"),
        tracking_uri(),
        run_id,
        state_dir=str(work / "ray" / run_id / "attempts"),
        fingerprint=fingerprint,
    )
    trainer = build_trainer(cfg, inputs, work / "ray", run_name=run_id)
    if progress is None:
        result = trainer.fit()
    else:
        with ProgressWatch(run_id, inputs.mlflow_uri, cfg.optim.steps, progress):
            result = trainer.fit()
    if result.error is not None or result.checkpoint is None:
        MlflowClient().set_terminated(run_id, "FAILED")
        raise UserError(f"training job {cfg.name!r} failed: {result.error}")
    recipe = recipe_class(cfg)
    adapter_dir = Path(result.checkpoint.path) / recipe.export_dir
    version = register_trained(
        cfg.register_as,
        adapter_dir,
        kind=recipe.export_kind,
        run_id=run_id,
        artifact_path=recipe.export_dir,
        tags={
            "base_model_version": base.ref,
            "base_model_sha256": base.sha256,
            "dataset": data_cfg.name,
            "dataset_version": manifest["version"],
            "dataset_sha256": manifest["source"]["sha256"],
            "config_sha256": config_hash(cfg),
            "git_commit": git_commit(),
        },
    ).version
    MlflowClient().set_terminated(run_id, "FINISHED")
    write_job_state(
        work, run_id=run_id, fingerprint=fingerprint, version=version, adapter_dir=str(adapter_dir)
    )
    return JobResult(run_id, cfg.register_as, version, adapter_dir, dict(result.metrics), manifest)


def _start_run(cfg: JobFields, yaml_text: str | None, base, data_cfg, manifest: dict) -> str:
    """A new MLflow run with the config, dataset manifest and lineage tags."""
    from mlflow import MlflowClient

    from experiments import RunLogger

    run_id = MlflowClient().create_run(use_store(experiment=cfg.experiment), run_name=cfg.name).info.run_id
    logger = RunLogger(run_id, tracking_uri())
    logger.log_config(cfg.model_dump(mode="json"), yaml_text)
    logger.client.log_dict(run_id, manifest, "dataset/manifest.json")
    logger.set_tags(
        {
            "sekisho.base_model_version": base.ref,
            "sekisho.dataset": data_cfg.name,
            "sekisho.dataset_version": manifest["version"],
            "sekisho.config_sha256": config_hash(cfg),
            "sekisho.git_commit": git_commit(),
        }
    )
    _log_dataset_input(run_id, data_cfg.name, manifest)
    return run_id


def _log_dataset_input(run_id: str, name: str, manifest: dict) -> None:
    """Record the dataset manifest as the run's input (MLflow's dataset tracking)."""
    from mlflow import MlflowClient

    from experiments.mlflow_entities import dataset_input

    MlflowClient().log_inputs(
        run_id, datasets=[dataset_input(manifest["source"]["path"], name, manifest["version"], "training")]
    )
