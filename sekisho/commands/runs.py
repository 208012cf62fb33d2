"""`sekisho runs`: Compare tracked runs (training and evaluation)."""

from __future__ import annotations

from sekisho.cli_common import add_command, command_group
from sekisho.cli_common import home_from_args as _home


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_runs_compare(args) -> int:
    """Print the params that differ and the final metrics of two or more runs
    (RUN_ID ... or --experiment NAME), and write a PNG of one metric's curves, each
    labelled with its run's name (--plot), or log it to MLflow (--log-to-mlflow)."""
    import tempfile
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from experiments.comparison import compare_runs, curve_labels, log_comparison, plot_metric, runs_of
    from foundation import UserError

    _home(args)
    run_ids = list(args.runs)
    if args.experiment:
        run_ids += runs_of(args.experiment, args.last)
    if len(run_ids) < 2:
        raise UserError("runs compare: give two or more run ids, or --experiment NAME with two or more runs.")
    c = compare_runs(run_ids)
    console = Console(width=max(100, 30 + 14 * len(run_ids)))
    for title, rows in (("params that differ", c.params), ("final metrics", c.metrics)):
        table = Table(title=title)
        table.add_column("key")
        for rid, name in zip(c.run_ids, c.run_names, strict=True):
            table.add_column(f"{name}\n{rid[:8]}", overflow="fold")
        for key, values in rows.items():
            table.add_row(key, *(_cell(v) for v in values))
        console.print(table)
    if args.plot or args.log_to_mlflow:
        with tempfile.TemporaryDirectory(prefix="sekisho-compare-") as tmp:
            png = args.plot or str(Path(tmp) / f"{args.metric}.png")
            written = plot_metric(c.run_ids, args.metric, png, curve_labels(c.run_ids, c.run_names))
            if not written:
                print(f"no run logged {args.metric!r}; no plot written")
                return 0
            if args.plot:
                print(f"wrote {written}")
            if args.log_to_mlflow:
                rid = log_comparison(c, args.metric, written)
                print(
                    f"logged {written.name} to MLflow run {rid} (compare-{args.metric}), artifact comparison/"
                )
    return 0


def register(groups) -> None:
    runs = command_group(groups, "runs", "compare tracked runs")
    c = add_command(runs, "compare", cmd_runs_compare)
    c.add_argument("runs", nargs="*", help="run ids")
    c.add_argument("--experiment", help="also compare the latest runs of this experiment")
    c.add_argument("--last", type=int, default=5, help="how many runs of --experiment")
    c.add_argument("--plot", help="write a PNG of --metric per run here")
    c.add_argument("--metric", default="loss", help="metric to plot (default loss)")
    c.add_argument(
        "--log-to-mlflow",
        action="store_true",
        help="log the PNG (and the tables as JSON) as artifacts, under comparison/, of a new run named "
        "compare-METRIC in the first compared run's experiment, tagged with the compared run ids; the "
        "compared runs are left as they are",
    )
