"""MLflow's entity objects (metrics, params, a dataset input) built from plain
values in one place. MLflow is imported on first use."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput, Metric, Param

PARAM_MAX_CHARS = 6000  # the longest param value MLflow stores


def metrics(values: dict[str, float], step: int = 0, timestamp_ms: int | None = None) -> list[Metric]:
    """One `mlflow.entities.Metric` per name, all at `step` and `timestamp_ms` (default now)."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return [Metric(k, float(v), ts, step) for k, v in values.items()]


def params(values: dict[str, str]) -> list[Param]:
    """One `mlflow.entities.Param` per name, each value cut to PARAM_MAX_CHARS."""
    from mlflow.entities import Param

    return [Param(k, v[:PARAM_MAX_CHARS]) for k, v in values.items()]


def dataset_input(path: str, name: str, digest: str, context: str) -> DatasetInput:
    """The `mlflow.entities.DatasetInput` for `client.log_inputs`: a dataset read from
    the local file or folder `path`, used in `context` ("training", "evaluation")."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    ds = MetaDataset(source=LocalArtifactDatasetSource(path), name=name, digest=digest)
    return DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
