"""The dataset config: one strict model per pipeline stage, loaded from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from data.pii import PII_TYPES
from data.readers import ENCODINGS
from data.records import FIELDS
from foundation import StrictConfig

PACKAGE_SAMPLES = Path(__file__).parent / "samples"
PiiType = Literal["EMAIL", "IP_ADDRESS", "CREDIT_CARD", "MY_NUMBER", "PHONE", "POSTAL_CODE"]


class NormalizeConfig(StrictConfig):
    """Text normalisation applied to every content string before masking."""

    nfkc: bool = Field(
        True,
        description="Apply Unicode NFKC (full-width ASCII to half-width, half-width katakana to full-width).",
    )
    whitespace: Literal["keep", "trim", "collapse"] = Field(
        "trim",
        description="keep; trim (CRLF to LF, strip ends and trailing spaces, at most one blank line); "
        "collapse (trim, and runs of spaces/tabs become one space; not for code).",
    )


class PiiConfig(StrictConfig):
    """Personal-information masking (on by default)."""

    enabled: bool = Field(
        True, description="Replace personal information by typed placeholders such as <PHONE>."
    )
    types: list[PiiType] = Field(
        list(PII_TYPES), min_length=1, description=f"The PII types to mask; any of {list(PII_TYPES)}."
    )


class DedupConfig(StrictConfig):
    """Duplicate removal; the first occurrence in read order is kept."""

    exact: bool = Field(True, description="Drop rows whose content equals an earlier row's.")
    near: bool = Field(True, description="Drop near-duplicates (MinHash LSH over character n-grams).")
    threshold: float = Field(
        0.8,
        gt=0.3,
        lt=1.0,
        description="Jaccard similarity of n-gram sets at which rows count as near-duplicates.",
    )
    num_perm: int = Field(
        64, ge=16, le=512, description="MinHash permutations (more: sharper threshold, slower)."
    )
    shingle: int = Field(5, ge=2, le=20, description="Characters per n-gram.")
    spill: bool = Field(
        False,
        description="Keep the dedup index (50 bytes a row) in files in the output "
        "folder, read through the page cache, for inputs whose index would not "
        "fit in memory (about 20% slower); false: in memory.",
    )


class SplitConfig(StrictConfig):
    """Deterministic train/eval split by content hash: a row keeps its side when rows are appended."""

    eval_fraction: float = Field(
        0.0, ge=0.0, le=0.5, description="Share of rows for eval (0: everything trains)."
    )
    seed: int = Field(0, ge=0, description="Seed mixed into the hash; another seed gives another split.")


class PackingConfig(StrictConfig):
    """Packing several examples into one fixed-length sequence (see data.packing)."""

    enabled: bool = Field(False, description="Pack examples into sequences of `length` tokens.")
    length: int | None = Field(
        None, ge=16, description="Tokens per packed sequence; null means the dataset's max_length."
    )
    open_bins: int = Field(
        8, ge=1, le=1024, description="Sequences kept open for first-fit filling (memory vs fill)."
    )


class DatasetConfig(StrictConfig):
    """A dataset to read, validate, normalise, mask, deduplicate, split, tokenise and pack."""

    name: str = Field(
        description="Dataset name, used in the manifest and in MLflow.", pattern=r"^[A-Za-z0-9_.-]+$"
    )
    path: str = Field(
        description="A file (JSONL, JSON, Parquet, CSV/TSV, TXT/MD) or a folder of them. Relative paths "
        "resolve against the config file's folder; 'samples:FILE' names a sample bundled "
        "with Sekisho."
    )
    format: Literal["chat", "sharegpt", "alpaca", "instruction", "prompt_completion", "text"] = Field(
        "chat",
        description="Rows: chat {messages} (OpenAI's, tool calls too); sharegpt {conversations: [{from, "
        "value}], system?}; alpaca or instruction {instruction, input?, output, system?, history?}; "
        "prompt_completion; text.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Format field -> column name in the source, e.g. {instruction: 質問, output: 回答}, "
        "or {conversations: conversation} for a ShareGPT file whose turns are under 'conversation'.",
    )
    template_kwargs: dict[str, bool | int | float | str] = Field(
        default_factory=dict,
        description="Passed to the model's chat template at tokenization, e.g. {enable_thinking: false} "
        "for Qwen3; recorded in the prepared dataset's manifest so training and serving can see it.",
    )
    encoding: Literal[ENCODINGS] = Field(
        "auto",
        description="Text encoding; auto: UTF-8 (with or without BOM) or CP932/Shift_JIS, decided per file.",
    )
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="On an invalid row: stop with every bad row listed, or drop and count it."
    )
    max_length: int = Field(256, ge=16, description="Longest tokenised example.")
    overlength: Literal["truncate", "drop"] = Field(
        "truncate", description="Examples longer than max_length: cut at max_length, or drop and count."
    )
    min_tokens: int = Field(1, ge=1, description="Examples with fewer tokens are dropped and counted.")
    executor: Literal["local", "ray"] = Field(
        "local",
        description="local: this process plus `workers` forked "
        "processes; ray: a Ray Data pipeline on the connected Ray cluster "
        "with `workers` actors (the sources must be readable on every node).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes for the per-row stages (validate, normalise, mask, "
        "hash, tokenise); 1 runs them in this process (executor: local).",
    )
    shard_tokens: int = Field(
        1 << 26,
        ge=64,
        description="Tokens per Parquet shard: each split is a folder "
        "(tokens.parquet/part-00000.parquet, ...) with a new "
        "shard after this many tokens (64 Mi: ~256 MiB of ids "
        "and labels before compression).",
    )
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig, description="Text normalisation.")
    pii: PiiConfig = Field(default_factory=PiiConfig, description="PII masking.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Duplicate removal.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Train/eval split.")
    packing: PackingConfig = Field(
        default_factory=PackingConfig, description="Packing into fixed-length sequences."
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info) -> str:
        if value.startswith("samples:"):
            return str(PACKAGE_SAMPLES / value.removeprefix("samples:"))
        base = (info.context or {}).get("config_dir")
        return str(Path(base, value)) if base and not Path(value).is_absolute() else value

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        known = FIELDS[self.format][0] + FIELDS[self.format][1]
        unknown = sorted(set(self.columns) - set(known))
        if unknown:
            raise ValueError(
                f"columns: {unknown} are not fields of the {self.format!r} format "
                f"(expected some of {list(known)})"
            )
        if self.packing.enabled and self.packing.length is not None and self.packing.length < self.max_length:
            raise ValueError(
                f"packing.length ({self.packing.length}) must be at least max_length "
                f"({self.max_length}), or an example would not fit one sequence"
            )
        return self

    @property
    def pack_length(self) -> int:
        """Tokens per packed sequence."""
        return self.packing.length or self.max_length
