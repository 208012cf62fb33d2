"""Record formats: raw rows to validated examples, with a reason code per bad row.

Formats (canonical field names; `columns` maps them to the source's names):

- chat: `messages`, OpenAI style [{role, content}], system/user/assistant turns;
  a JSON string in a CSV cell is accepted.
- instruction: `instruction`, optional `input`, `output`, optional `system`.
- prompt_completion: `prompt`, `completion`, optional `system`.
- text: `text` (continued pre-training; every token is trained).

Instruction and prompt/completion rows become chat conversations (user turn,
then assistant turn), so one tokeniser and one chat template serve all three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from data.readers import JsonLine, RawRow, Unparsed, parse_json_line

ROLES = ("system", "user", "assistant")
FIELDS = {  # format -> (required, optional)
    "chat": (("messages",), ()),
    "instruction": (("instruction", "output"), ("input", "system")),
    "prompt_completion": (("prompt", "completion"), ("system",)),
    "text": (("text",), ()),
}


@dataclass(frozen=True)
class Problem:
    """Why a row is not a valid example: a stable `code` to count by, and a message."""

    code: str
    message: str


@dataclass
class Example:
    """A valid example: chat `messages`, or raw `text`; with where it came from."""

    file: str
    line: int
    unit: str
    messages: list[dict[str, str]] | None = None
    text: str | None = None

    def contents(self) -> list[str]:
        """The texts a model sees, in order (message contents, or the raw text)."""
        return [m["content"] for m in self.messages] if self.messages is not None else [self.text]

    def map_text(self, fn) -> None:
        """Replace every content string `s` by `fn(s)` in place."""
        if self.messages is not None:
            self.messages = [{"role": m["role"], "content": fn(m["content"])} for m in self.messages]
        else:
            self.text = fn(self.text)


def check_messages(messages: object) -> Problem | None:
    """The problem with a chat `messages` value, or None if it is a valid conversation."""
    if not isinstance(messages, list) or not messages:
        return Problem("missing_messages", "missing or empty 'messages': expected a list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            return Problem("bad_message", f"messages[{i}]: expected exactly the keys 'role' and 'content'")
        if m["role"] not in ROLES:
            return Problem("bad_role", f"messages[{i}].role: {m['role']!r} is not one of {list(ROLES)}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            return Problem("empty_text", f"messages[{i}].content: expected non-empty text")
    if not any(m["role"] == "assistant" for m in messages):
        return Problem("no_assistant_turn", "no assistant turn: expected at least one message with role "
                                            "'assistant' to train on")
    if messages[-1]["role"] != "assistant":
        return Problem("last_turn_not_assistant", f"messages[{len(messages) - 1}]: the conversation must end "
                                                  f"with an assistant turn")
    return None


def _fields(value: object, fmt: str, columns: dict[str, str]) -> dict | Problem:
    """Canonical field -> value for one row, or the problem with its shape."""
    if isinstance(value, JsonLine):
        value = parse_json_line(value.text)
    if isinstance(value, Unparsed):
        return Problem(value.code, value.message)
    if not isinstance(value, dict):
        return Problem("not_an_object", f"expected an object with the {fmt} fields, got {type(value).__name__}")
    required, optional = FIELDS[fmt]
    source = {columns.get(f, f): f for f in required + optional}
    unknown = sorted(k for k in value if k not in source)
    if unknown:
        expected = [columns.get(f, f) for f in required + optional]
        return Problem("unknown_field", f"unknown field(s) {unknown}: a {fmt} row has only {expected} "
                                        f"(map columns with `columns:`)")
    fields = {source[k]: v for k, v in value.items() if v is not None}
    for f in required:
        if f not in fields:
            return Problem("missing_field", f"missing field {columns.get(f, f)!r} ({fmt} format)")
    return fields


def _text(fields: dict, name: str, columns: dict[str, str]) -> str | Problem:
    v = fields[name]
    if not isinstance(v, str):
        return Problem("wrong_type", f"{columns.get(name, name)!r}: expected text, got {type(v).__name__}")
    if not v.strip():
        return Problem("empty_text", f"{columns.get(name, name)!r}: expected non-empty text")
    return v


def to_example(row: RawRow, fmt: str, columns: dict[str, str] | None = None) -> Example | Problem:
    """Validate one raw row in format `fmt` and turn it into an Example.

    Returns:
        The Example, or the Problem that makes the row invalid.
    """
    columns = columns or {}
    fields = _fields(row.value, fmt, columns)
    if isinstance(fields, Problem):
        return fields
    if fmt == "chat":
        messages = fields["messages"]
        if isinstance(messages, str):  # a CSV cell or a text column holding JSON
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError as exc:
                return Problem("invalid_json", f"'messages' holds text that is not JSON ({exc.msg})")
        problem = check_messages(messages)
        return problem or Example(row.file, row.line, row.unit, messages=messages)
    texts = {}
    for name in FIELDS[fmt][0] + FIELDS[fmt][1]:
        if name in fields:
            texts[name] = _text(fields, name, columns)
            if isinstance(texts[name], Problem):
                return texts[name]
    if fmt == "text":
        return Example(row.file, row.line, row.unit, text=texts["text"])
    if fmt == "instruction":
        user = texts["instruction"] + (f"\n\n{texts['input']}" if "input" in texts else "")
        answer = texts["output"]
    else:
        user, answer = texts["prompt"], texts["completion"]
    system = [{"role": "system", "content": texts["system"]}] if "system" in texts else []
    return Example(row.file, row.line, row.unit, messages=system + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}])
