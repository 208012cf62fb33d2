"""`sekisho serve`: Serving apps."""

from __future__ import annotations


from sekisho.cli_common import home_from_args as _home


def cmd_serve_up(args) -> int:
    """Deploy a serve app on a local Ray cluster and keep serving until Ctrl-C."""
    import signal

    from cluster.local import start_local, stop
    from serve import ServeAppConfig, deploy, resolve_app

    cfg = ServeAppConfig.from_yaml(args.config)
    home = _home(args)
    resolved = resolve_app(cfg, home / "serve-cache")  # refuses a bad config before Ray starts
    start_local(home)
    try:
        print(f"Serving at {deploy(resolved)}; Ctrl-C to stop.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        stop()
    return 0


def register(groups) -> None:
    serve = groups.add_parser("serve", help="serving apps").add_subparsers(
        dest="command", required=True, metavar="COMMAND")
    c = serve.add_parser("up", help=cmd_serve_up.__doc__)
    c.add_argument("config")
    c.set_defaults(fn=cmd_serve_up)
