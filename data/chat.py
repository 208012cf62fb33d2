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
        raise DataValidationError(
            f"{len(errors)} invalid row(s) in {path} "
            f"(set on_error: skip to drop and count them):\n{shown}{more}"
        )
    if not conversations:
        raise DataValidationError(f"{path}: no valid conversations to train on.")
    return ChatDataset(path, conversations, errors, hashlib.sha256(raw).hexdigest())


def tokenize_conversation(
    tokenizer,
    messages: list[dict],
    max_length: int,
    template_kwargs: dict | None = None,
    tools: list[dict] | None = None,
) -> dict[str, list[int]]:
    """Token ids and labels for one conversation, with labels only on assistant turns.

    The simple reference for `data.tokenization.tokenize_batch` (the same ids
    and labels; tests compare the two): the conversation rendered once by its
    chat template and tokenised as a whole, so training sees exactly the
    template's text; trained are the tokens that start inside an assistant
    turn's span, from where its serving prompt ends through its turn-end token
    (`data.template_labels.assistant_spans`). `tools`: tool definitions (OpenAI's
    shape) the template renders into the prompt, as a server does.

    Returns:
        {"input_ids": [...], "labels": [...]} with IGNORE_INDEX on non-trained tokens.

    Raises:
        DataValidationError: the template refuses the conversation, or one of
            its assistant turns is not in the render.
    """
    from data.records import canonical_messages
    from data.template_labels import SpanError, assistant_spans, template_profile

    messages = canonical_messages(messages)
    kwargs = template_kwargs or {}

    def render(msgs, prompt):
        return tokenizer.apply_chat_template(
            msgs, tools=tools, tokenize=False, add_generation_prompt=prompt, **kwargs
        )

    try:
        full = render(messages, False)
        prompts = [render(messages[:i], True) for i, m in enumerate(messages) if m["role"] == "assistant"]
        spans = assistant_spans(full, prompts, messages, template_profile(tokenizer, template_kwargs=kwargs))
    except SpanError as exc:
        raise DataValidationError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001  (the template's own error, as a row gets it)
        raise DataValidationError(f"the chat template refused the conversation: {exc}") from exc
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = enc["input_ids"]
    labels = [
        t if any(a <= start < b for a, b in spans) else IGNORE_INDEX
        for t, (start, _) in zip(input_ids, enc["offset_mapping"])
    ]
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}
