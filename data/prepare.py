"""Turn a dataset config into a tokenised Parquet file plus a manifest.

The manifest is what training runs record as their input: the source file's
SHA-256, rows in / out / dropped by reason, tokens, and the tokenizer's hash,
and a content hash over all of it that names this version of the dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from cluster.config_base import StrictConfig, UserError
from data.chat import IGNORE_INDEX, read_chat_jsonl, tokenize_conversation

PACKAGE_SAMPLES = Path(__file__).parent / "samples"


class DatasetConfig(StrictConfig):
    """A chat dataset to validate and tokenise for training."""

    name: str = Field(description="Dataset name, used in the manifest and in MLflow.", pattern=r"^[A-Za-z0-9_.-]+$")
    path: str = Field(description="JSONL file of chat rows. Relative paths resolve against the config file's folder; "
                                  "'samples:FILE' names a sample bundled with Sekisho.")
    format: Literal["chat"] = Field("chat", description="Record format; 'chat' rows are {messages: [{role, content}]}.")
    on_error: Literal["fail", "skip"] = Field("fail", description="On an invalid row: stop with every bad row listed, or drop and count it.")
    max_length: int = Field(256, ge=16, description="Longest tokenised example; longer ones are truncated.")

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info) -> str:
        if value.startswith("samples:"):
            return str(PACKAGE_SAMPLES / value.removeprefix("samples:"))
        base = (info.context or {}).get("config_dir")
        return str(Path(base, value)) if base and not Path(value).is_absolute() else value


def tokenizer_hash(model_dir: str | Path) -> str:
    """SHA-256 over the tokenizer files that decide token ids."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        p = Path(model_dir, name)
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def prepare(cfg: DatasetConfig, tokenizer_dir: str | Path, out_dir: str | Path) -> dict:
    """Validate, tokenise and write `tokens.parquet` and `manifest.json` to `out_dir`.

    Returns:
        The manifest.

    Raises:
        DataValidationError: bad rows with on_error="fail", or nothing left to train on.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    dataset = read_chat_jsonl(cfg.path, on_error=cfg.on_error)
    if not Path(tokenizer_dir, "tokenizer.json").is_file():
        raise UserError(f"{tokenizer_dir}: no tokenizer.json; expected a model folder with its tokenizer.")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rows = [tokenize_conversation(tokenizer, conv, cfg.max_length) for conv in dataset.conversations]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"input_ids": [r["input_ids"] for r in rows],
                             "labels": [r["labels"] for r in rows]}), out / "tokens.parquet")
    manifest = {
        "name": cfg.name,
        "source": {"path": str(dataset.path), "sha256": dataset.sha256},
        "rows": {"in": len(dataset.conversations) + len(dataset.errors),
                 "out": len(rows), "dropped": dataset.dropped_by_reason},
        "tokens": sum(len(r["input_ids"]) for r in rows),
        "trained_tokens": sum(sum(1 for t in r["labels"] if t != IGNORE_INDEX) for r in rows),
        "tokenizer_sha256": tokenizer_hash(tokenizer_dir),
        "max_length": cfg.max_length,
    }
    manifest["version"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest
