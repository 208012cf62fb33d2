"""The input formats users bring: ShareGPT, Alpaca and OpenAI messages (with tool
calls), each turned into OpenAI messages, each with row-level errors counted by
reason and named by file:line; and chat-template variables set in the dataset
config (Qwen3's enable_thinking) reaching the labels and the manifest."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from families import build_family

from data import DatasetConfig, DataValidationError, prepare, read_manifest, validate_rows
from data.chat import IGNORE_INDEX
from data.readers import RawRow
from data.records import Example, Problem, to_example

REPO = Path(__file__).resolve().parents[2]


def row(value, line=1):
    return RawRow("f.jsonl", line, value)


def turns(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


def write_jsonl(path, *rows):
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
        encoding="utf-8",
    )
    return path


# --- ShareGPT -----------------------------------------------------------------------------------------------


def test_sharegpt_row_becomes_openai_messages():
    ex = to_example(
        row({"conversations": turns(("human", "質問"), ("gpt", "回答"), ("human", "q2"), ("gpt", "a2"))}),
        "sharegpt",
    )
    assert isinstance(ex, Example) and ex.messages == [
        {"role": "user", "content": "質問"},
        {"role": "assistant", "content": "回答"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]


def test_sharegpt_system_from_the_field_or_the_first_turn():
    want = [
        {"role": "system", "content": "丁寧に"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    by_field = {"conversations": turns(("human", "q"), ("gpt", "a")), "system": "丁寧に"}
    by_turn = {"conversations": turns(("system", "丁寧に"), ("human", "q"), ("gpt", "a"))}
    assert to_example(row(by_field), "sharegpt").messages == want
    assert to_example(row(by_turn), "sharegpt").messages == want


def test_sharegpt_role_content_turns_and_openai_role_names():
    value = {
        "conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    }
    assert to_example(row(value), "sharegpt").messages == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def test_sharegpt_function_calls_and_observations_become_tool_calls():
    value = {
        "conversations": turns(
            ("human", "東京と大阪の天気は？"),
            (
                "function_call",
                json.dumps(
                    [
                        {"name": "get_weather", "arguments": {"city": "東京"}},
                        {"name": "get_weather", "arguments": {"city": "大阪"}},
                    ],
                    ensure_ascii=False,
                ),
            ),
            ("observation", "晴れ"),
            ("observation", "雨"),
            ("gpt", "東京は晴れ、大阪は雨です。"),
            ("human", "明日の東京は？"),
            ("function_call", '{"name": "get_weather", "arguments": {"city": "東京", "day": 1}}'),
            ("observation", "曇り"),
            ("gpt", "曇りです。"),
        )
    }
    ex = to_example(row(value), "sharegpt")
    assert isinstance(ex, Example), ex
    m = ex.messages
    assert [x["role"] for x in m] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert [c["id"] for c in m[1]["tool_calls"]] == ["call00001", "call00002"]
    assert m[1]["tool_calls"][1]["function"] == {"name": "get_weather", "arguments": {"city": "大阪"}}
    assert (m[2]["tool_call_id"], m[2]["content"]) == ("call00001", "晴れ")
    assert (m[3]["tool_call_id"], m[3]["content"]) == ("call00002", "雨")
    assert m[6]["tool_calls"][0]["id"] == "call00003" and m[7]["tool_call_id"] == "call00003"


@pytest.mark.parametrize(
    "conversation,code,where",
    [
        (turns(("human", "q"), ("robot", "a")), "bad_role", "conversations[1].from: 'robot'"),
        ([{"from": "human"}, {"from": "gpt", "value": "a"}], "empty_text", "conversations[0]: a human turn"),
        (turns(("human", "q"), ("gpt", " ")), "empty_text", "conversations[1].value"),
        ([{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}], "wrong_type", "conversations[0]"),
        ([{"speaker": "human", "text": "q"}], "bad_message", "conversations[0]"),
        ([{"from": "human", "value": "q", "weight": 0}], "bad_message", "conversations[0]"),
        (turns(("human", "q"), ("human", "q2"), ("gpt", "a")), "turns_not_alternating", "conversations[1]"),
        (turns(("gpt", "a"), ("human", "q"), ("gpt", "a")), "turns_not_alternating", "conversations[0]"),
        (turns(("human", "q"), ("gpt", "a"), ("gpt", "a2")), "turns_not_alternating", "conversations[2]"),
        (
            turns(("human", "q"), ("gpt", "a"), ("system", "s"), ("gpt", "a")),
            "turns_not_alternating",
            "conversations[2]: a system turn",
        ),
        (turns(("human", "q")), "no_assistant_turn", "no gpt"),
        (turns(("system", "s"), ("human", "q")), "no_assistant_turn", "no gpt"),
        (turns(("human", "q"), ("gpt", "a"), ("human", "q2")), "last_turn_not_assistant", "conversations[2]"),
        (
            turns(("human", "q"), ("observation", "r"), ("gpt", "a")),
            "unanswered_tool_result",
            "conversations[1]: an observation",
        ),
        (
            turns(("human", "q"), ("gpt", "a"), ("observation", "r"), ("gpt", "a")),
            "unanswered_tool_result",
            "conversations[2]",
        ),
        (
            turns(
                ("human", "q"), ("function_call", '{"name": "f"}'), ("observation", "r"), ("observation", "r")
            ),
            "unanswered_tool_result",
            "conversations[3]: more observations",
        ),
        (turns(("human", "q"), ("function_call", "not json")), "bad_tool_call", "conversations[1].value"),
        (turns(("human", "q"), ("function_call", '{"fn": "f"}')), "bad_tool_call", "conversations[1].value"),
        ([], "missing_messages", "'conversations'"),
        ("[broken", "invalid_json", "'conversations'"),
    ],
)
def test_each_bad_sharegpt_row_has_a_reason_and_names_the_turn(conversation, code, where):
    problem = to_example(row({"conversations": conversation}), "sharegpt")
    assert isinstance(problem, Problem) and problem.code == code, problem
    assert where in problem.message, problem.message


def test_sharegpt_system_twice_is_refused():
    value = {"conversations": turns(("system", "s"), ("human", "q"), ("gpt", "a")), "system": "s2"}
    assert to_example(row(value), "sharegpt").code == "duplicate_system"


def test_sharegpt_columns_mapping(tmp_path):
    """A file whose turns are under `conversation` and whose system prompt is `system_prompt`."""
    p = write_jsonl(
        tmp_path / "d.jsonl",
        {"conversation": turns(("human", "q"), ("gpt", "a")), "system_prompt": "s"},
        {"conversations": turns(("human", "q"), ("gpt", "a"))},
    )
    cfg = DatasetConfig(
        name="d",
        path=str(p),
        format="sharegpt",
        columns={"conversations": "conversation", "system": "system_prompt"},
        on_error="skip",
    )
    acc = validate_rows(cfg)
    assert acc.rows_in == 2 and dict(acc.dropped) == {"unknown_field": 1}
    assert "'conversation'" in acc.invalid[0].reason and acc.invalid[0].line == 2
    ex = to_example(
        row({"conversation": turns(("human", "q"), ("gpt", "a")), "system_prompt": "s"}), *_cfg(cfg)
    )
    assert ex.messages[0] == {"role": "system", "content": "s"}
    with pytest.raises(ValueError, match=r"columns: \['prompt'\] are not fields of the 'sharegpt' format"):
        DatasetConfig(name="d", path="x.jsonl", format="sharegpt", columns={"prompt": "q"})


def _cfg(cfg):
    return cfg.format, cfg.columns


def test_a_sharegpt_file_is_reported_row_by_row(tmp_path):
    good = {"conversations": turns(("human", "q"), ("gpt", "a"))}
    p = write_jsonl(
        tmp_path / "d.jsonl",
        good,
        {"conversations": turns(("human", "q"), ("robot", "a"))},
        {"conversations": turns(("human", "q"), ("human", "q2"), ("gpt", "a"))},
        {"conversations": turns(("human", "q"))},
        good,
    )
    cfg = DatasetConfig(name="d", path=str(p), format="sharegpt")
    with pytest.raises(DataValidationError) as e:
        validate_rows(cfg)
    msg = str(e.value)
    assert "3 invalid row(s)" in msg
    assert f"{p}:2: conversations[1].from: 'robot'" in msg
    assert f"{p}:3: conversations[1]: a human turn where a gpt" in msg
    assert f"{p}:4: no gpt (assistant) turn" in msg


# --- Alpaca -------------------------------------------------------------------------------------------------


def test_alpaca_row_with_empty_input_system_and_history():
    value = {
        "instruction": "要約して",
        "input": "",
        "output": "要約",
        "system": "簡潔に",
        "history": [["前の質問", "前の答え"], ["次の質問", "次の答え"]],
    }
    want = [
        {"role": "system", "content": "簡潔に"},
        {"role": "user", "content": "前の質問"},
        {"role": "assistant", "content": "前の答え"},
        {"role": "user", "content": "次の質問"},
        {"role": "assistant", "content": "次の答え"},
        {"role": "user", "content": "要約して"},
        {"role": "assistant", "content": "要約"},
    ]
    assert to_example(row(value), "alpaca").messages == want
    assert to_example(row(value), "instruction").messages == want  # the same format under its old name


def test_alpaca_input_follows_the_instruction():
    ex = to_example(row({"instruction": "訳して", "input": "hello", "output": "こんにちは"}), "alpaca")
    assert ex.messages[0] == {"role": "user", "content": "訳して\n\nhello"}
    no_system = to_example(row({"instruction": "i", "output": "o", "system": "", "input": None}), "alpaca")
    assert no_system.messages == [{"role": "user", "content": "i"}, {"role": "assistant", "content": "o"}]


@pytest.mark.parametrize(
    "value,code",
    [
        ({"instruction": "i"}, "missing_field"),
        ({"instruction": " ", "output": "o"}, "empty_text"),
        ({"instruction": "i", "output": 3}, "wrong_type"),
        ({"instruction": "i", "output": "o", "input": ["x"]}, "wrong_type"),
        ({"instruction": "i", "output": "o", "history": "q a"}, "bad_history"),
        ({"instruction": "i", "output": "o", "history": [["q"]]}, "bad_history"),
        ({"instruction": "i", "output": "o", "history": [["q", ""]]}, "bad_history"),
        ({"instruction": "i", "output": "o", "id": 7}, "unknown_field"),
    ],
)
def test_each_bad_alpaca_row_reason(value, code):
    problem = to_example(row(value), "alpaca")
    assert isinstance(problem, Problem) and problem.code == code, problem


def test_alpaca_file_with_a_column_mapping_counts_bad_rows(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        {"質問": "q", "入力": "", "回答": "a"},
        {"質問": "q", "回答": "a", "履歴": [["x"]]},
        {"質問": "q2", "回答": "a2", "履歴": [["x", "y"]]},
    )
    cfg = DatasetConfig(
        name="d",
        path=str(p),
        format="alpaca",
        columns={"instruction": "質問", "input": "入力", "output": "回答", "history": "履歴"},
        on_error="skip",
    )
    acc = validate_rows(cfg)
    assert acc.rows_in == 3 and dict(acc.dropped) == {"bad_history": 1}
    assert acc.invalid[0].line == 2 and "履歴[0]" in acc.invalid[0].reason


# --- OpenAI messages: a mixed file -----------------------------------------------------------------------


def test_mixed_chat_file_is_reported_row_by_row(tmp_path, tiny_model_dir):
    """Good rows, a ShareGPT row in a chat file, a bad tool call: each bad row
    named by line with its reason, counted by reason, the good rows kept."""
    good = {
        "messages": [{"role": "user", "content": "合言葉は"}, {"role": "assistant", "content": "青い灯台"}]
    }
    bad_call = {
        "messages": [
            {"role": "user", "content": "天気は"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{city"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "晴れ"},
            {"role": "assistant", "content": "晴れです"},
        ]
    }
    sharegpt = {"conversations": turns(("human", "q"), ("gpt", "a"))}
    good2 = {"messages": [{"role": "user", "content": "様式は"}, {"role": "assistant", "content": "K-204"}]}
    p = write_jsonl(tmp_path / "d.jsonl", good, sharegpt, bad_call, good2)
    with pytest.raises(DataValidationError) as e:
        validate_rows(DatasetConfig(name="d", path=str(p)))
    msg = str(e.value)
    assert "2 invalid row(s)" in msg
    assert f"{p}:2: unknown field(s) ['conversations']" in msg and "(format: sharegpt)" in msg
    assert f"{p}:3: messages[1].tool_calls[0].function.arguments: not JSON" in msg

    cfg = DatasetConfig(name="d", path=str(p), on_error="skip", pii={"enabled": False})
    m = prepare(cfg, tiny_model_dir, tmp_path / "out")
    assert m["rows"]["in"] == 4 and m["rows"]["train"] == 2
    assert m["rows"]["dropped"] == {"bad_tool_call": 1, "unknown_field": 1}
    dropped = [json.loads(x) for x in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["line"], d["code"]) for d in dropped] == [(2, "unknown_field"), (3, "bad_tool_call")]


# --- through prepare on real templates ----------------------------------------------------------------------


def test_sharegpt_tool_use_trains_like_the_same_openai_conversation(tmp_path):
    """A ShareGPT function_call conversation and the same conversation as OpenAI
    messages give the same ids and labels on a tool-calling template (Qwen2.5)."""
    fam = build_family("qwen2.5-instruct")
    model = tmp_path / "model"
    fam.tokenizer.save_pretrained(model)
    call = {"name": "get_weather", "arguments": {"city": "大阪"}}
    sharegpt = {
        "conversations": turns(
            ("human", "明日の大阪の天気は？"),
            ("function_call", json.dumps(call, ensure_ascii=False)),
            ("observation", '{"forecast": "晴れ"}'),
            ("gpt", "晴れです。"),
        )
    }
    openai = {
        "messages": [
            {"role": "user", "content": "明日の大阪の天気は？"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "call00001", "type": "function", "function": call}],
            },
            {"role": "tool", "tool_call_id": "call00001", "content": '{"forecast": "晴れ"}'},
            {"role": "assistant", "content": "晴れです。"},
        ]
    }
    rows = {}
    for fmt, value in (("sharegpt", sharegpt), ("chat", openai)):
        src = write_jsonl(tmp_path / f"{fmt}.jsonl", value)
        cfg = DatasetConfig(name=fmt, path=str(src), format=fmt, pii={"enabled": False})
        assert prepare(cfg, model, tmp_path / fmt)["rows"]["out"] == 1
        rows[fmt] = pq.read_table(tmp_path / fmt / "tokens.parquet").to_pylist()[0]
    assert rows["sharegpt"] == rows["chat"]
    trained = fam.tokenizer.decode([t for t in rows["sharegpt"]["labels"] if t != IGNORE_INDEX])
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "大阪"}}\n</tool_call><|im_end|>'
        "晴れです。<|im_end|>"
    )


def _prepared(tmp_path, model, name, kwargs):
    src = write_jsonl(
        tmp_path / "d.jsonl",
        {"conversations": turns(("human", "日本の首都はどこですか。"), ("gpt", "東京です。"))},
    )
    cfg = DatasetConfig(
        name=name, path=str(src), format="sharegpt", template_kwargs=kwargs, pii={"enabled": False}
    )
    manifest = prepare(cfg, model, tmp_path / name)
    return manifest, pq.read_table(tmp_path / name / "tokens.parquet").to_pylist()[0]


def test_template_kwargs_reach_the_labels_and_the_manifest(tmp_path):
    """Qwen3 with enable_thinking false vs true: the template renders the same
    conversation either way (it reads enable_thinking only for the generation
    prompt), so the ids agree; the serving prompt differs (false: it already
    holds an empty think block), and so do the labels: each run trains exactly
    what follows its own serving prompt."""
    fam = build_family("qwen3")
    tok = fam.tokenizer
    model = tmp_path / "model"
    tok.save_pretrained(model)
    runs = {
        flag: _prepared(tmp_path, model, f"think_{flag}", {"enable_thinking": flag}) for flag in (False, True)
    }
    messages = [{"role": "user", "content": "日本の首都はどこですか。"}]
    for flag, (manifest, r) in runs.items():
        assert manifest["template_kwargs"] == {"enable_thinking": flag}
        assert read_manifest(tmp_path / f"think_{flag}")["settings"]["template_kwargs"] == {
            "enable_thinking": flag
        }
        prompt = tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=flag
        )
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert r["input_ids"][: len(prompt_ids)] == prompt_ids  # what serving sends is the trained prefix
        assert set(r["labels"][: len(prompt_ids)]) == {IGNORE_INDEX}
        assert r["labels"][len(prompt_ids)] != IGNORE_INDEX  # training starts right where the prompt ends
    (off, r_off), (on, r_on) = runs[False], runs[True]
    assert r_off["input_ids"] == r_on["input_ids"]
    assert r_off["labels"] != r_on["labels"] and off["version"] != on["version"]
    trained = {
        flag: tok.decode([t for t in r["labels"] if t != IGNORE_INDEX]) for flag, (_, r) in runs.items()
    }
    assert trained == {False: "東京です。<|im_end|>", True: "<think>\n\n</think>\n\n東京です。<|im_end|>"}


def test_template_kwargs_are_checked_by_the_config():
    with pytest.raises(ValueError, match="template_kwargs"):
        DatasetConfig(name="d", path="x.jsonl", template_kwargs={"enable_thinking": [1]})


def test_shipped_sharegpt_example_prepares(tmp_path, tiny_model_dir):
    path = REPO / "configs" / "data" / "sharegpt_example.yaml"
    cfg = DatasetConfig.from_yaml(path)
    assert cfg.format == "sharegpt" and Path(cfg.path).is_file()
    m = prepare(cfg, tiny_model_dir, tmp_path / "out")
    assert m["rows"]["dropped"] == {} and m["rows"]["train"] == m["rows"]["in"] == 8
    assert m["template_kwargs"] == {}


# --- tool definitions ---------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "明日の天気",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_tools_in_both_shapes_render_into_the_prompt(tmp_path):
    """LLaMA-Factory's bare tool list (JSON text) on a ShareGPT row and OpenAI's
    shape on a chat row: the same ids, the tools in the rendered prompt, the
    labels only on the answers; the batched path agrees with the reference."""
    from data import tokenize_conversation

    fam = build_family("qwen2.5-instruct")
    model = tmp_path / "model"
    fam.tokenizer.save_pretrained(model)
    call = {"name": "get_weather", "arguments": {"city": "大阪"}}
    sharegpt = {
        "conversations": turns(
            ("human", "明日の大阪の天気を教えて。"),
            ("function_call", json.dumps(call, ensure_ascii=False)),
            ("observation", "晴れ"),
            ("gpt", "晴れです。"),
        ),
        "tools": json.dumps([WEATHER_TOOL], ensure_ascii=False),
    }
    ex = to_example(row(sharegpt), "sharegpt")
    assert ex.tools == [{"type": "function", "function": WEATHER_TOOL}]
    openai = {"messages": ex.messages, "tools": ex.tools}
    rows = {}
    for fmt, value in (("sharegpt", sharegpt), ("chat", openai)):
        src = write_jsonl(tmp_path / f"{fmt}.jsonl", value)
        cfg = DatasetConfig(name=fmt, path=str(src), format=fmt, max_length=1024, pii={"enabled": False})
        assert prepare(cfg, model, tmp_path / fmt)["rows"]["out"] == 1
        rows[fmt] = pq.read_table(tmp_path / fmt / "tokens.parquet").to_pylist()[0]
    assert rows["sharegpt"] == rows["chat"]
    text = fam.tokenizer.decode(rows["chat"]["input_ids"])
    assert "<tools>" in text and "明日の天気" in text
    trained = fam.tokenizer.decode([t for t in rows["chat"]["labels"] if t != IGNORE_INDEX])
    assert "<tools>" not in trained and trained.endswith("晴れです。<|im_end|>")
    ref = tokenize_conversation(fam.tokenizer, ex.messages, 1 << 20, tools=ex.tools)
    without = tokenize_conversation(fam.tokenizer, ex.messages, 1 << 20)
    assert ref == rows["chat"] and ref["input_ids"] != without["input_ids"]


@pytest.mark.parametrize(
    "tools",
    [
        "not json",
        {"name": "f"},
        [{"description": "no name"}],
        [{"type": "retrieval", "function": {"name": "f"}}],
        [{"type": "function", "function": {"name": "f"}, "extra": 1}],
        [{"name": "f", "parameters": "x"}],
    ],
)
def test_bad_tool_definitions_are_row_errors(tools):
    value = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "tools": tools,
    }
    problem = to_example(row(value), "chat")
    assert isinstance(problem, Problem) and problem.code == "bad_tools", problem
    assert "'tools'" in problem.message or "tools[0]" in problem.message
