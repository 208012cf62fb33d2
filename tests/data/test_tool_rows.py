"""OpenAI-style tool calls, tool results and reasoning: validated per row, and
through `prepare` with labels from the template and its report in the manifest."""

import json

import pytest
from families import build_family, conversations

from data import DatasetConfig, prepare, read_manifest
from data.readers import RawRow
from data.records import Example, Problem, canonical_messages, check_messages, to_example

CALL = {
    "id": "call00001",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "大阪"}'},
}
TOOLS = [
    {"role": "user", "content": "天気は？"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call00001", "content": '{"forecast": "晴れ"}'},
    {"role": "assistant", "content": "晴れです。"},
]


def test_tool_calls_and_results_validate_and_arguments_become_objects():
    ex = to_example(RawRow("f.jsonl", 1, {"messages": TOOLS}), "chat")
    assert isinstance(ex, Example)
    assert ex.messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call00001",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "大阪"}},
            }
        ],
    }
    assert check_messages(ex.messages) is None  # the canonical form validates too
    assert canonical_messages(ex.messages) == ex.messages
    ex.map_text(lambda s: s.replace("大阪", "<CITY>"))  # normalisation and PII reach the arguments' strings
    assert ex.messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "<CITY>"}
    assert any("get_weather" in c for c in ex.contents())


def with_(i, **changes):
    messages = json.loads(json.dumps(TOOLS))
    messages[i].update(changes)
    return messages


@pytest.mark.parametrize(
    "messages,code,text",
    [
        (with_(1, tool_calls=[]), "bad_tool_call", "non-empty list"),
        (
            with_(1, tool_calls=[{**CALL, "function": {"name": "f", "arguments": "{oops"}}]),
            "bad_tool_call",
            "not JSON",
        ),
        (
            with_(1, tool_calls=[{**CALL, "function": {"name": "f", "arguments": "[1]"}}]),
            "bad_tool_call",
            "expected a JSON object",
        ),
        (
            with_(1, tool_calls=[{**CALL, "function": {"name": "", "arguments": "{}"}}]),
            "bad_tool_call",
            "non-empty name",
        ),
        (with_(1, tool_calls=[{**CALL, "type": "code"}]), "bad_tool_call", "only 'function' calls"),
        (
            with_(1, tool_calls=[{"type": "function", "function": CALL["function"]}]),
            "bad_tool_call",
            "call's id",
        ),
        (with_(1, content=3), "wrong_type", "content"),
        (with_(1, reasoning_content=["x"]), "wrong_type", "reasoning_content"),
        (with_(1, extra=1), "bad_message", "'extra'"),
        (with_(2, tool_call_id="other"), "unanswered_tool_result", "'other' is not the id"),
        (with_(2, content=None), "wrong_type", "tool result is text"),
        ([TOOLS[0], TOOLS[2], TOOLS[3]], "unanswered_tool_result", "must follow an assistant turn"),
        (with_(3, content=""), "empty_text", "messages[3].content"),
        (with_(3, tool_calls=None, content="x"), "bad_tool_call", "non-empty list"),
    ],
)
def test_malformed_tool_use_is_a_row_level_error(messages, code, text):
    problem = check_messages(messages)
    assert isinstance(problem, Problem) and problem.code == code and text in problem.message, problem


def test_reasoning_beside_content_validates():
    assert (
        check_messages(
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": "r", "thinking": "r"},
            ]
        )
        is None
    )


def test_prepare_labels_tool_use_and_reports_the_template(tmp_path):
    """A Gemma-style model: its turns end with <end_of_turn> while its EOS is
    <eos>; the manifest says so (the warning a server needs). Tool rows and a
    system prompt are row-level refusals (its template supports neither), counted."""
    fam = build_family("gemma-2-it")
    model = tmp_path / "model"
    fam.tokenizer.save_pretrained(model)
    convs = conversations("gemma-2-it")
    rows = [convs["single"], convs["multi"], convs["system"], TOOLS]
    (tmp_path / "d.jsonl").write_text(
        "\n".join(json.dumps({"messages": r}, ensure_ascii=False) for r in rows), encoding="utf-8"
    )
    cfg = DatasetConfig(name="g", path=str(tmp_path / "d.jsonl"), on_error="skip", pii={"enabled": False})
    m = prepare(cfg, model, tmp_path / "out")
    assert m["rows"]["out"] == 2 and m["rows"]["dropped"] == {"template_error": 2}
    report = read_manifest(tmp_path / "out")["chat_template"]
    assert report["turn_end_tokens"] == {"<end_of_turn>": 4} and report["serving_prompt_mismatch"] == 0
    [warning] = report["warnings"]
    assert "'<end_of_turn>'" in warning and "stop token" in warning


def test_prepare_trains_tool_calls_with_a_tool_template(tmp_path):
    import pyarrow.parquet as pq

    fam = build_family("qwen2.5-instruct")
    model = tmp_path / "model"
    fam.tokenizer.save_pretrained(model)
    (tmp_path / "d.jsonl").write_text(json.dumps({"messages": TOOLS}, ensure_ascii=False), encoding="utf-8")
    m = prepare(
        DatasetConfig(name="q", path=str(tmp_path / "d.jsonl"), pii={"enabled": False}),
        model,
        tmp_path / "out",
    )
    assert m["rows"]["out"] == 1 and m["chat_template"]["warnings"] == []
    row = pq.read_table(tmp_path / "out" / "tokens.parquet").to_pylist()[0]
    trained = fam.tokenizer.decode([t for t in row["labels"] if t != -100])
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "大阪"}}\n</tool_call><|im_end|>'
        "晴れです。<|im_end|>"
    )
