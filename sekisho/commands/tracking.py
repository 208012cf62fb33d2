"""`sekisho tracking`: Run the team's MLflow tracking server."""

from __future__ import annotations

import signal
import sys

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
        print(f"MLflow tracking server listening at {server.url} (runs and registry: {db}; "
              f"artifacts: {cfg.artifacts_destination}, served through the server; basic auth on)")
        admin = server.admin
        if admin.generated:
            print(f"admin user {admin.username!r}: generated password, shown once (also in "
                  f"{admin.password_file}, mode 0600): {admin.password}")
        elif admin.password_file:
            print(f"admin user {admin.username!r}: password in {admin.password_file}")
        print(f"clients: export SEKISHO_MLFLOW_URI={server.url} MLFLOW_TRACKING_USERNAME=USER "
              "MLFLOW_TRACKING_PASSWORD=PASSWORD", flush=True)
        return server.wait()
    finally:
        server.stop()


def register(groups) -> None:
    tracking = groups.add_parser("tracking", help="the team's MLflow tracking server").add_subparsers(
        dest="command", required=True, metavar="COMMAND")
    c = tracking.add_parser("server", help=cmd_tracking_server.__doc__)
    c.add_argument("config", help="tracking server config, e.g. configs/tracking/team.yaml")
    c.add_argument("--log", help="write the server's output to this file instead of the terminal")
    c.set_defaults(fn=cmd_tracking_server)
