"""`sekisho data`: Datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from sekisho.cli_common import add_command, command_group
from sekisho.cli_common import home_from_args as _home


class PrepareProgress:
    """Rows read, rows/s, rows kept and rows dropped by reason, on `stream`: on a
    terminal one line redrawn in place, else (--progress into a file) a line every
    `every_s` seconds. Called by `data.prepare` after each batch and at the end."""

    def __init__(self, stream, terminal: bool, every_s: float = 5.0):
        import time

        self.stream, self.terminal = stream, terminal
        self.every_s = 0.2 if terminal else every_s
        self.clock = time.monotonic
        self.started = self.shown = self.clock()
        self.acc = None

    def __call__(self, acc) -> None:
        self.acc = acc
        now = self.clock()
        if now - self.shown >= self.every_s:
            self.shown = now
            self._show(acc)

    def line(self, acc) -> str:
        """`rows 12,288 (4,096 rows/s)  kept 12,100  dropped 188: exact_duplicate 150, too_long 38`."""
        rate = acc.rows_in / max(self.clock() - self.started, 1e-9)
        dropped = sum(acc.dropped.values())
        text = (
            f"rows {acc.rows_in:,} ({rate:,.0f} rows/s)  kept {acc.rows_in - dropped:,}  dropped {dropped:,}"
        )
        if dropped:
            text += ": " + ", ".join(f"{code} {n:,}" for code, n in acc.dropped.most_common())
        return text

    def _show(self, acc) -> None:
        line = self.line(acc)
        self.stream.write(f"\r{line}\x1b[K" if self.terminal else line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """The final counts (those of the last call), ending the redrawn line."""
        if self.acc is None:
            return
        self._show(self.acc)
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()


def cmd_data_prepare(args) -> int:
    """Validate, mask, deduplicate, split and tokenise a dataset with a registered model's tokenizer;
    on a terminal (or with --progress) a progress line on stderr: rows/s, rows dropped by reason."""
    import json
    import sys

    from data import DatasetConfig, prepare, validate_rows
    from experiments import resolve

    cfg = DatasetConfig.from_yaml(args.config)
    validate_rows(cfg)  # bad rows are reported before a model is fetched
    home = _home(args)
    model = resolve(args.model, home / "cache" / args.model.replace("@", "_at_").replace("/", "_v"))
    out = Path(args.out) if args.out else home / "datasets" / cfg.name
    if cfg.executor == "ray":  # Ray Data: join the cluster (or start a local one) for this command
        from cluster.local import start_local, stop

        start_local(home, address=args.ray_address)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = PrepareProgress(sys.stderr, terminal=sys.stderr.isatty()) if show else None
    try:
        manifest = prepare(cfg, model.path, out, progress=progress)
    finally:
        if progress is not None:
            progress.finish()
        if cfg.executor == "ray":
            stop()
    print(json.dumps(manifest, indent=2, ensure_ascii=False))
    print(f"wrote {out}/tokens.parquet")
    return 0


def cmd_data_inspect(args) -> int:
    """Show a few examples as the model sees them (trained tokens marked) and the manifest."""
    import pyarrow.parquet as pq
    from rich.console import Console
    from rich.table import Table

    from data import read_manifest, render_example
    from data.preview import manifest_rows, marked_text
    from foundation import UserError

    folder = (
        Path(args.name)
        if "/" in args.name or Path(args.name).is_dir()
        else _home(args) / "datasets" / args.name
    )
    if not (folder / "manifest.json").is_file():
        raise UserError(
            f"{folder}: no prepared dataset here (no manifest.json); run "
            f"`sekisho data prepare configs/data/NAME.yaml --model MODEL` first."
        )
    manifest = read_manifest(folder)
    console = Console(width=args.width, no_color=args.plain, highlight=False)
    table = Table(title=f"dataset {manifest['name']} @ {manifest['version']}", show_header=False)
    for key, value in manifest_rows(manifest):
        table.add_row(key, value)
    console.print(table)
    file = folder / manifest.get("splits", {}).get(args.split, {}).get("file", "tokens.parquet")
    if not file.exists():
        raise UserError(f"{folder}: no {args.split} split in this dataset.")
    if file.is_dir():  # shards: the first one is enough for a few examples
        file = min(file.glob("part-*.parquet"))
    tokenizer = _tokenizer(Path(args.tokenizer or manifest.get("tokenizer_path", "")), manifest)
    rows = pq.ParquetFile(file).read_row_group(0).slice(0, args.n).to_pylist()
    for i, row in enumerate(rows):
        console.rule(
            f"{args.split} row {i} ({len(row['input_ids'])} tokens; trained text "
            f"{'in green' if not args.plain else 'between ⟦ ⟧'})"
        )
        spans = render_example(tokenizer, row["input_ids"], row["labels"], row.get("position_ids"))
        console.print(marked_text(spans) if args.plain else _styled(spans), soft_wrap=True, markup=False)
    return 0


def _styled(spans):
    from rich.text import Text

    text, example = Text(), 0
    for span in spans:
        if span.example != example:
            text.append(f"\n──── example {span.example + 1} ────\n", style="dim")
            example = span.example
        text.append(span.text, style="bold green" if span.trained else "")
    return text


def _tokenizer(path: Path, manifest: dict):
    """The tokenizer the dataset was made with, checked against the manifest's hash."""
    from transformers import AutoTokenizer

    from data import tokenizer_hash
    from foundation import UserError

    if not (path / "tokenizer.json").is_file():
        raise UserError(
            f"{path}: the tokenizer this dataset was made with is not there; pass --tokenizer DIR."
        )
    if tokenizer_hash(path) != manifest["tokenizer_sha256"]:
        raise UserError(
            f"{path}: this tokenizer is not the one the dataset was made with "
            f"(sha256 differs from the manifest's {manifest['tokenizer_sha256'][:12]})."
        )
    return AutoTokenizer.from_pretrained(str(path))


def register(groups) -> None:
    data = command_group(groups, "data", "datasets")
    c = add_command(data, "prepare", cmd_data_prepare)
    c.add_argument("config", help="dataset config, e.g. configs/data/sharegpt_example.yaml")
    c.add_argument("--model", required=True, help="registry reference of the model whose tokenizer to use")
    c.add_argument("--out", help="output folder (default $SEKISHO_HOME/datasets/NAME)")
    c.add_argument(
        "--ray-address", help="with executor: ray, the cluster to join (default: start a local one)"
    )
    c.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress on stderr (rows/s, rows dropped by reason); default: only when stderr is a terminal",
    )
    c = add_command(data, "inspect", cmd_data_inspect)
    c.add_argument("name", help="dataset name (under $SEKISHO_HOME/datasets) or a prepared dataset folder")
    c.add_argument("-n", type=int, default=3, help="rows to show (default 3)")
    c.add_argument(
        "--split", choices=["train", "eval"], default="train", help="split to show (default train)"
    )
    c.add_argument("--tokenizer", help="tokenizer folder (default: the one recorded in the manifest)")
    c.add_argument("--plain", action="store_true", help="no colour: mark trained text with ⟦ ⟧")
    c.add_argument("--width", type=int, default=120, help="console width (default 120)")
