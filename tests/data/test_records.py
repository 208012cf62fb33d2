"""Record formats and validation: each format, the column mapping, and every
bad-row reason with its file and line."""

import json

import pytest

from data import DatasetConfig, DataValidationError, validate_rows
from data.readers import RawRow, Unparsed
from data.records import Example, Problem, to_example


def row(value, line=1):
    return RawRow("f.jsonl", line, value)


def test_chat_row_is_kept_as_is():
    msgs = [
        {"role": "system", "content": "丁寧に"},
        {"role": "user", "content": "質問"},
        {"role": "assistant", "content": "回答"},
    ]
    ex = to_example(row({"messages": msgs}), "chat")
    assert isinstance(ex, Example) and ex.messages == msgs and ex.text is None


def test_chat_messages_as_json_text_in_a_csv_cell():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert to_example(row({"messages": json.dumps(msgs)}), "chat").messages == msgs


def test_instruction_with_input_and_system_becomes_a_conversation():
    ex = to_example(
        row({"instruction": "要約して", "input": "本文", "output": "要約", "system": "簡潔に"}), "instruction"
    )
    assert ex.messages == [
        {"role": "system", "content": "簡潔に"},
        {"role": "user", "content": "要約して\n\n本文"},
        {"role": "assistant", "content": "要約"},
    ]


def test_prompt_completion_with_a_column_mapping():
    ex = to_example(
        row({"質問": "q", "回答": "a"}), "prompt_completion", {"prompt": "質問", "completion": "回答"}
    )
    assert ex.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_raw_text():
    assert to_example(row({"body": "本文"}), "text", {"text": "body"}).text == "本文"


@pytest.mark.parametrize(
    "fmt,value,code",
    [
        ("chat", Unparsed("invalid_json", "invalid JSON"), "invalid_json"),
        ("chat", ["not", "an", "object"], "not_an_object"),
        ("chat", {"messages": [], "id": 1}, "unknown_field"),
        ("chat", {}, "missing_field"),
        ("chat", {"messages": []}, "missing_messages"),
        ("chat", {"messages": "[not json"}, "invalid_json"),
        ("chat", {"messages": [{"role": "user", "text": "q"}]}, "bad_message"),
        ("chat", {"messages": [{"role": "robot", "content": "q"}]}, "bad_role"),
        (
            "chat",
            {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},
            "empty_text",
        ),
        ("chat", {"messages": [{"role": "user", "content": "q"}]}, "no_assistant_turn"),
        (
            "chat",
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
            "last_turn_not_assistant",
        ),
        ("instruction", {"instruction": "q"}, "missing_field"),
        ("instruction", {"instruction": "q", "output": 3}, "wrong_type"),
        ("prompt_completion", {"prompt": "q", "completion": ""}, "empty_text"),
        ("text", {"text": None}, "missing_field"),
    ],
)
def test_each_bad_row_reason(fmt, value, code):
    problem = to_example(row(value), fmt)
    assert isinstance(problem, Problem) and problem.code == code, problem


def test_unknown_field_message_names_the_mapped_columns():
    p = to_example(
        row({"質問": "q", "answer": "a"}), "prompt_completion", {"prompt": "質問", "completion": "回答"}
    )
    assert p.code == "unknown_field" and "['answer']" in p.message and "回答" in p.message


def write_jsonl(path, *rows):
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
        encoding="utf-8",
    )
    return path


GOOD = {"prompt": "質問", "completion": "回答"}


def test_fail_lists_every_bad_row_with_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", GOOD, {"prompt": "q"}, "{oops", GOOD)
    cfg = DatasetConfig(name="d", path=str(p), format="prompt_completion")
    with pytest.raises(DataValidationError) as e:
        validate_rows(cfg)
    msg = str(e.value)
    assert (
        "2 invalid row(s)" in msg
        and f"{p}:2: missing field 'completion'" in msg
        and f"{p}:3: invalid JSON" in msg
    )


def test_skip_counts_by_reason(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", GOOD, {"prompt": "q"}, {"prompt": "q2"}, "{oops", GOOD)
    acc = validate_rows(DatasetConfig(name="d", path=str(p), format="prompt_completion", on_error="skip"))
    assert acc.rows_in == 5 and dict(acc.dropped) == {"missing_field": 2, "invalid_json": 1}


def test_parquet_errors_name_the_row_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["q", "q"], "completion": ["a", " "]}), p)
    with pytest.raises(DataValidationError, match=r"d.parquet: row 1: 'completion': expected non-empty text"):
        validate_rows(DatasetConfig(name="d", path=str(p), format="prompt_completion"))


def test_text_of_ideographic_spaces_is_empty(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", {"text": "\u3000\u3000"}, {"text": "本文"})
    acc = validate_rows(DatasetConfig(name="d", path=str(p), format="text", on_error="skip"))
    assert dict(acc.dropped) == {"empty_text": 1}


def test_config_rejects_columns_of_another_format():
    with pytest.raises(ValueError, match=r"columns: \['prompt'\] are not fields of the 'chat' format"):
        DatasetConfig(name="d", path="x.jsonl", columns={"prompt": "q"})
