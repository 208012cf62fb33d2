"""Which MLflow store is in force: SEKISHO_MLFLOW_URI, then MLflow's own
MLFLOW_TRACKING_URI, then the SQLite store in the Sekisho home. What MLflow writes
into MLFLOW_TRACKING_URI on Sekisho's behalf is never taken for the user's choice."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def no_uri_set(monkeypatch, sekisho_home):
    monkeypatch.delenv("SEKISHO_MLFLOW_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return sekisho_home


def test_sekisho_then_mlflow_then_the_home(no_uri_set, monkeypatch, tmp_path):
    from experiments import tracking_uri

    assert tracking_uri() == f"sqlite:///{no_uri_set / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow-users.db'}")
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow-users.db'}"
    monkeypatch.setenv("SEKISHO_MLFLOW_URI", "http://127.0.0.1:5999")
    assert tracking_uri() == "http://127.0.0.1:5999"


def test_a_run_and_a_model_version_land_in_mlflow_tracking_uri(no_uri_set, monkeypatch, tmp_path):
    from mlflow import MlflowClient

    from experiments import get_version, register_folder, use_store

    users = f"sqlite:///{tmp_path / 'team' / 'mlflow.db'}"
    (tmp_path / "team").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", users)
    exp_id = use_store(experiment="uri-test")
    run_id = MlflowClient().create_run(exp_id, run_name="tracked").info.run_id
    MlflowClient().log_metric(run_id, "loss", 0.25, step=3)
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    version = register_folder("uri-test-model", folder, kind="adapter")
    assert os.environ["MLFLOW_TRACKING_URI"] == users  # still the user's, untouched

    there = MlflowClient(tracking_uri=users, registry_uri=users)
    assert there.get_run(run_id).data.metrics == {"loss": 0.25}
    assert there.get_experiment(exp_id).name == "uri-test"
    assert [str(v.version) for v in there.search_model_versions("name = 'uri-test-model'")] == [version]
    assert str(get_version(f"uri-test-model/{version}").version) == version
    assert (tmp_path / "team" / "mlartifacts").is_dir()  # artifacts beside the user's store

    home = f"sqlite:///{no_uri_set / 'mlflow.db'}"
    assert (
        MlflowClient(tracking_uri=home, registry_uri=home).search_model_versions("name = 'uri-test-model'")
        == []
    )


def test_the_uri_mlflow_sets_for_sekisho_is_not_taken_for_the_users(no_uri_set, tmp_path):
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI; the store Sekisho chose for
    one home must not follow the process to another home."""
    import mlflow

    from experiments import tracking_uri, use_store

    use_store()
    use_store(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    mlflow.set_tracking_uri(tracking_uri())  # back to the home's store, as a direct MLflow call
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{no_uri_set / 'mlflow.db'}"
    other = tmp_path / "other-home"
    assert tracking_uri(other) == f"sqlite:///{other / 'mlflow.db'}"
