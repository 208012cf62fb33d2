"""One small logger for training runs: rank 0 only, run id passed explicitly,
the resolved config logged as a file artifact and as flattened params."""

from __future__ import annotations

import json
from typing import Any

from experiments import mlflow_entities, tracking


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists become JSON."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


class RunLogger:
    """Logs to one existing MLflow run; every method is a no-op off rank 0."""

    def __init__(self, run_id: str, uri: str, rank: int = 0):
        self.run_id, self.enabled = run_id, rank == 0
        if self.enabled:
            from mlflow import MlflowClient

            tracking.offline.apply()
            self.client = MlflowClient(tracking_uri=uri)
        self._pending: list = []

    def log_config(self, config: dict[str, Any], yaml_text: str | None = None) -> None:
        if not self.enabled:
            return
        params = mlflow_entities.params(flatten(config))
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, config, "config/resolved.json")
        if yaml_text is not None:
            self.client.log_text(self.run_id, yaml_text, "config/job.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = False) -> None:
        """Buffer metrics for `step`; they are written in batches (or on flush)."""
        if not self.enabled:
            return
        self._pending += mlflow_entities.metrics(metrics, step)
        if flush or len(self._pending) >= 500:
            self.flush()

    def flush(self) -> None:
        if self.enabled and self._pending:
            for i in range(0, len(self._pending), 1000):
                self.client.log_batch(self.run_id, metrics=self._pending[i : i + 1000])
            self._pending = []

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, v)
