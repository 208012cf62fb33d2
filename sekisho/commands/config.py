"""`sekisho config`: Validate config files by the folder they live in."""

from __future__ import annotations

from pathlib import Path

from foundation import UserError

CONFIG_KINDS = {"data": "data.prepare:DatasetConfig", "train": "train.config:TrainJobConfig",
                "serve": "serve.config:ServeAppConfig", "models": "train.tiny_model:TinyModelConfig", "cluster": "cluster.inventory:Inventory", "gpu_requests": "cluster.gpu_requests:GpuRequests", "eval": "experiments.evaluation:EvalConfig",
                "tracking": "experiments.tracking_server:TrackingServerConfig"}


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


def register(groups) -> None:
    config = groups.add_parser("config", help="validate config files").add_subparsers(
        dest="command", required=True, metavar="COMMAND")
    c = config.add_parser("check", help=cmd_config_check.__doc__)
    c.add_argument("files", nargs="+")
    c.set_defaults(fn=cmd_config_check)
