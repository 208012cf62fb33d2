"""`sekisho runs compare` on runs in a real MLflow store: only the params that
differ, the final metrics side by side, and a PNG of the loss curves."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def two_runs(sekisho_home):
    import mlflow

    from experiments import use_store

    experiment = f"compare-{uuid.uuid4().hex[:6]}"
    use_store(experiment=experiment)
    ids = []
    for lr, final in (("0.001", 0.12), ("0.0005", 0.34)):
        with mlflow.start_run(run_name=f"lr-{lr}") as run:
            mlflow.log_params({"optim.lr": lr, "lora.r": "16"})
            for step in range(1, 4):
                mlflow.log_metric("loss", final * (4 - step), step=step)
            mlflow.log_metric("loss", final, step=4)
            ids.append(run.info.run_id)
    use_store()
    return experiment, ids


def test_compare_shows_differing_params_and_final_metrics(two_runs):
    from experiments import compare_runs

    _, ids = two_runs
    c = compare_runs(ids)
    assert c.params == {"optim.lr": ["0.001", "0.0005"]}
    assert c.metrics == {"loss": [0.12, 0.34]}
    assert c.run_names == ["lr-0.001", "lr-0.0005"]


def test_cli_compare_by_experiment_writes_a_plot(two_runs, tmp_path, capsys):
    from sekisho.cli import main

    experiment, ids = two_runs
    png = tmp_path / "loss.png"
    assert main(["runs", "compare", "--experiment", experiment, "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "optim.lr" in out and "0.0005" in out and "lora.r" not in out
    assert "loss" in out and "0.34" in out and ids[0][:8] in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_compare_errors(two_runs, capsys):
    from sekisho.cli import main

    _, ids = two_runs
    assert main(["runs", "compare", ids[0]]) == 2
    assert "two or more run ids" in capsys.readouterr().err
    assert main(["runs", "compare", ids[0], "0" * 32]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["runs", "compare", "--experiment", "no-such-experiment"]) == 2
    assert "experiment 'no-such-experiment' not found" in capsys.readouterr().err


def test_curves_are_labelled_by_run_name():
    from experiments.comparison import curve_labels

    ids = ["a" * 32, "b" * 32, "c" * 32, "d" * 32]
    assert curve_labels(ids, ["lr-1", "job", "job", ""]) == [
        "lr-1",
        "job (bbbbbbbb)",
        "job (cccccccc)",
        "dddddddd",
    ]


def test_cli_logs_the_plot_to_a_comparison_run(two_runs, capsys):
    import mlflow
    from mlflow import MlflowClient

    from sekisho.cli import main

    experiment, ids = two_runs
    assert main(["runs", "compare", *ids, "--log-to-mlflow"]) == 0
    out = capsys.readouterr().out
    rid = out.split("to MLflow run ", 1)[1].split()[0]
    client = MlflowClient()
    run = client.get_run(rid)
    assert run.info.run_name == "compare-loss" and run.info.status == "FINISHED"
    assert run.info.experiment_id == mlflow.get_experiment_by_name(experiment).experiment_id
    assert run.data.tags["sekisho.compared_runs"] == ",".join(ids)
    png = client.download_artifacts(rid, "comparison/loss.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    tables = mlflow.artifacts.load_dict(f"runs:/{rid}/comparison/tables.json")
    assert tables["labels"] == ["lr-0.001", "lr-0.0005"] and tables["metrics"] == {"loss": [0.12, 0.34]}
    for compared in ids:  # the compared runs are left as they were
        assert not client.list_artifacts(compared)
