"""`sekisho train run` prints one line per logged step on the driver (step/total,
loss, lr, tokens/s, ETA), read from the job's MLflow run while Ray Train trains,
and ends with the registered version and where to see the run. The run is
recorded in the experiment the config names, in the store MLFLOW_TRACKING_URI
names (a real job: real Ray Train, MLflow, registry)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from train.progress import Pace, StepPoint, format_duration, progress_line

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^step (\d+)/(\d+)  loss (\d+\.\d{4})  lr (\S+)  tokens/s ([\d,]+)  ETA (\?|\d+:\d\d:\d\d)$"
)


def test_eta_follows_the_pace_of_the_logged_steps():
    pace = Pace(total=100)
    first = StepPoint(10, 1_000_000, 2.5, 1e-3, 1234.4)
    assert progress_line(first, 100, pace.eta_s(first)) == (
        "step 10/100  loss 2.5000  lr 1.00e-03  tokens/s 1,234  ETA ?"
    )
    # 10 more steps in 20 s: 2 s a step, 70 steps left.
    later = StepPoint(30, 1_000_000 + 40_000, 1.25, 5e-4, 999.6)
    assert pace.eta_s(later) == pytest.approx(140.0)
    assert progress_line(later, 100, pace.eta_s(later)).endswith("tokens/s 1,000  ETA 0:02:20")
    assert format_duration(3725) == "1:02:05"
    done = Pace(total=5)
    assert done.eta_s(StepPoint(5, 0, 0.1)) == 0.0


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sekisho", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.e2e
def test_train_run_prints_progress_and_records_the_run_where_the_user_said(tiny_model_dir, tmp_path):
    from mlflow import MlflowClient

    store = tmp_path / "team-store"
    store.mkdir()
    users = f"sqlite:///{store / 'mlflow.db'}"
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("SEKISHO_MLFLOW_URI", "RAY_ADDRESS")}
    env.update(SEKISHO_HOME=str(home), MLFLOW_TRACKING_URI=users)

    imported = _cli(
        ["models", "import", str(tiny_model_dir), "--name", "progress-base", "--alias", "production"], env
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    (tmp_path / "d.yaml").write_text("name: d\npath: samples:internal_faq_ja.jsonl\nformat: chat\n")
    config = tmp_path / "job.yaml"
    config.write_text(
        "name: progress-job\n"
        "recipe: sft_lora\n"
        "experiment: team-a/faq-bot\n"
        "base_model: progress-base@production\n"
        "dataset: d.yaml\n"
        "register_as: progress-adapter\n"
        "log_every: 5\n"
        "optim: {steps: 20, batch_size: 4, warmup_steps: 2}\n"
        "scaling: {num_workers: 1, cpus_per_worker: 1}\n"
        "lora: {r: 4, alpha: 8}\n"
    )
    r = _cli(["train", "run", str(config)], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    lines = [line for line in r.stdout.splitlines() if line.startswith("step ")]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(int(m[1]), int(m[2])) for m in parsed] == [(5, 20), (10, 20), (15, 20), (20, 20)]
    assert parsed[0][6] == "?" and all(m[6] != "?" for m in parsed[1:])
    assert parsed[-1][6] == "0:00:00"

    there = MlflowClient(tracking_uri=users, registry_uri=users)
    experiment = there.get_experiment_by_name("team-a/faq-bot")
    assert experiment is not None
    (run,) = there.search_runs([experiment.experiment_id])
    history = sorted(there.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [f"{m.value:.4f}" for m in history] == [m[3] for m in parsed]  # the logged values

    (version,) = there.search_model_versions("name = 'progress-adapter'")
    assert version.run_id == run.info.run_id
    page = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
    assert r.stdout.splitlines()[-1] == (
        f"registered progress-adapter version {version.version}; MLflow run {run.info.run_id}: "
        f"`mlflow ui --backend-store-uri {users}`, then {page}"
    )
    assert there.get_experiment_by_name("sekisho").experiment_id != experiment.experiment_id
    assert not (home / "mlflow.db").exists()  # nothing went to the home's own store
