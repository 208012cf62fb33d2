"""Internal files to training-ready data: readers (JSONL, JSON, Parquet, CSV in
UTF-8 or CP932, text folders), validation with row-level errors, normalisation,
PII masking, dedup, a stable train/eval split, chat templates, tokenising with
loss on assistant turns, packing, and dataset manifests."""

from data.chat import ChatDataset, DataValidationError, RowError, read_chat_jsonl, tokenize_conversation
from data.config import DatasetConfig, DedupConfig, NormalizeConfig, PackingConfig, PiiConfig, SplitConfig
from data.dedup import Deduplicator
from data.manifest import read_manifest, tokenizer_hash
from data.normalize import normalize_text
from data.packing import Packer
from data.pii import PII_TYPES, mask_pii
from data.pipeline import validate_rows
from data.prepare import prepare
from data.preview import render_example
from data.split import split_of
from data.template_labels import turn_end_warnings

__all__ = [
    "PII_TYPES",
    "ChatDataset",
    "DataValidationError",
    "DatasetConfig",
    "DedupConfig",
    "Deduplicator",
    "NormalizeConfig",
    "Packer",
    "PackingConfig",
    "PiiConfig",
    "RowError",
    "SplitConfig",
    "mask_pii",
    "normalize_text",
    "prepare",
    "read_chat_jsonl",
    "read_manifest",
    "render_example",
    "split_of",
    "tokenize_conversation",
    "tokenizer_hash",
    "turn_end_warnings",
    "validate_rows",
]
