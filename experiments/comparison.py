"""Compare runs side by side: the params that differ, the final value of every
metric, and (optionally) a PNG of one metric's curve per run, each curve labelled
with its run's name, which can be logged to MLflow as the artifact of a
comparison run of its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments import tracking
from foundation import UserError


@dataclass(frozen=True)
class Comparison:
    """Runs in the order asked for; each table maps a key to one value per run
    (None where a run lacks it)."""

    run_ids: list[str]
    run_names: list[str]
    params: dict[str, list[str | None]]
    metrics: dict[str, list[float | None]]


def compare_runs(run_ids: list[str]) -> Comparison:
    """Params that differ between the runs, and every metric's latest value.

    Raises:
        UserError: fewer than two runs, or a run id names no run.
    """
    import mlflow
    from mlflow import MlflowClient

    if len(run_ids) < 2:
        raise UserError(f"compare needs at least two runs, got {len(run_ids)}.")
    tracking.use_store()
    client = MlflowClient()
    runs = []
    for rid in run_ids:
        try:
            runs.append(client.get_run(rid))
        except mlflow.exceptions.MlflowException:
            raise UserError(f"run {rid!r} not found in {tracking.tracking_uri()}.") from None
    param_keys = sorted({k for r in runs for k in r.data.params})
    params = {k: [r.data.params.get(k) for r in runs] for k in param_keys}
    metric_keys = sorted({k for r in runs for k in r.data.metrics})
    return Comparison(
        [r.info.run_id for r in runs],
        [r.info.run_name or "" for r in runs],
        {k: v for k, v in params.items() if len(set(v)) > 1},
        {k: [r.data.metrics.get(k) for r in runs] for k in metric_keys},
    )


def runs_of(experiment: str, last: int = 10) -> list[str]:
    """The ids of the latest `last` runs of an experiment, newest first.

    Raises:
        UserError: no such experiment.
    """
    import mlflow

    tracking.use_store()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"experiment {experiment!r} not found in {tracking.tracking_uri()}.")
    found = mlflow.search_runs(
        [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=last, output_format="list"
    )
    return [r.info.run_id for r in found]


def curve_labels(run_ids: list[str], run_names: list[str]) -> list[str]:
    """Each run's name; a name two runs share (reruns of one job) or none gets the
    run id's first 8 characters, so every curve is told apart."""
    taken = [n for n in run_names if n]
    return [
        name if name and taken.count(name) == 1 else (f"{name} ({rid[:8]})" if name else rid[:8])
        for rid, name in zip(run_ids, run_names, strict=True)
    ]


def log_comparison(c: Comparison, metric: str, png: str | Path) -> str:
    """Log the plot and the tables (with each run's curve label) as artifacts of a new
    run, `compare-METRIC`, in the first run's experiment, tagged with the runs
    compared; returns its run id."""
    from mlflow import MlflowClient

    tracking.use_store()
    client = MlflowClient()
    experiment_id = client.get_run(c.run_ids[0]).info.experiment_id
    run = client.create_run(
        experiment_id,
        run_name=f"compare-{metric}",
        tags={"sekisho.compared_runs": ",".join(c.run_ids), "sekisho.compared_metric": metric},
    )
    rid = run.info.run_id
    client.log_artifact(rid, str(png), "comparison")
    tables = {
        "runs": c.run_ids,
        "names": c.run_names,
        "labels": curve_labels(c.run_ids, c.run_names),
        "params": c.params,
        "metrics": c.metrics,
    }
    client.log_dict(rid, tables, "comparison/tables.json")
    client.set_terminated(rid, "FINISHED")
    return rid


def plot_metric(
    run_ids: list[str], metric: str, path: str | Path, labels: list[str] | None = None
) -> Path | None:
    """Write a PNG of `metric` against step, one line per run labelled `labels` (default
    the run ids' first 8 characters); None if no run logged it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    client = MlflowClient()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for rid, label in zip(run_ids, labels or [rid[:8] for rid in run_ids], strict=True):
        history = sorted(client.get_metric_history(rid, metric), key=lambda m: m.step)
        if history:
            ax.plot([m.step for m in history], [m.value for m in history], label=label)
            drawn += 1
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.legend()
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path) if drawn else None
