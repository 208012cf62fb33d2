"""Record formats: raw rows to validated examples, with a reason code per bad row.

Formats (canonical field names; `columns` maps them to the source's names):

- chat: `messages`, OpenAI style [{role, content}], system/user/assistant turns;
  a JSON string in a CSV cell is accepted. Tool use in OpenAI's shape too: an
  assistant turn with `tool_calls` ([{id, type: "function", function: {name,
  arguments}}], its content may then be empty) and `tool` turns answering them
  (`tool_call_id`, `content`); an assistant turn may carry its reasoning as
  `reasoning_content` (Qwen3, vLLM) or `thinking` (gpt-oss), as its template reads it.
  Arguments given as JSON text become objects (what templates and vLLM expect).
  Optional `tools`: the tool definitions the chat template renders into the
  prompt (`data.tool_definitions`).
- sharegpt: `conversations`, ShareGPT's [{from, value}] turns (human, gpt, system,
  function_call, observation; or {role, content}), optional `system` and `tools`;
  see `data.sharegpt`.
- alpaca (or instruction, the same fields): `instruction`, optional `input` (may be
  empty), `output`, optional `system` and `history` ([[question, answer], ...]);
  see `data.alpaca`.
- prompt_completion: `prompt`, `completion`, optional `system`.
- text: `text` (continued pre-training; every token is trained).

ShareGPT, Alpaca and prompt/completion rows become chat conversations (OpenAI's
shape), so one tokeniser and one chat template serve them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from data.readers import JsonLine, RawRow, Unparsed, parse_json_line

ROLES = ("system", "user", "assistant", "tool")
REASONING_KEYS = ("reasoning_content", "thinking")  # an assistant turn's reasoning, per template
_KEYS = {
    "system": {"role", "content"},
    "user": {"role", "content"},
    "assistant": {"role", "content", "tool_calls", *REASONING_KEYS},
    "tool": {"role", "content", "tool_call_id", "name"},
}
FIELDS = {  # format -> (required, optional)
    "chat": (("messages",), ("tools",)),
    "sharegpt": (("conversations",), ("system", "tools")),
    "alpaca": (("instruction", "output"), ("input", "system", "history")),
    "instruction": (("instruction", "output"), ("input", "system", "history")),
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
    """A valid example: chat `messages` (and the `tools` its template renders, in
    OpenAI's shape), or raw `text`; with where it came from."""

    file: str
    line: int
    unit: str
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    tools: list[dict] | None = None

    def contents(self) -> list[str]:
        """The texts a model sees, in order (message contents with their reasoning
        and tool calls, or the raw text)."""
        if self.messages is None:
            return [self.text]
        out = []
        for m in self.messages:
            out.append(m["content"])
            if len(m) > 2:
                out += [m[k] for k in REASONING_KEYS if k in m]
                out += [
                    c["function"]["name"] + json.dumps(c["function"]["arguments"], ensure_ascii=False)
                    for c in m.get("tool_calls", ())
                ]
        return out

    def map_text(self, fn) -> None:
        """Replace every text `s` a model sees (contents, reasoning, the string
        values inside tool-call arguments) by `fn(s)` in place."""
        if self.messages is not None:
            self.messages = [
                {"role": m["role"], "content": fn(m["content"])} if len(m) == 2 else _map_message(m, fn)
                for m in self.messages
            ]
        else:
            self.text = fn(self.text)


def _map_message(m: dict, fn) -> dict:
    out = dict(m)
    out["content"] = fn(m["content"]) if m["content"] else m["content"]
    for k in REASONING_KEYS:
        if k in m:
            out[k] = fn(m[k])
    if "tool_calls" in m:
        out["tool_calls"] = [
            {**c, "function": {**c["function"], "arguments": _map_leaves(c["function"]["arguments"], fn)}}
            for c in m["tool_calls"]
        ]
    return out


def _map_leaves(value, fn):
    """`value` (JSON) with `fn` applied to every string inside it (not to object keys)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_leaves(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_leaves(v, fn) for v in value]
    return value


def check_messages(messages: object) -> Problem | None:
    """The problem with a chat `messages` value, or None if it is a valid conversation.

    Plain turns are {role, content} with non-empty text. An assistant turn may
    call tools (`tool_calls`, OpenAI's shape; its content may then be empty or
    missing) and carry reasoning (`reasoning_content` or `thinking`, text); a
    `tool` turn answers one of the calls of the assistant turn before it
    (`tool_call_id`; `content` text, possibly empty; optional `name`).
    """
    if not isinstance(messages, list) or not messages:
        return Problem(
            "missing_messages", "missing or empty 'messages': expected a list of {role, content} objects"
        )
    calls: set[str] | None = None  # ids of the tool calls that tool turns may answer now
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            return Problem("bad_message", f"messages[{i}]: expected an object with 'role' and 'content'")
        role = m["role"]
        if role not in ROLES:
            return Problem("bad_role", f"messages[{i}].role: {role!r} is not one of {list(ROLES)}")
        if len(m) == 2 and "content" in m and role != "tool":  # the usual turn: only the text to check
            if not isinstance(m["content"], str) or not m["content"].strip():
                return Problem("empty_text", f"messages[{i}].content: expected non-empty text")
            calls = None if role != "system" else calls
            continue
        unknown = set(m) - _KEYS[role]
        if unknown or ("content" not in m and not (role == "assistant" and "tool_calls" in m)):
            return Problem(
                "bad_message",
                f"messages[{i}]: a {role} turn has the keys {sorted(_KEYS[role])}"
                + (f", not {sorted(unknown)}" if unknown else "; 'content' is missing"),
            )
        problem = _check_tool_turn(i, m, calls) if role == "tool" else _check_assistant_turn(i, m)
        if isinstance(problem, Problem):
            return problem
        if role == "assistant":
            calls = problem
    if not any(m["role"] == "assistant" for m in messages):
        return Problem(
            "no_assistant_turn",
            "no assistant turn: expected at least one message with role 'assistant' to train on",
        )
    if messages[-1]["role"] != "assistant":
        return Problem(
            "last_turn_not_assistant",
            f"messages[{len(messages) - 1}]: the conversation must end with an assistant turn",
        )
    return None


def _check_assistant_turn(i: int, m: dict) -> Problem | set[str] | None:
    """The problem with an assistant turn that has more than role and content, or
    the ids of its tool calls (None when it calls no tool)."""
    for k in REASONING_KEYS:
        if k in m and not isinstance(m[k], str):
            return Problem("wrong_type", f"messages[{i}].{k}: expected text, got {type(m[k]).__name__}")
    content = m.get("content")
    if "tool_calls" not in m:
        if not isinstance(content, str) or not content.strip():
            return Problem("empty_text", f"messages[{i}].content: expected non-empty text")
        return None
    if content is not None and not isinstance(content, str):
        return Problem(
            "wrong_type",
            f"messages[{i}].content: expected text (or null beside tool_calls), got {type(content).__name__}",
        )
    calls = m["tool_calls"]
    if not isinstance(calls, list) or not calls:
        return Problem(
            "bad_tool_call",
            f"messages[{i}].tool_calls: expected a non-empty list of "
            f"{{id, type: 'function', function: {{name, arguments}}}} objects",
        )
    ids = set()
    for j, c in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        if (
            not isinstance(c, dict)
            or not set(c) <= {"id", "type", "function"}
            or not isinstance(c.get("function"), dict)
        ):
            return Problem(
                "bad_tool_call", f"{where}: expected {{id, type: 'function', function: {{name, arguments}}}}"
            )
        if c.get("type", "function") != "function":
            return Problem(
                "bad_tool_call", f"{where}.type: {c['type']!r}; only 'function' calls are supported"
            )
        if not isinstance(c.get("id"), str) or not c["id"]:
            return Problem(
                "bad_tool_call",
                f"{where}.id: expected the call's id (text), which its tool result names as tool_call_id",
            )
        f = c["function"]
        if not set(f) <= {"name", "arguments"} or not isinstance(f.get("name"), str) or not f["name"].strip():
            return Problem(
                "bad_tool_call", f"{where}.function: expected {{name, arguments}} with a non-empty name"
            )
        args = f.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as exc:
                return Problem("bad_tool_call", f"{where}.function.arguments: not JSON ({exc.msg})")
        if not isinstance(args, dict):
            return Problem(
                "bad_tool_call",
                f"{where}.function.arguments: expected a JSON object "
                f"(or its JSON text), got {type(args).__name__}",
            )
        ids.add(c["id"])
    return ids


def _check_tool_turn(i: int, m: dict, calls: set[str] | None) -> Problem | None:
    if not isinstance(m.get("content"), str):
        return Problem("wrong_type", f"messages[{i}].content: a tool result is text")
    if calls is None:
        return Problem(
            "unanswered_tool_result",
            f"messages[{i}]: a tool result must follow an assistant turn "
            f"with tool_calls (or another tool result)",
        )
    if m.get("tool_call_id") not in calls:
        return Problem(
            "unanswered_tool_result",
            f"messages[{i}].tool_call_id: {m.get('tool_call_id')!r} is not "
            f"the id of a tool call of the assistant turn before it "
            f"({sorted(calls)})",
        )
    if "name" in m and not isinstance(m["name"], str):
        return Problem("wrong_type", f"messages[{i}].name: expected text")
    return None


def canonical_messages(messages: list[dict]) -> list[dict]:
    """A valid conversation (`check_messages`) as chat templates take it: tool-call
    arguments as objects (not JSON text; vLLM hands templates objects too), and
    the content of an assistant turn that only calls tools as "" (not missing or
    null). Plain turns are passed through as they are."""
    if all(len(m) == 2 for m in messages):
        return messages
    out = []
    for m in messages:
        if "tool_calls" in m:
            m = {
                **m,
                "content": m.get("content") or "",
                "tool_calls": [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": _arguments(c["function"].get("arguments")),
                        },
                    }
                    for c in m["tool_calls"]
                ],
            }
        out.append(m)
    return out


def _arguments(args) -> dict:
    return json.loads(args) if isinstance(args, str) else args


def _fields(value: object, fmt: str, columns: dict[str, str]) -> dict | Problem:
    """Canonical field -> value for one row, or the problem with its shape."""
    if isinstance(value, JsonLine):
        value = parse_json_line(value.text)
    if isinstance(value, Unparsed):
        return Problem(value.code, value.message)
    if not isinstance(value, dict):
        return Problem(
            "not_an_object", f"expected an object with the {fmt} fields, got {type(value).__name__}"
        )
    required, optional = FIELDS[fmt]
    source = {columns.get(f, f): f for f in required + optional}
    unknown = sorted(k for k in value if k not in source)
    if unknown:
        expected = [columns.get(f, f) for f in required + optional]
        return Problem(
            "unknown_field",
            f"unknown field(s) {unknown}: a {fmt} row has only {expected} (map columns with `columns:`)"
            + _format_hint(value, fmt),
        )
    fields = {source[k]: v for k, v in value.items() if v is not None}
    for f in required:
        if f not in fields:
            return Problem("missing_field", f"missing field {columns.get(f, f)!r} ({fmt} format)")
    return fields


def _format_hint(value: dict, fmt: str) -> str:
    """'; it looks like a ... row' when the row has every required field of another format."""
    for other, (required, _) in FIELDS.items():
        if other not in (fmt, "instruction") and all(f in value for f in required):
            return f"; it has the fields of a {other} row (format: {other})"
    return ""


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
    if fmt in ("chat", "sharegpt"):
        messages = _conversation(fields, fmt, columns)
        if isinstance(messages, Problem):
            return messages
        problem = check_messages(messages)
        if problem:
            return problem
        from data.tool_definitions import tool_definitions

        tools = tool_definitions(fields.get("tools"), columns.get("tools", "tools"))
        if isinstance(tools, Problem):
            return tools
        return Example(row.file, row.line, row.unit, messages=canonical_messages(messages), tools=tools)
    if fmt in ("alpaca", "instruction"):
        from data.alpaca import alpaca_messages

        messages = alpaca_messages(fields, columns)
        return messages if isinstance(messages, Problem) else Example(row.file, row.line, row.unit, messages)
    texts = {}
    for name in FIELDS[fmt][0] + FIELDS[fmt][1]:
        if name in fields:
            texts[name] = _text(fields, name, columns)
            if isinstance(texts[name], Problem):
                return texts[name]
    if fmt == "text":
        return Example(row.file, row.line, row.unit, text=texts["text"])
    system = [{"role": "system", "content": texts["system"]}] if "system" in texts else []
    return Example(
        row.file,
        row.line,
        row.unit,
        messages=system
        + [
            {"role": "user", "content": texts["prompt"]},
            {"role": "assistant", "content": texts["completion"]},
        ],
    )


def _conversation(fields: dict, fmt: str, columns: dict[str, str]) -> list | Problem:
    """The messages of a chat or ShareGPT row (a JSON string in a CSV cell or text
    column is parsed), not yet checked."""
    name = "messages" if fmt == "chat" else "conversations"
    value = fields[name]
    if isinstance(value, str):  # a CSV cell or a text column holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return Problem(
                "invalid_json", f"{columns.get(name, name)!r} holds text that is not JSON ({exc.msg})"
            )
    if fmt == "chat":
        return value
    from data.sharegpt import sharegpt_messages

    system = fields.get("system")
    if system is not None and not isinstance(system, str):
        return Problem("wrong_type", f"{columns.get('system', 'system')!r}: expected text")
    return sharegpt_messages(value, system if system and system.strip() else None)
