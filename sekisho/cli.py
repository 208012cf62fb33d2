"""`sekisho <group> <command>`: one CLI, each command a plain function.

The zero-egress switches are applied before anything else is imported.
A user mistake prints one paragraph naming what is wrong and exits with 2.
"""

from __future__ import annotations

from cluster import offline

offline.apply()

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from cluster.config_base import UserError  # noqa: E402

CONFIG_KINDS = {"data": "data.prepare:DatasetConfig", "train": "train.config:LoraJobConfig",
                "serve": "serve.config:ServeAppConfig", "models": "train.tiny_model:TinyModelConfig"}


def _home(args) -> Path:
    import os

    if getattr(args, "home", None):
        os.environ["SEKISHO_HOME"] = str(Path(args.home).resolve())
    from experiments import sekisho_home
    return sekisho_home()


def cmd_demo(args) -> int:
    """Run the main job end to end on embedded defaults."""
    from sekisho.demo import run_demo

    result = run_demo(_home(args), keep_serving=args.keep_serving, port=args.port)
    if args.keep_serving:
        import signal
        print(f"Serving at {result.base_url}; Ctrl-C to stop.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


def config_class(path: Path):
    """The config model for a file, chosen by the folder it lives in (configs/<kind>/)."""
    import importlib

    kind = path.resolve().parent.name
    if kind not in CONFIG_KINDS:
        raise UserError(f"{path}: cannot tell the config kind; expected a file under "
                        f"configs/{{{','.join(CONFIG_KINDS)}}}/.")
    module, cls = CONFIG_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def cmd_config_check(args) -> int:
    """Validate config files; prints each file's kind."""
    for f in args.files:
        cls = config_class(Path(f))
        cls.from_yaml(f)
        print(f"ok  {f}  ({cls.__name__})")
    return 0


def cmd_data_prepare(args) -> int:
    """Validate and tokenise a dataset with a registered model's tokenizer."""
    import json

    from data import DatasetConfig, prepare, read_chat_jsonl
    from experiments import resolve

    cfg = DatasetConfig.from_yaml(args.config)
    read_chat_jsonl(cfg.path, on_error=cfg.on_error)  # bad rows are reported before anything else
    home = _home(args)
    model = resolve(args.model, home / "cache" / args.model.replace("@", "_at_").replace("/", "_v"))
    out = Path(args.out) if args.out else home / "datasets" / cfg.name
    print(json.dumps(prepare(cfg, model.path, out), indent=2, ensure_ascii=False))
    print(f"wrote {out}/tokens.parquet")
    return 0


def cmd_train_run(args) -> int:
    """Run a fine-tuning job on a local Ray cluster; registers the adapter."""
    from cluster.local import start_local, stop
    from train import LoraJobConfig
    from train.job import run_job

    cfg = LoraJobConfig.from_yaml(args.config)
    home = _home(args)
    start_local(home)
    try:
        r = run_job(cfg, Path(args.config).read_text(encoding="utf-8"), home)
    finally:
        stop()
    print(f"run {r.run_id}: registered {r.model_name} version {r.version}; metrics {r.metrics}")
    return 0


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


def cmd_models_list(args) -> int:
    """List registered models with their aliases and latest version."""
    from mlflow import MlflowClient

    from experiments import use_store

    _home(args)
    use_store()
    for rm in MlflowClient().search_registered_models():
        aliases = ", ".join(f"{a}->v{v}" for a, v in sorted(rm.aliases.items())) if rm.aliases else "-"
        latest = max((int(v.version) for v in rm.latest_versions), default=0)
        print(f"{rm.name:32} kind={rm.tags.get('kind', '?'):8} latest=v{latest:<4} aliases: {aliases}")
    return 0


def cmd_models_show(args) -> int:
    """Show one version (NAME@ALIAS or NAME/VERSION) with its lineage tags."""
    from experiments import get_version

    _home(args)
    mv = get_version(args.ref)
    print(f"{mv.name} version {mv.version} (run {mv.run_id})\nsource: {mv.source}")
    for k, v in sorted(mv.tags.items()):
        print(f"  {k}: {v}")
    return 0


def cmd_models_promote(args) -> int:
    """Point an alias at a version."""
    from experiments import get_version, set_alias

    _home(args)
    get_version(f"{args.name}/{args.version}")
    set_alias(args.name, args.alias, args.version)
    print(f"{args.name}@{args.alias} -> version {args.version}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sekisho", description=__doc__.splitlines()[0])
    p.add_argument("--home", help="state folder (MLflow store, models, Ray token); "
                                  "default $SEKISHO_HOME or ./.sekisho")
    groups = p.add_subparsers(dest="group", required=True, metavar="GROUP")

    demo = groups.add_parser("demo", help=cmd_demo.__doc__)
    demo.add_argument("--keep-serving", action="store_true", help="keep the endpoint up after the demo")
    demo.add_argument("--port", type=int, help="HTTP port of the endpoint (default from configs/serve/demo.yaml)")
    demo.set_defaults(fn=cmd_demo)

    def group(name: str, help_: str):
        g = groups.add_parser(name, help=help_)
        return g.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = group("config", "validate config files")
    c = config.add_parser("check", help=cmd_config_check.__doc__)
    c.add_argument("files", nargs="+")
    c.set_defaults(fn=cmd_config_check)

    data = group("data", "datasets")
    c = data.add_parser("prepare", help=cmd_data_prepare.__doc__)
    c.add_argument("config")
    c.add_argument("--model", required=True, help="registry reference of the model whose tokenizer to use")
    c.add_argument("--out", help="output folder (default $SEKISHO_HOME/datasets/NAME)")
    c.set_defaults(fn=cmd_data_prepare)

    train = group("train", "fine-tuning jobs")
    c = train.add_parser("run", help=cmd_train_run.__doc__)
    c.add_argument("config")
    c.set_defaults(fn=cmd_train_run)

    serve = group("serve", "serving apps")
    c = serve.add_parser("up", help=cmd_serve_up.__doc__)
    c.add_argument("config")
    c.set_defaults(fn=cmd_serve_up)

    models = group("models", "the model registry")
    c = models.add_parser("list", help=cmd_models_list.__doc__)
    c.set_defaults(fn=cmd_models_list)
    c = models.add_parser("show", help=cmd_models_show.__doc__)
    c.add_argument("ref")
    c.set_defaults(fn=cmd_models_show)
    c = models.add_parser("promote", help=cmd_models_promote.__doc__)
    c.add_argument("name")
    c.add_argument("version")
    c.add_argument("--alias", default="production")
    c.set_defaults(fn=cmd_models_promote)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as exc:
        print(f"sekisho: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
