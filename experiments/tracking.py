"""Where runs and model versions live: the embedded default is a SQLite store
and a local artifact folder under the Sekisho home; a team points
`SEKISHO_MLFLOW_URI` at its tracking server instead (`sekisho tracking server`,
experiments/tracking_server.py; clients log in with MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD), or at a database directly."""

from __future__ import annotations

import os
from pathlib import Path

from foundation import offline, sekisho_home

offline.apply()  # MLflow's telemetry switch must be set before mlflow is imported.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri(home: Path | None = None) -> str:
    """The MLflow tracking (and registry) URI in force."""
    if os.environ.get("SEKISHO_MLFLOW_URI"):
        return os.environ["SEKISHO_MLFLOW_URI"]
    home = home or sekisho_home()
    return f"sqlite:///{home / 'mlflow.db'}"


def use_store(uri: str | None = None, experiment: str = "sekisho") -> str:
    """Point this process's MLflow client at the store and select `experiment`,
    creating it with its artifacts under the Sekisho home. Returns the experiment id."""
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        elif _is_database(uri):
            # A database used directly (no tracking server) has no artifact root of
            # its own; MLflow's default is ./mlruns in whatever folder we run from.
            location = (sekisho_home() / "mlartifacts").as_uri()
        exp_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = found.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _is_database(uri: str) -> bool:
    """Whether `uri` is a SQLAlchemy database URL (rather than a tracking server or folder)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    return scheme.split("+", 1)[0] in ("postgresql", "mysql", "mssql", "sqlite")
