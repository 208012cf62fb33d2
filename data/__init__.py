"""Internal files to training-ready data: validation with row-level errors,
chat templates, tokenising with loss on assistant turns, dataset manifests."""

from data.chat import ChatDataset, DataValidationError, RowError, read_chat_jsonl, tokenize_conversation
from data.prepare import DatasetConfig, prepare, tokenizer_hash

__all__ = ["ChatDataset", "DataValidationError", "DatasetConfig", "RowError",
           "prepare", "read_chat_jsonl", "tokenize_conversation", "tokenizer_hash"]
