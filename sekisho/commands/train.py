"""`sekisho train`: Fine-tuning jobs, here (`run`) or on a running cluster
through the Ray Jobs API (`submit`, `logs`, `status`, `stop`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sekisho.cli_common import add_command, command_group
from sekisho.cli_common import home_from_args as _home


def cmd_train_run(args) -> int:
    """Run a fine-tuning job on a local Ray cluster (or join the one at --address,
    as a submitted job does); prints a line per logged step, registers the adapter
    and ends with its version and the MLflow run's page."""
    from cluster import Inventory
    from cluster.local import start_local, stop
    from data import DatasetConfig
    from experiments import tracking_uri
    from train import TrainJobConfig
    from train.job import check_job, run_job
    from train.progress import finished_line

    cfg = TrainJobConfig.from_yaml(args.config)
    inventory = Inventory.from_yaml(args.inventory) if args.inventory else None
    if inventory is not None:  # the nodes' host memory, checked before Ray starts
        check_job(cfg, DatasetConfig.from_yaml(cfg.dataset), inventory)
    home = _home(args)
    start_local(home, address=args.address)
    try:
        r = run_job(
            cfg,
            Path(args.config).read_text(encoding="utf-8"),
            home,
            inventory,
            progress=lambda line: print(line, flush=True),
        )
    finally:
        stop()
    print(f"run {r.run_id}: metrics {r.metrics}")
    print(finished_line(r.run_id, r.model_name, r.version, tracking_uri()), flush=True)
    return 0


def cmd_train_submit(args) -> int:
    """Submit a fine-tuning job to a running cluster (Ray Jobs API, token auth);
    ships the working directory and streams the job's logs until it ends."""
    from train import submission

    client = submission.connect(args.address, _home(args))
    job_id = submission.submit(client, Path(args.config), Path(args.working_dir), args.cluster_home)
    print(f"submitted {job_id}", flush=True)
    if not args.follow:
        return 0
    return _follow(client, job_id)


def _follow(client, job_id: str) -> int:
    """Print the job's logs until it ends (Ctrl-C stops following, not the job);
    exits 0 if it succeeded."""
    from train import submission

    try:
        status = submission.follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; {job_id} keeps running (`sekisho train stop {job_id}` stops it).")
        return 130
    print(f"{job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_train_status(args) -> int:
    """List the cluster's jobs (id, status, start, end, config), or show one job."""
    from train import submission

    client = submission.connect(args.address, _home(args))
    if args.job:
        info = submission.job_info(client, args.job)
        print(f"{args.job}: {info.status.value}\n  entrypoint: {info.entrypoint}")
        if info.message:
            print(f"  message: {info.message}")
        return 0
    rows = submission.job_rows(client)
    print(f"{'JOB':32} {'STATUS':10} {'START':19}  {'END':19}  CONFIG")
    for r in rows:
        print(f"{r['id']:32} {r['status']:10} {r['start']:19}  {r['end']:19}  {r['config']}")
    return 0


def cmd_train_logs(args) -> int:
    """Show a submitted job's logs from the start (its progress lines included) and
    follow them until the job ends; exits 0 if it succeeded."""
    import sys

    from train import submission

    client = submission.connect(args.address, _home(args))
    submission.job_info(client, args.job)  # an unknown job is named, not a traceback
    if not args.follow:
        sys.stdout.write(client.get_job_logs(args.job))
        return 0
    return _follow(client, args.job)


def cmd_train_stop(args) -> int:
    """Stop a submitted job and wait until it has stopped."""
    from train import submission

    client = submission.connect(args.address, _home(args))
    print(f"{args.job}: {submission.stop(client, args.job)}")
    return 0


def register(groups) -> None:
    train = command_group(groups, "train", "fine-tuning jobs")
    c = add_command(train, "run", cmd_train_run)
    c.add_argument("config", help="training job config, e.g. configs/train/demo_lora.yaml")
    c.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="join this Ray cluster (GCS address; a submitted job gets it as RAY_ADDRESS) "
        "instead of starting one here",
    )
    c.add_argument(
        "--inventory",
        help="the cluster's inventory (configs/cluster/*.yaml): the job's host-memory "
        "estimate is checked against its GPU nodes' memory_gb",
    )
    c = add_command(train, "submit", cmd_train_submit)
    c.add_argument("config", help="training job config, a path inside --working-dir")
    c.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream the job's logs until it ends (default on)",
    )
    c.add_argument(
        "--working-dir",
        default=".",
        help="folder shipped to the cluster as the job's working directory; holds the config",
    )
    c.add_argument("--cluster-home", help="$SEKISHO_HOME for the job on the cluster (default: the nodes')")
    c = add_command(train, "status", cmd_train_status)
    c.add_argument("job", nargs="?", help="job id (default: list every job)")
    c = add_command(train, "logs", cmd_train_logs)
    c.add_argument("job", help="job id (printed by `train submit`; `sekisho train status` lists them)")
    c.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep following until the job ends (default on); --no-follow prints what is there and returns",
    )
    c = add_command(train, "stop", cmd_train_stop)
    c.add_argument("job", help="job id (from `sekisho train status`)")
    for name in ("submit", "logs", "status", "stop"):
        train.choices[name].add_argument(
            "--address",
            default=os.environ.get("RAY_API_SERVER_ADDRESS"),
            help="the cluster's Jobs API, http://HOST:PORT (the head's dashboard)",
        )
