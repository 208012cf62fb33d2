"""The body of one metric-logging process for the concurrency test in
test_tracking_server.py (a module of its own so that `spawn` can import it)."""

from __future__ import annotations

import os
import time


def log_metrics(
    url: str,
    username: str,
    password: str,
    run_id: str,
    shared_run_id: str,
    worker: int,
    steps: int,
    batch: int,
    go,
) -> None:
    """Log `steps` points of `loss` to `run_id` one request per point, and `steps`
    points of `worker_<worker>` to the run all workers share, `batch` per request."""
    from foundation import offline

    offline.apply()
    os.environ["MLFLOW_TRACKING_USERNAME"] = username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(url)
    go.wait(300)
    for step in range(steps):
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    ts = int(time.time() * 1000)
    for first in range(0, steps, batch):
        client.log_batch(
            shared_run_id,
            metrics=[
                Metric(f"worker_{worker}", float(s), ts, s) for s in range(first, min(first + batch, steps))
            ],
        )
