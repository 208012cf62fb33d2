"""Where runs and model versions live: the embedded default is a SQLite store
and a local artifact folder under the Sekisho home; a team points
`SEKISHO_MLFLOW_URI` at its tracking server instead."""

from __future__ import annotations

import os
from pathlib import Path

from cluster import offline

offline.apply()  # MLflow's telemetry switch must be set before mlflow is imported.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def sekisho_home() -> Path:
    """The folder for local state (MLflow store, models, Ray token): `$SEKISHO_HOME`
    or `.sekisho` in the current directory, made absolute so workers agree."""
    home = Path(os.environ.get("SEKISHO_HOME", ".sekisho")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["SEKISHO_HOME"] = str(home)
    return home


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
        exp_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = found.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
