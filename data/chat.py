"""Chat datasets: read JSONL, validate every row, and tokenise with loss on the
assistant turns only.

A row is `{"messages": [{"role": ..., "content": ...}, ...]}` (OpenAI style).
Problems are reported with the file and line, never as a traceback.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from foundation import UserError

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips


class DataValidationError(UserError):
    """Rows that do not fit the format, with file:line and reason for each."""


@dataclass(frozen=True)
class RowError:
    """A dropped or invalid row: where it is, why, and a stable reason `code`.

    `line` is a 1-based line for text formats (JSONL, CSV, text) and a 0-based
    row index for Parquet and JSON arrays (`unit` says which).
    """

    file: str
    line: int
    reason: str
    code: str = ""
    unit: str = "line"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.unit == "line" else f"{self.file}: row {self.line}"
        return f"{where}: {self.reason}"


@dataclass
class ChatDataset:
    """Validated conversations plus the accounting of what was dropped."""

    path: Path
    conversations: list[list[dict[str, str]]]
    errors: list[RowError] = field(default_factory=list)
    sha256: str = ""

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        return dict(Counter(e.reason.split(":")[0] for e in self.errors))


def check_row(row: object) -> str | None:
    """The reason a parsed row is not a valid chat example, or None if it is."""
    if not isinstance(row, dict):
        return f"expected a JSON object with a 'messages' list, got {type(row).__name__}"
    unknown = set(row) - {"messages"}
    if unknown:
        return f"unknown field(s) {sorted(unknown)}: a chat row has only 'messages'"
    from data.records import check_messages

    problem = check_messages(row.get("messages"))
    return problem.message if problem else None


def read_chat_jsonl(path: str | Path, on_error: str = "fail") -> ChatDataset:
    """Read and validate a chat JSONL file.

    Args:
        path: the JSONL file.
        on_error: "fail" raises on the first bad rows (all of them listed);
            "skip" drops them and counts them in `errors`.

    Raises:
        DataValidationError: the file is missing, or has bad rows and on_error="fail".
    """
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: dataset file not found.")
    raw = path.read_bytes()
    conversations, errors = [], []
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"{path}: byte {exc.start}: not valid UTF-8 ({exc.reason}).") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(RowError(str(path), lineno, f"invalid JSON: {exc.msg} at column {exc.colno}"))
            continue
        reason = check_row(row)
        if reason:
            errors.append(RowError(str(path), lineno, reason))
        else:
            conversations.append(row["messages"])
    if errors and on_error == "fail":
        shown = "\n".join(str(e) for e in errors[:20])
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DataValidationError(f"{len(errors)} invalid row(s) in {path} "
                                  f"(set on_error: skip to drop and count them):\n{shown}{more}")
    if not conversations:
        raise DataValidationError(f"{path}: no valid conversations to train on.")
    return ChatDataset(path, conversations, errors, hashlib.sha256(raw).hexdigest())


def tokenize_conversation(tokenizer, messages: list[dict[str, str]],
                          max_length: int) -> dict[str, list[int]]:
    """Token ids and labels for one conversation, with labels only on assistant turns.

    Each turn is tokenised in the exact pieces a server sees at inference: the
    chat template's prompt (ending in the assistant header) and then the answer
    with its end marker, so training and serving agree on token boundaries.

    Returns:
        {"input_ids": [...], "labels": [...]} with IGNORE_INDEX on non-trained tokens.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        new_prompt = prompt_ids[len(input_ids):] if prompt_ids[:len(input_ids)] == input_ids else None
        if new_prompt is None:
            # Earlier turns re-tokenised differently in context: start from the full prompt.
            input_ids, labels, new_prompt = [], [], prompt_ids
        answer = message["content"] + tokenizer.eos_token + "\n"
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        # The trailing newline belongs to the template, not to what the model must say.
        trained = len(tokenizer(message["content"] + tokenizer.eos_token,
                                add_special_tokens=False)["input_ids"])
        input_ids += new_prompt + answer_ids
        labels += [IGNORE_INDEX] * len(new_prompt) + answer_ids[:trained] + \
            [IGNORE_INDEX] * (len(answer_ids) - trained)
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}
