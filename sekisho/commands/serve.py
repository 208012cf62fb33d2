"""`sekisho serve`: serving apps (up, status, logs, reload, down)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from foundation import UserError
from sekisho.cli_common import home_from_args as _home

POLL_S = 1.0


class EnginePhases:
    """While `serve up` deploys: print where each engine's log is and each phase of
    its start as the log shows it (serve.vllm_process.PHASES). Logs written
    before `serve up` began (earlier replicas) are left out."""

    def __init__(self, app: str, models: list[str], home: Path, out=None):
        self.app, self.models, self.home = app, models, home
        self.out = out or sys.stdout
        self.since = time.time() - 1.0
        self.phases: dict[Path, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sekisho-engine-phases", daemon=True)

    def __enter__(self):
        for model in self.models:
            self._say(f"  {model}: placing")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # the last phases (ready) before `serving at`

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except OSError:  # a log replaced or the home's storage away: the next round
                pass

    def poll(self) -> None:
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        from serve.vllm_process import engine_logs, engine_phase

        for model, replica, path in engine_logs(self.app, home=self.home):
            if path.stat().st_mtime < self.since:
                continue
            who = f"  {model} [replica {replica}]"
            if path not in self.phases:
                self._say(f"{who}: log {path}")
            phase = engine_phase(path.read_text(errors="replace"))
            if self.phases.get(path) != phase:
                self.phases[path] = phase
                self._say(f"{who}: {phase}")


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
        with EnginePhases(cfg.name, [m.name for m in cfg.models], home):
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
                cache = f"{v['cache_tokens']:,} tokens" if v.get("cache_tokens") else "-"
                print(
                    f"    replica {v['replica']}  load {v['load']:g}  adapters {v['adapters']}/"
                    f"{v['lora_slots'] or '-'}  KV cache {cache}  prefix hits {v['prefix_hits']}  "
                    f"forwarded in {v['forwarded_in']}"
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


def _live_replicas(app: str, home: Path) -> set[str]:
    """Replicas whose metrics target is current (each live replica keeps one)."""
    import json

    from cluster.scrape_config import targets_dir

    live = set()
    for f in targets_dir(home).glob("*.json"):
        try:
            for entry in json.loads(f.read_text()):
                if entry["labels"].get("app") == app:
                    live.add(entry["labels"]["replica"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return live


def _pick_logs(app: str, model: str | None, home: Path, every: bool) -> list[tuple[str, str, Path]]:
    from serve.vllm_process import engine_logs, engine_logs_dir

    logs = engine_logs(app, model, home=home)
    if not logs:
        what = f"model {model!r} of app {app!r}" if model else f"app {app!r}"
        raise UserError(f"no engine log of {what} in {engine_logs_dir(app, home)}.")
    if every:
        return logs
    live = _live_replicas(app, home)
    current = [entry for entry in logs if entry[1] in live]
    if current:
        return current
    newest = {}  # no live replica known (gateway placed separately, or all gone): each model's newest
    for entry in logs:
        newest[entry[0]] = entry
    return list(newest.values())


def cmd_serve_logs(args) -> int:
    """Print an app's engine logs (each live replica's; --all: every replica's),
    the last --lines of each; --follow keeps printing what they write."""
    home = _home(args)
    logs = _pick_logs(args.app, args.model, home, args.all)
    offsets = {}
    for model, replica, path in logs:
        if len(logs) > 1:
            print(f"==> {model} [replica {replica}] {path} <==", flush=True)
        data = path.read_bytes()
        offsets[path] = len(data)
        lines = data.decode(errors="replace").splitlines()
        print("\n".join(lines[-args.lines :] if args.lines else lines), flush=True)
    try:
        _follow(logs, offsets, args.follow)
    except KeyboardInterrupt:
        pass
    return 0


def _follow(logs: list[tuple[str, str, Path]], offsets: dict[Path, int], follow: bool) -> None:
    while follow:
        time.sleep(POLL_S)
        for model, replica, path in logs:
            with path.open("rb") as f:
                f.seek(offsets[path])
                new = f.read()
            if new:
                offsets[path] += len(new)
                prefix = f"[{model} {replica}] " if len(logs) > 1 else ""
                for line in new.decode(errors="replace").splitlines():
                    print(prefix + line, flush=True)


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
    c = serve.add_parser("logs", help=cmd_serve_logs.__doc__)
    c.add_argument("app", help="serve app name (the config's `name`, e.g. demo)")
    c.add_argument("model", nargs="?", help="only this model's engines (a `models[].name` of the app)")
    c.add_argument(
        "-f", "--follow", action="store_true", help="keep printing what the logs write (Ctrl-C stops)"
    )
    c.add_argument("-n", "--lines", type=int, default=100, help="print the last N lines of each log (0: all)")
    c.add_argument(
        "--all", action="store_true", help="every replica's log, also of replicas that have stopped"
    )
    c.set_defaults(fn=cmd_serve_logs)
    c = serve.add_parser("reload", help=cmd_serve_reload.__doc__)
    c.add_argument("name", nargs="?", default="demo", help="serve app name (default demo)")
    c.set_defaults(fn=cmd_serve_reload)
    c = serve.add_parser("down", help=cmd_serve_down.__doc__)
    c.add_argument("name", nargs="?", default="demo", help="serve app name (default demo)")
    c.add_argument("--all", action="store_true", help="stop every app (and Serve itself)")
    c.set_defaults(fn=cmd_serve_down)
    for p in serve.choices.values():
        p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster address")
