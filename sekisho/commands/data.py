"""`sekisho data`: Datasets."""

from __future__ import annotations

from pathlib import Path

from sekisho.cli_common import home_from_args as _home


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


def register(groups) -> None:
    data = groups.add_parser("data", help="datasets").add_subparsers(
        dest="command", required=True, metavar="COMMAND")
    c = data.add_parser("prepare", help=cmd_data_prepare.__doc__)
    c.add_argument("config")
    c.add_argument("--model", required=True, help="registry reference of the model whose tokenizer to use")
    c.add_argument("--out", help="output folder (default $SEKISHO_HOME/datasets/NAME)")
    c.set_defaults(fn=cmd_data_prepare)
