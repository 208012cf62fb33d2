"""`sekisho config`: validate config files by the folder they live in, and
explain every field of a config kind."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

from foundation import UserError
from sekisho.cli_common import add_command, command_group

CONFIG_KINDS = {
    "data": "data.prepare:DatasetConfig",
    "train": "train.config:TrainJobConfig",
    "serve": "serve.config:ServeAppConfig",
    "models": "train.tiny_model:TinyModelConfig",
    "cluster": "cluster.inventory:Inventory",
    "gpu_requests": "cluster.gpu_requests:GpuRequests",
    "eval": "experiments.evaluation:EvalConfig",
    "tracking": "experiments.tracking_server:TrackingServerConfig",
}


def _load(kind: str):
    module, cls = CONFIG_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def config_class(path: Path):
    """The config model for a file, chosen by the folder it lives in (configs/<kind>/)."""
    kind = path.resolve().parent.name
    if kind not in CONFIG_KINDS:
        raise UserError(
            f"{path}: cannot tell the config kind; expected a file under "
            f"configs/{{{','.join(CONFIG_KINDS)}}}/."
        )
    return _load(kind)


def config_models(kind: str) -> dict[str, type]:
    """The config model(s) of a kind: title -> class (a train config has one per recipe).

    Raises:
        UserError: an unknown kind.
    """
    if kind not in CONFIG_KINDS:
        raise UserError(f"config explain: unknown kind {kind!r}; one of {', '.join(CONFIG_KINDS)}.")
    cls = _load(kind)
    variants = getattr(cls, "variants", None)
    return variants() if variants else {cls.__name__: cls}


def explain_text(kind: str, width: int = 88) -> str:
    """Every field of a config kind: path, type, default, then its description."""
    out = []
    for title, cls in config_models(kind).items():
        out.append(f"{title}  (configs/{kind}/*.yaml)")
        for doc in cls.explain():
            out.append(f"  {doc.path}: {doc.type} = {doc.default}")
            out += textwrap.wrap(
                doc.description or "(no description)",
                width,
                initial_indent="      ",
                subsequent_indent="      ",
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def cmd_config_check(args) -> int:
    """Validate config files; prints each file's kind."""
    for f in args.files:
        cls = config_class(Path(f))
        cls.from_yaml(f)
        print(f"ok  {f}  ({cls.__name__})")
    return 0


def cmd_config_explain(args) -> int:
    """Print every field of a config kind with its type, default and description."""
    print(explain_text(args.kind), end="")
    return 0


def register(groups) -> None:
    config = command_group(groups, "config", "validate config files; explain their fields")
    c = add_command(config, "check", cmd_config_check)
    c.add_argument("files", nargs="+", help="YAML files under configs/<kind>/ (the folder names the kind)")
    e = add_command(config, "explain", cmd_config_explain)
    e.add_argument("kind", choices=sorted(CONFIG_KINDS), help="the config kind (the folder under configs/)")
