"""ShareGPT rows as OpenAI-style conversations.

A ShareGPT row (as LLaMA-Factory and Axolotl read it) holds its turns under
`conversations`: `{"from": ..., "value": ...}` objects, or `{"role": ...,
"content": ...}` (the same roles either way), with optional `system` and `tools`
(`data.tool_definitions`) fields:

    human, user              -> user
    gpt, assistant           -> assistant
    system                   -> system (first turn only; or the `system` field)
    function_call            -> an assistant turn calling tools; its value is the JSON
                                of one call {name, arguments} or of a list of them
    observation, tool        -> a tool result, answering the call(s) just before it in order

As LLaMA-Factory requires, user-side turns (human, observation) and assistant-side
turns (gpt, function_call) alternate, starting with a user-side turn and ending
with an assistant-side one; several results may follow a function_call that made
several calls. Every refusal names the turn (`conversations[i]`) and carries a
reason code that `sekisho data prepare` counts rows by.
"""

from __future__ import annotations

import json

from data.records import Problem

ROLE_OF = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
}
_USER_SIDE = ("user", "tool")
_KEY_PAIRS = (("from", "value"), ("role", "content"))


def sharegpt_messages(conversations: object, system: str | None = None) -> list[dict] | Problem:
    """The OpenAI-style messages of a ShareGPT `conversations` list (and the row's
    `system` text, if any), or the problem with them.

    The result still goes through `data.records.check_messages`; the checks here
    are the ones a ShareGPT user can act on in ShareGPT's own terms.
    """
    if not isinstance(conversations, list) or not conversations:
        return Problem(
            "missing_messages",
            "'conversations': expected a non-empty list of {from, value} turns",
        )
    turns = []
    for i, turn in enumerate(conversations):
        role = _turn(i, turn)
        if isinstance(role, Problem):
            return role
        turns.append(role)
    if turns[0][0] == "system":
        if system is not None:
            return Problem(
                "duplicate_system",
                "conversations[0] is a system turn and the row also has a 'system' field: keep one",
            )
        system, turns = turns[0][1], turns[1:]
    messages = [{"role": "system", "content": system}] if system is not None else []
    problem = _check_order(turns, offset=len(conversations) - len(turns))
    if problem:
        return problem
    return messages + _openai_turns(turns)


def _turn(i: int, turn: object) -> tuple[str, str] | Problem:
    """(role, value) of one ShareGPT turn, or its problem."""
    where = f"conversations[{i}]"
    keys = next((pair for pair in _KEY_PAIRS if isinstance(turn, dict) and pair[0] in turn), None)
    if keys is None:
        return Problem("bad_message", f"{where}: expected an object with 'from' and 'value'")
    role_key, value_key = keys
    unknown = sorted(set(turn) - set(keys))
    if unknown:
        return Problem("bad_message", f"{where}: a turn has only {list(keys)}, not {unknown}")
    name = turn[role_key]
    if name not in ROLE_OF:
        return Problem(
            "bad_role", f"{where}.{role_key}: {name!r} is not one of {list(ROLE_OF)} (ShareGPT roles)"
        )
    value = turn.get(value_key)
    if value is None:
        return Problem("empty_text", f"{where}: a {name} turn without '{value_key}'")
    if not isinstance(value, str):
        return Problem("wrong_type", f"{where}.{value_key}: expected text, got {type(value).__name__}")
    if not value.strip() and ROLE_OF[name] != "tool":  # a tool may answer with nothing
        return Problem("empty_text", f"{where}.{value_key}: expected non-empty text")
    return ROLE_OF[name], value


def _check_order(turns: list[tuple[str, str]], offset: int) -> Problem | None:
    """User-side and assistant-side turns alternate, from a user-side one to an
    assistant-side one; results only after a function_call (as many as it made calls)."""
    if not any(role in ("assistant", "function_call") for role, _ in turns):
        return Problem(
            "no_assistant_turn", "no gpt (assistant) turn: expected at least one answer to train on"
        )
    calls_left = 0
    for k, (role, value) in enumerate(turns):
        where = f"conversations[{k + offset}]"
        if role == "system":
            return Problem("turns_not_alternating", f"{where}: a system turn may only come first")
        if role == "tool" and k and turns[k - 1][0] == "tool":  # the next call's result
            if calls_left == 0:
                return Problem(
                    "unanswered_tool_result",
                    f"{where}: more observations than the calls of the function_call before them",
                )
            calls_left -= 1
            continue
        if role == "tool" and (not k or turns[k - 1][0] != "function_call"):
            return Problem(
                "unanswered_tool_result",
                f"{where}: an observation (tool result) must follow a function_call turn",
            )
        expected_user = k == 0 or turns[k - 1][0] not in _USER_SIDE
        if (role in _USER_SIDE) != expected_user:
            side = "human or observation" if expected_user else "gpt or function_call"
            return Problem(
                "turns_not_alternating",
                f"{where}: a {_name(role)} turn where a {side} turn is expected "
                f"(human/observation and gpt/function_call turns alternate, starting with human)",
            )
        if role == "function_call":
            calls = _calls(where, value)
            if isinstance(calls, Problem):
                return calls
            calls_left = len(calls) - 1
    if turns[-1][0] in _USER_SIDE:
        return Problem(
            "last_turn_not_assistant",
            f"conversations[{len(turns) - 1 + offset}]: the conversation must end with a gpt turn",
        )
    return None


def _name(role: str) -> str:
    return {"user": "human", "assistant": "gpt", "tool": "observation"}.get(role, role)


def _calls(where: str, value: str) -> list[dict] | Problem:
    """The calls of a function_call turn's value: {name, arguments} or a list of them."""
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as exc:
        return Problem("bad_tool_call", f"{where}.value: a function_call holds JSON ({exc.msg})")
    calls = calls if isinstance(calls, list) else [calls]
    for c in calls:
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("name"), str)
            or not set(c) <= {"name", "arguments"}
        ):
            return Problem(
                "bad_tool_call",
                f"{where}.value: expected {{\"name\": ..., \"arguments\": {{...}}}} or a list of them",
            )
    return calls or Problem("bad_tool_call", f"{where}.value: an empty list of calls")


def _openai_turns(turns: list[tuple[str, str]]) -> list[dict]:
    """Checked ShareGPT turns as OpenAI messages; calls get ids `call00001`, ... in
    order (nine alphanumerics: Mistral's template requires exactly that)."""
    out: list[dict] = []
    made = 0  # calls so far
    pending: list[str] = []  # ids of the calls the next results answer, in order
    for role, value in turns:
        if role == "function_call":
            calls = _calls("", value)
            pending = [f"call{made + n + 1:05d}" for n in range(len(calls))]
            made += len(calls)
            tool_calls = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c.get("arguments", {})},
                }
                for call_id, c in zip(pending, calls)
            ]
            out.append({"role": "assistant", "content": "", "tool_calls": tool_calls})
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": pending.pop(0), "content": value})
        else:
            out.append({"role": role, "content": value})
    return out
