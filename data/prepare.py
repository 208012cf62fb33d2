"""Turn a dataset config into tokenised Parquet files plus a manifest.

After the row stages of `data.pipeline` (which tokenise: chat template, loss on
assistant turns; raw text trains every token; then token-length filters): pack (optional) ->
write `tokens.parquet` (train), `eval.parquet` (when eval_fraction > 0),
`dropped.jsonl` (every dropped row) and `manifest.json`.

Files are written under temporary names and renamed at the end, so a failed run
never leaves a half-written dataset that looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data.chat import IGNORE_INDEX, DataValidationError
from data.config import DatasetConfig
from data.manifest import MANIFEST_FILE, dataset_version, sources_sha256, tokenizer_hash, write_manifest
from data.memory import bounded_allocators
from data.packing import Packer
from data.pipeline import Accounting, processed_rows
from foundation import UserError

__all__ = ["DatasetConfig", "prepare", "tokenizer_hash"]
logger = logging.getLogger("sekisho.data")
SPLIT_FILES = {"train": "tokens.parquet", "eval": "eval.parquet"}
# How and where the work runs, not what comes out: left out of the version.
LAYOUT_SETTINGS = {
    "name": True,
    "path": True,
    "workers": True,
    "executor": True,
    "shard_tokens": True,
    "dedup": {"spill"},
}
WRITE_TOKENS = 1 << 17  # buffered tokens per row group: bounds memory for any row length
# Token ids: delta encoding (DELTA_BINARY_PACKED, read by every Parquet reader)
# instead of dictionary pages, no min/max statistics (neither helps a reader of
# id lists), zstd at its fastest level instead of snappy. Measured on packed rows
# of the benchmark corpus: half the time of pyarrow's defaults, and smaller files.
PARQUET_OPTIONS = {
    "use_dictionary": False,
    "column_encoding": "DELTA_BINARY_PACKED",
    "write_statistics": False,
    "compression": "zstd",
    "compression_level": 1,
}


class SplitWriter:
    """Rows of one split, batched into Parquet shards, with a running content hash.

    A split is a folder named like a file (`tokens.parquet/part-00000.parquet`,
    ...), a new shard every `shard_tokens` tokens: Parquet readers (pyarrow,
    Ray Data, Spark) read the folder as one table, and a large split is never
    one huge file.
    """

    def __init__(self, path: Path, packed: bool, shard_tokens: int = 1 << 26):
        import pyarrow as pa

        cols = ["input_ids", "labels"] + (["position_ids", "example_lengths"] if packed else [])
        self.schema = pa.schema([(c, pa.list_(pa.int32())) for c in cols])
        self.path, self.tmp = path, path.with_name(path.name + ".partial")
        self.shard_tokens = shard_tokens
        self.shards = 0
        self.shard_filled = 0
        self.rows: list[dict] = []
        self.buffered = 0
        self.writer = None
        self.stats = Counter()
        self.hash = hashlib.sha256()

    def add(self, row: dict[str, np.ndarray]) -> None:
        """Buffer one row (int32 arrays); the content hash covers its ids and labels."""
        ids, labels = row["input_ids"], row["labels"]
        self.rows.append(row)
        self.stats["sequences"] += 1
        self.stats["tokens"] += len(ids)
        self.stats["trained_tokens"] += int(np.count_nonzero(labels != IGNORE_INDEX))
        self.stats["examples"] += len(row.get("example_lengths", [0]))
        self.hash.update(np.ascontiguousarray(ids, dtype="<i4").tobytes())
        self.hash.update(np.ascontiguousarray(labels, dtype="<i4").tobytes())
        self.buffered += len(ids)
        if self.buffered >= WRITE_TOKENS:
            self._write()

    def _write(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is not None and self.shard_filled >= self.shard_tokens:
            self.writer.close()
            self.writer = None
        if self.writer is None:
            if not self.shards:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp.mkdir()
            self.writer = pq.ParquetWriter(
                self.tmp / f"part-{self.shards:05d}.parquet", self.schema, **PARQUET_OPTIONS
            )
            self.shards += 1
            self.shard_filled = 0
        self.shard_filled += self.buffered
        if self.rows:
            lengths = np.array([len(r["input_ids"]) for r in self.rows], dtype=np.int32)
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int32)]), type=pa.int32())
            columns = []
            for f in self.schema:
                own = f.name == "example_lengths"  # the one column with its own row lengths
                sizes = np.array([len(r[f.name]) for r in self.rows], dtype=np.int32) if own else None
                offs = (
                    pa.array(np.concatenate([[0], np.cumsum(sizes, dtype=np.int32)]), type=pa.int32())
                    if own
                    else offsets
                )
                values = np.concatenate([np.asarray(r[f.name], dtype=np.int32) for r in self.rows])
                columns.append(pa.ListArray.from_arrays(offs, pa.array(values, type=pa.int32()), type=f.type))
            self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self.rows, self.buffered = [], 0

    def close(self) -> None:
        """Finish the last temporary shard (if any row was written)."""
        if self.rows or self.writer is not None:
            self._write()
            self.writer.close()

    def commit(self) -> None:
        """Move the finished split into place, or remove a stale one if this split is empty."""
        stale = self.path.with_name(self.path.name + ".old")
        if self.path.exists():
            os.replace(self.path, stale)
        if self.shards:
            os.replace(self.tmp, self.path)
        discard(stale)

    def discard(self) -> None:
        """Remove the temporary shards (a failed run)."""
        discard(self.tmp)


def discard(path: Path) -> None:
    """Remove a file or folder, if there."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _load_tokenizer(tokenizer_dir: str | Path):
    from transformers import AutoTokenizer

    if not Path(tokenizer_dir, "tokenizer.json").is_file():
        raise UserError(f"{tokenizer_dir}: no tokenizer.json; expected a model folder with its tokenizer.")
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def prepare(
    cfg: DatasetConfig,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    progress: Callable[[Accounting], None] | None = None,
) -> dict:
    """Run the whole pipeline and write the dataset to `out_dir`.

    Args:
        progress: called with the running counts (rows in, dropped by reason)
            after each batch of rows, and once more at the end.

    Returns:
        The manifest (also written as manifest.json).

    Raises:
        DataValidationError: unreadable sources, bad rows with on_error="fail",
            or nothing left to train on.
        UserError: no tokenizer in `tokenizer_dir`.
    """
    with bounded_allocators():  # see data.memory: flat memory however long the input
        return _prepare(cfg, tokenizer_dir, out_dir, progress)


def _prepare(
    cfg: DatasetConfig,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    progress: Callable[[Accounting], None] | None = None,
) -> dict:
    tokenizer = _load_tokenizer(tokenizer_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers = {s: SplitWriter(out / f, cfg.packing.enabled, cfg.shard_tokens) for s, f in SPLIT_FILES.items()}
    packers = {s: Packer(cfg.pack_length, cfg.packing.open_bins) for s in SPLIT_FILES}
    examples = Counter()
    log_path = out / "dropped.jsonl.partial"
    try:
        with log_path.open("w", encoding="utf-8") as log:
            acc = Accounting(log=log, on_batch=progress)
            try:
                for split, tokens in processed_rows(cfg, tokenizer, acc, tokenizer_dir, spill_dir=out):
                    examples[split] += 1
                    rows = (
                        packers[split].add(tokens["input_ids"], tokens["labels"])
                        if cfg.packing.enabled
                        else [tokens]
                    )
                    for row in rows:
                        writers[split].add(row)
                for split, packer in packers.items():
                    for row in packer.flush():
                        writers[split].add(row)
            finally:
                for w in writers.values():
                    w.close()
        if progress is not None:
            progress(acc)
        if cfg.on_error == "fail":
            acc.raise_if_invalid(cfg.path)
        if not examples["train"]:
            raise DataValidationError(
                f"{cfg.path}: no valid example left to train on "
                f"(dropped: {dict(acc.dropped) or 'none'}; rows in: {acc.rows_in})."
            )
    except BaseException:
        log_path.unlink(missing_ok=True)
        for w in writers.values():
            w.discard()
        raise
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # never an old manifest beside new files
    for w in writers.values():
        w.commit()
    os.replace(log_path, out / "dropped.jsonl")
    manifest = build_manifest(cfg, acc, writers, examples, tokenizer_dir)
    manifest["chat_template"] = template_report(acc.template, tokenizer, tokenizer_dir, cfg.template_kwargs)
    for warning in manifest["chat_template"].get("warnings", []):
        logger.warning("%s: %s", cfg.name, warning)
    write_manifest(manifest, out)
    return manifest


def template_report(
    notes: Counter, tokenizer, tokenizer_dir: str | Path, template_kwargs: dict | None = None
) -> dict:
    """How the chat template labelled the dataset's conversations (`data.template_labels`):
    the turn-end tokens trained and how often, the conversations whose serving
    prompt is not a prefix of their training render, and a warning for each
    thing a server must know (a turn-end token generation does not stop at).
    Empty for a dataset with no conversation. `template_kwargs`: the variables
    the template rendered with (`DatasetConfig.template_kwargs`)."""
    from data.template_labels import (
        NOTE_CONTENT_DROPPED,
        NOTE_MISMATCH,
        NOTE_SPLIT_TOKEN,
        NOTE_TURN_END,
        turn_end_warnings,
    )

    ends = {k[len(NOTE_TURN_END) :]: n for k, n in sorted(notes.items()) if k.startswith(NOTE_TURN_END)}
    if not ends:
        return {}
    warnings = turn_end_warnings(tokenizer, tokenizer_dir, used=ends, template_kwargs=template_kwargs)
    if notes[NOTE_MISMATCH]:
        warnings.append(
            f"{notes[NOTE_MISMATCH]} conversation(s) render differently for serving than for training: "
            f"the prompt a server sends (the chat template with add_generation_prompt) is not a prefix "
            f"of the render trained on (Mistral renders the system prompt only before a last user "
            f"turn; gpt-oss drops analysis before a later answer), so the model sees those prompts "
            f"differently when served"
        )
    if notes[NOTE_SPLIT_TOKEN]:
        warnings.append(
            f"{notes[NOTE_SPLIT_TOKEN]} assistant turn(s) start inside a token of the render (the "
            f"serving prompt does not end on a token boundary); that token is not trained"
        )
    return {
        "turn_end_tokens": ends,
        NOTE_MISMATCH: notes[NOTE_MISMATCH],
        NOTE_CONTENT_DROPPED: notes[NOTE_CONTENT_DROPPED],
        NOTE_SPLIT_TOKEN: notes[NOTE_SPLIT_TOKEN],
        "warnings": warnings,
    }


def build_manifest(
    cfg: DatasetConfig,
    acc: Accounting,
    writers: dict[str, SplitWriter],
    examples: Counter,
    tokenizer_dir: str | Path,
) -> dict:
    """The manifest of a finished run (see data.manifest for the version)."""
    splits = {
        s: {"file": SPLIT_FILES[s], "shards": w.shards, "examples": examples[s], **w.stats}
        for s, w in writers.items()
        if examples[s]
    }
    content = hashlib.sha256("".join(f"{s}:{w.hash.hexdigest()}" for s, w in writers.items()).encode())
    manifest = {
        "name": cfg.name,
        "version": "",
        "format": cfg.format,
        "source": {"path": cfg.path, "sha256": sources_sha256(acc.sources)},
        "sources": acc.sources,
        "ignored_files": acc.ignored_files,
        "rows": {
            "in": acc.rows_in,
            "out": sum(examples.values()),
            "train": examples["train"],
            "eval": examples["eval"],
            "dropped": dict(sorted(acc.dropped.items())),
        },
        "tokens": sum(w.stats["tokens"] for w in writers.values()),
        "trained_tokens": sum(w.stats["trained_tokens"] for w in writers.values()),
        "splits": splits,
        "pii": {k: acc.pii[k] for k in cfg.pii.types} if cfg.pii.enabled else {},
        "dedup_index_bytes": acc.dedup_index_bytes,
        "tokenizer_sha256": tokenizer_hash(tokenizer_dir),
        "tokenizer_path": str(tokenizer_dir),
        "max_length": cfg.max_length,
        "template_kwargs": dict(cfg.template_kwargs),  # what serving must render prompts with
        "packing": {
            "enabled": cfg.packing.enabled,
            "length": cfg.pack_length if cfg.packing.enabled else None,
        },
        "settings": cfg.model_dump(mode="json", exclude=LAYOUT_SETTINGS),
        "content_sha256": content.hexdigest(),
    }
    manifest["version"] = dataset_version(manifest)
    return manifest
