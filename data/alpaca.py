"""Alpaca (instruction) rows as OpenAI-style conversations.

A row is `{instruction, input?, output, system?, history?}` (Stanford Alpaca's
fields, with LLaMA-Factory's `system` and `history`):

    system               -> a system turn (left out when missing or empty)
    history              -> [[question, answer], ...]: earlier user/assistant turns, in order
    instruction + input  -> the user turn (input, when not empty, after a blank line)
    output               -> the assistant turn trained on

`input` and `system` may be missing, null or empty (most Alpaca files have
`"input": ""`); `instruction` and `output` must be text.
"""

from __future__ import annotations

from data.records import Problem

OPTIONAL_TEXTS = ("input", "system")


def alpaca_messages(fields: dict, columns: dict[str, str]) -> list[dict] | Problem:
    """The conversation of one row's canonical fields (see `data.records`), or its problem."""
    texts = {}
    for name in ("instruction", "output", *OPTIONAL_TEXTS):
        value = fields.get(name)
        if value is None or (name in OPTIONAL_TEXTS and value == ""):
            continue
        column = columns.get(name, name)
        if not isinstance(value, str):
            return Problem("wrong_type", f"{column!r}: expected text, got {type(value).__name__}")
        if not value.strip() and name not in OPTIONAL_TEXTS:
            return Problem("empty_text", f"{column!r}: expected non-empty text")
        if value.strip():
            texts[name] = value
    history = _history(fields.get("history"), columns.get("history", "history"))
    if isinstance(history, Problem):
        return history
    user = texts["instruction"] + (f"\n\n{texts['input']}" if "input" in texts else "")
    system = [{"role": "system", "content": texts["system"]}] if "system" in texts else []
    return (
        system
        + history
        + [{"role": "user", "content": user}, {"role": "assistant", "content": texts["output"]}]
    )


def _history(value: object, column: str) -> list[dict] | Problem:
    """The turns of a `history` value: [[question, answer], ...] (missing or null: none)."""
    if value is None:
        return []
    if not isinstance(value, list):
        return Problem(
            "bad_history",
            f"{column!r}: expected a list of [question, answer] pairs, got {type(value).__name__}",
        )
    turns = []
    for i, pair in enumerate(value):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(t, str) and t.strip() for t in pair)
        ):
            return Problem("bad_history", f"{column}[{i}]: expected [question, answer], two non-empty texts")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns
