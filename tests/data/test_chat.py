"""Chat rows: validation with file:line, and loss on assistant tokens only."""

import json

import pytest

from data import DatasetConfig, DataValidationError, prepare, read_chat_jsonl, tokenize_conversation
from data.chat import IGNORE_INDEX


def rows(tmp_path, *lines):
    p = tmp_path / "d.jsonl"
    p.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
        encoding="utf-8",
    )
    return p


GOOD = {"messages": [{"role": "user", "content": "質問"}, {"role": "assistant", "content": "回答"}]}


def test_row_without_assistant_turn_is_named_by_line(tmp_path):
    p = rows(tmp_path, GOOD, {"messages": [{"role": "user", "content": "質問だけ"}]}, "{not json")
    with pytest.raises(DataValidationError) as e:
        read_chat_jsonl(p)
    msg = str(e.value)
    assert f"{p}:2: no assistant turn" in msg
    assert f"{p}:3: invalid JSON" in msg
    assert "2 invalid row(s)" in msg


def test_skip_drops_and_counts_every_bad_row(tmp_path):
    p = rows(
        tmp_path,
        GOOD,
        {"messages": [{"role": "user", "content": "q"}]},
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        GOOD,
    )
    ds = read_chat_jsonl(p, on_error="skip")
    assert len(ds.conversations) == 2
    assert [e.line for e in ds.errors] == [2, 3]
    assert sum(ds.dropped_by_reason.values()) == 2


def test_non_utf8_names_the_byte_offset(tmp_path):
    p = tmp_path / "sjis.jsonl"
    p.write_bytes('{"messages": "日本"}'.encode("shift_jis"))
    with pytest.raises(DataValidationError, match=r"sjis.jsonl: byte \d+: not valid UTF-8"):
        read_chat_jsonl(p)


def test_labels_cover_only_the_assistant_answer(tiny_model_dir, sample_conversations):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    conv = sample_conversations[0]
    ex = tokenize_conversation(tok, conv, 256)
    trained = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert tok.decode(trained) == conv[1]["content"] + tok.eos_token
    # The prompt is exactly what a server renders for this question.
    prompt = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["input_ids"][n_prompt : n_prompt + len(trained)] == trained


def test_multi_turn_trains_every_assistant_turn(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    conv = [
        {"role": "system", "content": "丁寧に"},
        {"role": "user", "content": "一"},
        {"role": "assistant", "content": "二"},
        {"role": "user", "content": "三"},
        {"role": "assistant", "content": "四"},
    ]
    ex = tokenize_conversation(tok, conv, 256)
    trained = tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])
    assert trained == f"二{tok.eos_token}四{tok.eos_token}"
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(conv, tokenize=False)


def test_prepare_writes_tokens_and_manifest(tmp_path, tiny_model_dir):
    import pyarrow.parquet as pq

    cfg = DatasetConfig(name="demo", path="samples:internal_faq_ja.jsonl")
    m = prepare(cfg, tiny_model_dir, tmp_path / "out")
    assert m["rows"] == {"in": 30, "out": 30, "train": 30, "eval": 0, "dropped": {}}
    assert sum(m["pii"].values()) == 0  # the demo trains on the sample's answers verbatim
    assert len(m["source"]["sha256"]) == 64 and m["tokens"] > m["trained_tokens"] > 0
    assert pq.read_table(tmp_path / "out" / "tokens.parquet").num_rows == 30
    assert prepare(cfg, tiny_model_dir, tmp_path / "again")["version"] == m["version"]


def test_batched_tokenisation_matches_the_per_turn_one(tiny_model_dir, sample_conversations):
    from transformers import AutoTokenizer

    from data.records import Example
    from data.tokenization import tokenize_batch

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    convs = list(sample_conversations) + [
        [
            {"role": "system", "content": "丁寧に"},
            {"role": "user", "content": "一"},
            {"role": "assistant", "content": "二"},
            {"role": "user", "content": "三"},
            {"role": "assistant", "content": "四"},
        ]
    ]
    batch = [Example("f", i, "line", messages=c) for i, c in enumerate(convs)] + [
        Example("f", 0, "line", text="本文")
    ]
    out, refused = tokenize_batch(tok, batch)
    assert len(out) == len(batch) and not refused
    assert [out.example(i) for i in range(len(convs))] == [
        tokenize_conversation(tok, c, 1 << 30) for c in convs
    ]
    text = out.example(len(convs))
    assert text["labels"] == text["input_ids"] and tok.decode(text["input_ids"]).endswith(tok.eos_token)


def test_template_shortcut_matches_apply_chat_template_and_keeps_no_state(tiny_model_dir):
    """The prompt renderer reuses one jinja context: a template whose top-level
    variables would leak from one call into the next still renders as
    `apply_chat_template` does, call after call."""
    from transformers import AutoTokenizer

    from data.tokenization import _prompt_renderer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = (
        "{{ seen if seen is defined else 'first' }}{% set seen = messages[0]['content'] %}"
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    a, b = (
        [{"role": "user", "content": "一"}],
        [{"role": "system", "content": "丁寧に"}, {"role": "user", "content": "二"}],
    )
    render = _prompt_renderer(tok, [a, b])
    assert render.__name__ == "fast"  # the shortcut passed its check (it would not, were state left behind)
    for messages in (a, b, a, b):
        assert render(messages) == tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    assert render(b).startswith("first<system>")


def test_a_conversation_the_template_refuses_is_an_invalid_row(tmp_path, tiny_model_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    template = (model / "chat_template.jinja").read_text()
    (model / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + template
    )
    rows = [
        [{"role": "user", "content": "質問です"}, {"role": "assistant", "content": "回答です"}],
        [
            {"role": "system", "content": "丁寧に"},
            {"role": "user", "content": "質問"},
            {"role": "assistant", "content": "回答"},
        ],
    ]
    (tmp_path / "d.jsonl").write_text(
        "\n".join(json.dumps({"messages": r}, ensure_ascii=False) for r in rows), encoding="utf-8"
    )
    cfg = DatasetConfig(name="t", path=str(tmp_path / "d.jsonl"), on_error="skip")
    m = prepare(cfg, model, tmp_path / "out")
    assert m["rows"]["dropped"] == {"template_error": 1} and m["rows"]["out"] == 1
    with pytest.raises(
        DataValidationError,
        match=r"d.jsonl:2: the chat template refused the conversation: "
        r"System role not supported",
    ):
        prepare(cfg.model_copy(update={"on_error": "fail"}), model, tmp_path / "out2")
