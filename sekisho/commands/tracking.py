"""`sekisho tracking`: Run the team's MLflow tracking server."""

from __future__ import annotations

import signal
import sys

from sekisho.cli_common import add_command, command_group
from sekisho.cli_common import home_from_args as _home


def cmd_tracking_server(args) -> int:
    """Start `mlflow server` for the team (PostgreSQL, proxied artifacts, basic auth,
    telemetry off) and keep it running until interrupted."""
    from sqlalchemy.engine import make_url

    from experiments.tracking_server import TrackingServerConfig, start_server

    cfg = TrackingServerConfig.from_yaml(args.config)
    _home(args)
    server = start_server(cfg, log_path=args.log)
    try:
        # SIGTERM (a service manager stopping us) ends the server like Ctrl-C does.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        db = make_url(cfg.backend_store_uri).render_as_string(hide_password=True)
        print(
            f"MLflow tracking server listening at {server.url} (runs and registry: {db}; "
            f"artifacts: {cfg.artifacts_destination}, served through the server; basic auth on)"
        )
        admin = server.admin
        if admin.generated:
            print(
                f"admin user {admin.username!r}: generated password, shown once (also in "
                f"{admin.password_file}, mode 0600): {admin.password}"
            )
        elif admin.password_file:
            print(f"admin user {admin.username!r}: password in {admin.password_file}")
        print(
            f"clients: export SEKISHO_MLFLOW_URI={server.url} MLFLOW_TRACKING_USERNAME=USER "
            "MLFLOW_TRACKING_PASSWORD=PASSWORD",
            flush=True,
        )
        return server.wait()
    finally:
        server.stop()


def cmd_tracking_user_add(args) -> int:
    """Create a user on the team tracking server (as its admin). The password is
    taken from $SEKISHO_NEW_USER_PASSWORD or generated and shown once."""
    import os

    from experiments.tracking_server import add_user

    given = os.environ.get("SEKISHO_NEW_USER_PASSWORD")
    password = add_user(args.username, given)
    print(f"user {args.username!r} created" + ("" if given else f"; password (shown once): {password}"))
    print(
        f"grant access with `sekisho tracking grant {args.username} --experiment NAME|--model NAME "
        "--permission EDIT`"
    )
    return 0


def cmd_tracking_grant(args) -> int:
    """Give a user READ, EDIT, MANAGE or NO_PERMISSIONS on an experiment or a
    registered model (as the tracking server's admin); EDIT on a model lets the
    user promote and roll it back."""
    from experiments.tracking_server import grant

    grant(args.username, args.permission, experiment=args.experiment, model=args.model)
    target = f"experiment {args.experiment!r}" if args.experiment else f"model {args.model!r}"
    print(f"{args.username}: {args.permission} on {target}")
    return 0


def register(groups) -> None:
    tracking = command_group(groups, "tracking", "the team's MLflow tracking server")
    c = add_command(tracking, "server", cmd_tracking_server)
    c.add_argument("config", help="tracking server config, e.g. configs/tracking/team.yaml")
    c.add_argument("--log", help="write the server's output to this file instead of the terminal")
    user = tracking.add_parser("user", help="users of the team tracking server").add_subparsers(
        dest="user_command", required=True, metavar="COMMAND"
    )
    c = add_command(user, "add", cmd_tracking_user_add)
    c.add_argument("username", help="the new user's name")
    c = add_command(tracking, "grant", cmd_tracking_grant)
    c.add_argument("username", help="user to grant the permission to")
    on = c.add_mutually_exclusive_group(required=True)
    on.add_argument(
        "--experiment", help="experiment name (a train config's `experiment`: one per team or project)"
    )
    on.add_argument("--model", help="registered model name")
    c.add_argument(
        "--permission",
        required=True,
        choices=["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"],
        help="what the user may do",
    )
