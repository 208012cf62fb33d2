"""The tools a conversation may call: a row's `tools` field, as chat templates take it.

A row (chat or ShareGPT) may list the tool definitions its conversation was held
with; the chat template renders them into the prompt (Qwen's <tools> block,
Llama 3.1's JSON in the first user turn, Mistral's [AVAILABLE_TOOLS]), in
training as a server renders them at inference. Accepted: OpenAI's shape
`[{"type": "function", "function": {name, description?, parameters?}}]`, or
LLaMA-Factory's bare `[{name, description?, parameters?}]`, either one as JSON
text too; the result is always OpenAI's shape (what vLLM hands templates).
"""

from __future__ import annotations

import json

from data.records import Problem

_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}


def tool_definitions(value: object, column: str = "tools") -> list[dict] | None | Problem:
    """A row's tool definitions in OpenAI's shape (None when there are none), or their problem."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return Problem("bad_tools", f"{column!r} holds text that is not JSON ({exc.msg})")
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        return Problem("bad_tools", f"{column!r}: expected a list of tool definitions")
    out = []
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"].strip()
            or not set(function) <= _FUNCTION_KEYS
            or not isinstance(function.get("parameters", {}), dict)
            or (function is not tool and not set(tool) <= {"type", "function"})
            or tool.get("type", "function") != "function"
        ):
            return Problem(
                "bad_tools",
                f"{column}[{i}]: expected {{type: 'function', function: {{name, description?, "
                f"parameters?}}}} or {{name, description?, parameters?}}",
            )
        out.append({"type": "function", "function": function})
    return out
