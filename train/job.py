"""A fine-tuning job end to end: resolve the base model, prepare the data, train
under Ray Train, and register the adapter with its lineage."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cluster.config_base import UserError
from data import DatasetConfig, prepare
from experiments import load, register_folder, sekisho_home, tracking_uri, use_store
from train.config import LoraJobConfig
from train.trainer import JobInputs, build_trainer


@dataclass(frozen=True)
class JobResult:
    run_id: str
    model_name: str
    version: str
    adapter_dir: Path
    metrics: dict
    dataset_manifest: dict


def config_hash(cfg: LoraJobConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_job(cfg: LoraJobConfig, yaml_text: str | None = None, home: Path | None = None) -> JobResult:
    """Run a LoRA job on the Ray cluster this process is connected to.

    Raises:
        UserError: the base model or dataset is missing or invalid, or training failed.
    """
    from experiments import RunLogger

    home = home or sekisho_home()
    work = home / "jobs" / cfg.name
    base = load(cfg.base_model, work / "base")
    data_cfg = DatasetConfig.from_yaml(cfg.dataset)
    manifest = prepare(data_cfg, base.path, work / "data")

    from mlflow import MlflowClient

    experiment_id = use_store()
    run_id = MlflowClient().create_run(experiment_id, run_name=cfg.name).info.run_id
    logger = RunLogger(run_id, tracking_uri())
    logger.log_config(cfg.model_dump(mode="json"), yaml_text)
    logger.client.log_dict(run_id, manifest, "dataset/manifest.json")
    logger.set_tags({"sekisho.base_model_version": base.ref, "sekisho.dataset": data_cfg.name,
                     "sekisho.dataset_version": manifest["version"],
                     "sekisho.config_sha256": config_hash(cfg), "sekisho.git_commit": git_commit()})
    _log_dataset_input(run_id, data_cfg.name, manifest)

    inputs = JobInputs(str(base.path), str(work / "data" / "tokens.parquet"), tracking_uri(), run_id)
    result = build_trainer(cfg, inputs, work / "ray" / run_id).fit()
    if result.error is not None or result.checkpoint is None:
        MlflowClient().set_terminated(run_id, "FAILED")
        raise UserError(f"training job {cfg.name!r} failed: {result.error}")
    adapter_dir = Path(result.checkpoint.path) / "adapter"
    version = register_folder(cfg.register_as, adapter_dir, kind="adapter", run_id=run_id,
                              artifact_path="adapter", tags={
                                  "base_model_version": base.ref,
                                  "base_model_sha256": base.sha256,
                                  "dataset": data_cfg.name,
                                  "dataset_version": manifest["version"],
                                  "dataset_sha256": manifest["source"]["sha256"],
                                  "config_sha256": config_hash(cfg),
                                  "git_commit": git_commit()})
    MlflowClient().set_terminated(run_id, "FINISHED")
    return JobResult(run_id, cfg.register_as, version, adapter_dir, dict(result.metrics), manifest)


def _log_dataset_input(run_id: str, name: str, manifest: dict) -> None:
    """Record the dataset manifest as the run's input (MLflow's dataset tracking)."""
    from mlflow import MlflowClient
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    ds = MetaDataset(source=LocalArtifactDatasetSource(manifest["source"]["path"]),
                     name=name, digest=manifest["version"])
    MlflowClient().log_inputs(run_id, datasets=[DatasetInput(
        ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])])
