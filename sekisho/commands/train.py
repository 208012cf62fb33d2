"""`sekisho train`: Fine-tuning jobs."""

from __future__ import annotations

from pathlib import Path

from sekisho.cli_common import home_from_args as _home


def cmd_train_run(args) -> int:
    """Run a fine-tuning job on a local Ray cluster; registers the adapter."""
    from cluster.local import start_local, stop
    from train import TrainJobConfig
    from train.job import run_job

    cfg = TrainJobConfig.from_yaml(args.config)
    home = _home(args)
    start_local(home)
    try:
        r = run_job(cfg, Path(args.config).read_text(encoding="utf-8"), home)
    finally:
        stop()
    print(f"run {r.run_id}: registered {r.model_name} version {r.version}; metrics {r.metrics}")
    return 0


def register(groups) -> None:
    train = groups.add_parser("train", help="fine-tuning jobs").add_subparsers(
        dest="command", required=True, metavar="COMMAND")
    c = train.add_parser("run", help=cmd_train_run.__doc__)
    c.add_argument("config")
    c.set_defaults(fn=cmd_train_run)
