"""Where runs and model versions live, in this order: `SEKISHO_MLFLOW_URI`, else
MLflow's own `MLFLOW_TRACKING_URI`, else the embedded default, a SQLite store and
a local artifact folder under the Sekisho home. A team points either variable at
its tracking server (`sekisho tracking server`, experiments/tracking_server.py;
clients log in with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), or at a
database directly.

`mlflow.set_tracking_uri` writes the URI it is given into `MLFLOW_TRACKING_URI`
(so that child processes inherit it). What Sekisho chose itself must not come back
as the user's choice, so `use_store` puts the user's variables back as they were
and `tracking_uri` ignores a value that only Sekisho ever set."""

from __future__ import annotations

import os
from pathlib import Path

from foundation import offline, sekisho_home

offline.apply()  # MLflow's telemetry switch must be set before mlflow is imported.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SEKISHO_URI_ENV = "SEKISHO_MLFLOW_URI"
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
_MLFLOW_SETS = (MLFLOW_URI_ENV, "MLFLOW_REGISTRY_URI")  # what set_*_uri write into the environment
_chosen_by_sekisho: set[str] = set()  # URIs this process gave MLflow that the user did not


def tracking_uri(home: Path | None = None) -> str:
    """The MLflow tracking (and registry) URI in force."""
    if os.environ.get(SEKISHO_URI_ENV):
        return os.environ[SEKISHO_URI_ENV]
    user = os.environ.get(MLFLOW_URI_ENV)
    if user and user not in _chosen_by_sekisho:
        return user
    home = home or sekisho_home()
    return f"sqlite:///{home / 'mlflow.db'}"


def use_store(uri: str | None = None, experiment: str = "sekisho") -> str:
    """Point this process's MLflow client at the store and select `experiment`,
    creating it with its artifacts under the Sekisho home. Returns the experiment id."""
    import mlflow

    uri = uri or tracking_uri()
    before = {name: os.environ.get(name) for name in _MLFLOW_SETS}
    if uri != before[MLFLOW_URI_ENV]:
        _chosen_by_sekisho.add(uri)
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
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


def run_page(run_id: str, experiment_id: str, uri: str | None = None) -> str:
    """Where a person looks at a run: its page on the tracking server, or, for a
    store without a server, the `mlflow ui` command that serves it and the page there."""
    uri = uri or tracking_uri()
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"`mlflow ui --backend-store-uri {uri}`, then http://127.0.0.1:5000/{page}"


def database_kind(uri: str) -> str:
    """The database of a SQLAlchemy URL ("postgresql", "sqlite", ...; the driver left
    out), "" for anything else (a tracking server, a folder)."""
    return uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""


def _is_database(uri: str) -> bool:
    """Whether `uri` is a SQLAlchemy database URL (rather than a tracking server or folder)."""
    return database_kind(uri) in ("postgresql", "mysql", "mssql", "sqlite")
