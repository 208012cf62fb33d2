"""`sekisho serve`: serving apps (up, status, down)."""

from __future__ import annotations

from foundation import UserError
from sekisho.cli_common import home_from_args as _home


def cmd_serve_up(args) -> int:
    """Deploy a serve app. With --address (or RAY_ADDRESS) it deploys to that running
    cluster and returns; otherwise it starts Ray here and serves until Ctrl-C."""
    import signal

    from cluster.local import start_local, stop
    from sekisho.gpu_plan import check_against_running_cluster, plan_serve_app
    from serve import ServeAppConfig, deploy, resolve_app

    cfg = ServeAppConfig.from_yaml(args.config)
    home = _home(args)
    resolved = resolve_app(cfg, home / "serve-cache")  # refuses a bad config before Ray starts
    if args.inventory:
        plan = plan_serve_app(resolved, args.inventory)  # refuses what cannot fit, saying what would
        for g in plan.groups:
            print(f"  {g.request}: {g.node} GPUs {','.join(map(str, g.gpus))}")
    start_local(home, address=args.address)
    try:
        import ray

        check_against_running_cluster(cfg, [n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]])
        url = deploy(resolved)
        print(f"{cfg.name}: serving at {url}", flush=True)
        if args.address:
            return 0
        print("Ctrl-C to stop.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        if not args.address:
            stop()
    return 0


def _connect(args) -> None:
    from cluster.local import start_local

    if not args.address:
        raise UserError(
            "--address (or RAY_ADDRESS): the Ray cluster to ask; the embedded default "
            "lives only as long as `sekisho serve up` runs."
        )
    start_local(_home(args), address=args.address)


def cmd_serve_status(args) -> int:
    """Show each app's models, the version each serves, replicas and health."""
    from ray import serve

    from serve.gateway.routing import replica_views
    from serve.ray_state import app_routes, app_sizing

    _connect(args)
    for app_name, app in serve.status().applications.items():
        print(f"{app_name}: {app.status}")
        routes, sizing, views = app_routes(app_name), app_sizing(app_name), replica_views(app_name)
        for dep_name, dep in app.deployments.items():
            replicas = ", ".join(f"{n} {state}" for state, n in dep.replica_states.items())
            print(
                f"  {dep_name:24} {dep.status:10} replicas: {replicas or '-'}{_bounds(sizing.get(dep_name))}"
            )
            for model, r in routes.items():
                if r["deployment"] == dep_name:
                    print(f"    {model:22} {r['version']}  sha256 {r['sha256'][:16]}…")
            for v in views.get(dep_name, []):  # routing state per replica (serve.gateway.router)
                print(
                    f"    replica {v['replica']}  load {v['load']:g}  adapters {v['adapters']}/"
                    f"{v['lora_slots'] or '-'}  prefix hits {v['prefix_hits']}  forwarded in {v['forwarded_in']}"
                )
    return 0


def _bounds(sizing: dict | None) -> str:
    """An engine's sizing, as `serve status` shows it after the replica counts."""
    if not sizing:
        return ""
    if "max_replicas" in sizing:
        return (
            f"  (autoscaling {sizing['min_replicas']}-{sizing['max_replicas']}, target "
            f"{sizing['target_ongoing_requests']:g} running+waiting requests per replica)"
        )
    return f"  (fixed {sizing['num_replicas']})"


def cmd_serve_reload(args) -> int:
    """Make every engine of an app re-read the aliases it follows, now."""
    from serve.ray_state import request_reload

    _connect(args)
    request_reload(args.name)
    print(f"{args.name}: engines re-read their aliases within a second")
    return 0


def cmd_serve_down(args) -> int:
    """Stop an app (or every app with --all)."""
    from ray import serve

    _connect(args)
    if args.all:
        serve.shutdown()
    else:
        if args.name not in serve.status().applications:
            raise UserError(f"no serve app named {args.name!r} on this cluster.")
        serve.delete(args.name)
    print("stopped")
    return 0


def register(groups) -> None:
    import os

    serve = groups.add_parser("serve", help="serving apps").add_subparsers(
        dest="command", required=True, metavar="COMMAND"
    )
    c = serve.add_parser("up", help=cmd_serve_up.__doc__)
    c.add_argument("config", help="serve app config, e.g. configs/serve/demo.yaml")
    c.add_argument(
        "--inventory",
        help="plan the app's GPUs on this cluster inventory first "
        "(e.g. configs/cluster/reference.yaml); refused if it cannot fit",
    )
    c.set_defaults(fn=cmd_serve_up)
    c = serve.add_parser("status", help=cmd_serve_status.__doc__)
    c.set_defaults(fn=cmd_serve_status)
    c = serve.add_parser("reload", help=cmd_serve_reload.__doc__)
    c.add_argument("name", nargs="?", default="demo", help="serve app name (default demo)")
    c.set_defaults(fn=cmd_serve_reload)
    c = serve.add_parser("down", help=cmd_serve_down.__doc__)
    c.add_argument("name", nargs="?", default="demo", help="serve app name (default demo)")
    c.add_argument("--all", action="store_true", help="stop every app (and Serve itself)")
    c.set_defaults(fn=cmd_serve_down)
    for p in serve.choices.values():
        p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster address")
