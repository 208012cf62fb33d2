"""Labels from the chat template itself, per real model family (the fixtures'
templates on stand-in tokenizers, tests/data/families.py): the ids are the
tokenised render of the whole conversation, and exactly each assistant turn,
from where its serving prompt ends through its turn-end token, is trained."""

import json
from collections import Counter

import pytest
from families import EXPECTED, FAMILIES, build_family, conversations

from data import DataValidationError, tokenize_conversation
from data.chat import IGNORE_INDEX
from data.records import Example, canonical_messages, check_messages
from data.template_labels import (
    NOTE_MISMATCH,
    NOTE_SPLIT_TOKEN,
    NOTE_TURN_END,
    SpanError,
    assistant_spans,
    template_profile,
    turn_end_warnings,
)
from data.tokenization import tokenize_batch

CASES = [
    (f, kind, kwargs)
    for f in FAMILIES
    for kind in conversations(f)
    for kwargs in (
        [{}, {"enable_thinking": False}]
        if "enable_thinking" in build_family(f).fixture["chat_template"]
        else [{}]
    )
]


def runs(labels: list[int], offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The character spans of the runs of trained tokens."""
    out: list[list[int]] = []
    for k, (label, (a, b)) in enumerate(zip(labels, offsets)):
        if label == IGNORE_INDEX:
            continue
        if out and labels[k - 1] != IGNORE_INDEX:
            out[-1][1] = b
        else:
            out.append([a, b])
    return [tuple(r) for r in out]


@pytest.mark.parametrize(
    "family,kind,kwargs", CASES, ids=[f"{f}-{k}{'-nothink' if kw else ''}" for f, k, kw in CASES]
)
def test_labels_are_the_assistant_turns_of_the_full_render(family, kind, kwargs):
    fam = build_family(family)
    tok, messages = fam.tokenizer, conversations(family)[kind]
    assert check_messages(messages) is None
    canonical = canonical_messages(messages)
    notes = Counter()
    batch, problems = tokenize_batch(tok, [Example("f", 1, "line", messages=canonical)], kwargs, notes)
    try:
        full = tok.apply_chat_template(canonical, tokenize=False, **kwargs)
    except Exception as exc:  # noqa: BLE001  the template refuses it: so must we, per row, clearly
        assert problems[0].code == "template_error" and str(exc) in problems[0].message
        with pytest.raises(DataValidationError, match="the chat template refused the conversation"):
            tokenize_conversation(tok, messages, 1 << 30, kwargs)
        return
    turns = [i for i, m in enumerate(canonical) if m["role"] == "assistant"]
    if kind.endswith("tools") and not fam.tools:  # the template drops tool calls: refused, not mislabelled
        assert problems[0].code == SpanError.code and "tool call" in problems[0].message, problems
        return
    assert not problems, problems
    ref = tokenize_conversation(tok, messages, 1 << 30, kwargs)
    assert batch.example(0) == ref  # the batched path and the simple reference agree

    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = ref["input_ids"], ref["labels"]
    assert ids == enc["input_ids"]  # the concatenated ids are the tokenised full render
    bos = fam.fixture.get("bos_token")
    if bos and full.startswith(bos):
        assert ids[0] == tok.convert_tokens_to_ids(bos) and ids[1] != ids[0]  # one BOS, the template's
    assert all(lab in (IGNORE_INDEX, t) for lab, t in zip(labels, ids))
    trained = runs(labels, enc["offset_mapping"])
    assert len(trained) == len(turns), [full[a:b] for a, b in trained]
    mismatch = False
    for i, (a, b) in zip(turns, trained):
        m, text = canonical[i], full[a:b]
        prompt = tok.apply_chat_template(canonical[:i], tokenize=False, add_generation_prompt=True, **kwargs)
        if full.startswith(prompt):
            assert a == len(prompt)  # what serving sends is exactly what precedes the trained turn
        else:
            mismatch = True
        assert any(text.endswith(t) for t in fam.turn_ends), (text, fam.turn_ends)
        content = m["content"].rsplit("</think>", 1)[-1].strip()
        assert content in text or m.get("tool_calls"), (content, text)
        for call in m.get("tool_calls", ()):
            assert call["function"]["name"] in text
        if family in EXPECTED:
            assert text == EXPECTED[family](canonical, i, kwargs)
    assert notes[NOTE_MISMATCH] == mismatch
    assert sum(v for k, v in notes.items() if k.startswith(NOTE_TURN_END)) == len(turns)
    assert not notes[NOTE_SPLIT_TOKEN]


def test_every_family_is_checked_closely():
    assert set(FAMILIES) == set(EXPECTED)  # a new fixture: add its expected labels too


def test_gemma_with_a_system_prompt_is_a_row_level_refusal():
    tok = build_family("gemma-2-it").tokenizer
    batch, problems = tokenize_batch(
        tok,
        [
            Example("f", 1, "line", messages=conversations("gemma-2-it")["system"]),
            Example("f", 2, "line", messages=conversations("gemma-2-it")["single"]),
        ],
    )
    assert problems[0].code == "template_error" and "System role not supported" in problems[0].message
    assert batch.lengths[0] == 0 and batch.lengths[1] > 0 and 1 not in problems


def test_mistral_system_prompt_is_reported_as_a_serving_mismatch():
    """Mistral renders the system prompt only before a last user turn: the
    training render has none, the serving prompt has it. The row trains (its
    labels are right for what it renders) and the mismatch is counted."""
    tok = build_family("mistral-nemo-instruct-2407").tokenizer
    notes = Counter()
    convs = conversations("mistral-nemo-instruct-2407")
    _, problems = tokenize_batch(
        tok,
        [Example("f", 1, "line", messages=convs["system"]), Example("f", 2, "line", messages=convs["multi"])],
        notes=notes,
    )
    assert not problems and notes[NOTE_MISMATCH] == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_turn_end_tokens_are_learnt_from_the_template(family):
    fam = build_family(family)
    profile = template_profile(fam.tokenizer)
    assert profile.probed and profile.probed <= fam.turn_ends, (profile.probed, fam.turn_ends)


def test_gemma_turn_end_is_not_its_eos_and_is_warned_about(tmp_path):
    tok = build_family("gemma-2-it").tokenizer
    [warning] = turn_end_warnings(tok)
    assert "'<end_of_turn>'" in warning and "'<eos>'" in warning and "no generation_config.json" in warning
    ids = [tok.convert_tokens_to_ids(t) for t in ("<eos>", "<end_of_turn>")]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": ids[:1]}))
    assert "generation_config.json's eos_token_id (<eos>)" in turn_end_warnings(tok, tmp_path)[0]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}))
    assert turn_end_warnings(tok, tmp_path) == []  # the fixed config: generation stops at <end_of_turn> too
    assert turn_end_warnings(build_family("llama-3.1-3.3-instruct").tokenizer) == []  # <|eot_id|> is its EOS


def test_a_turn_the_template_drops_cannot_be_labelled():
    tok = build_family("qwen2.5-instruct").tokenizer
    profile = template_profile(tok)
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer"}]
    full = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nsomething else<|im_end|>\n"
    prompt = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(SpanError, match=r"messages\[1\]: the assistant content is not in the chat template"):
        assistant_spans(full, [prompt], messages, profile)
    assert assistant_spans(full.replace("something else", "answer"), [prompt], messages, profile) == [
        (len(prompt), len(prompt) + len("answer<|im_end|>"))
    ]


def test_a_template_without_turn_end_tokens_is_refused_not_run_on(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}{{ eos_token if not add_generation_prompt }}"
    )
    conv = [
        {"role": "user", "content": "一"},
        {"role": "assistant", "content": "二"},
        {"role": "user", "content": "三"},
        {"role": "assistant", "content": "四"},
    ]
    _, problems = tokenize_batch(tok, [Example("f", 1, "line", messages=conv)])
    assert problems[0].code == SpanError.code and "labels cannot end" in problems[0].message


def test_a_prompt_that_ends_inside_a_token_is_counted():
    """A serving prompt that does not end on a token boundary of the full render
    (here "ab" + "cd" is the one token "abcd"): the straddling token is not
    trained, and the dataset's notes say so."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(
        ["abcd"] * 50,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|user|>", "<|assistant|>", "<|end|>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|end|>",
        chat_template=(
            "{% for m in messages %}<|{{ m['role'] }}|>{% if m['role'] == 'assistant' %}ab{% endif %}"
            "{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>ab{% endif %}"
        ),
    )
    assert len(tok("abcd", add_special_tokens=False)["input_ids"]) == 1
    notes = Counter()
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "cd"}]
    batch, problems = tokenize_batch(tok, [Example("f", 1, "line", messages=conv)], notes=notes)
    assert not problems and notes[NOTE_SPLIT_TOKEN] == 1
    ex = batch.example(0)
    assert ex == tokenize_conversation(tok, conv, 1 << 30)
    assert tok.convert_ids_to_tokens([t for t in ex["labels"] if t != IGNORE_INDEX]) == ["<|end|>"]


@pytest.mark.parametrize("family", FAMILIES)
def test_ranges_from_ids_alone_agree_with_offsets(family):
    """The batched path places turns from the ids and special tokens alone (no
    offsets); for every family it needs no fallback and agrees with the offsets."""
    from data.tokenization import _anchored_ranges, _encoder, render_conversation, token_ranges

    tok = build_family(family).tokenizer
    profile = template_profile(tok)
    renders = [
        render_conversation(
            canonical_messages(c),
            lambda m: tok.apply_chat_template(m, tokenize=False),
            lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
            profile,
        )
        for c in conversations(family).values()
    ]
    texts, spans = zip(*[r for r in renders if isinstance(r, tuple)])
    ranges = _anchored_ranges(tok, profile, list(texts), list(spans), _encoder(tok, False)(list(texts)))
    encodings = tok.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    assert ranges == [token_ranges(e, s) for e, s in zip(encodings, spans)]


@pytest.mark.parametrize("cut", [2, 4], ids=["call-last", "call-then-answer"])
def test_a_call_closed_by_a_special_token_trains_the_turn_end_after_it(cut):
    """Where a tokenizer makes the tool-call tags special tokens (Hermes-style
    fine-tunes; the tiny Qwen models of tests/fixtures/families), the tag that closes a
    call is not where the turn ends: `<|im_end|>` after `</tool_call>` is trained too
    (it was not, so a model never learnt to stop after a call)."""
    import copy

    from data.template_labels import special_tokens

    tok = copy.deepcopy(build_family("qwen2.5-instruct").tokenizer)
    tok.add_tokens(["<tool_call>", "</tool_call>"], special_tokens=True)
    assert {"<tool_call>", "</tool_call>"} <= set(special_tokens(tok))
    assert template_profile(tok).turn_ends == {"<|im_end|>"}
    messages = canonical_messages(conversations("qwen2.5-instruct")["tools"])[:cut]
    ref = tokenize_conversation(tok, messages, 1 << 30, {})
    full = tok.apply_chat_template(messages, tokenize=False)
    offsets = tok(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    trained = [full[a:b] for a, b in runs(ref["labels"], offsets)]
    expected = [
        EXPECTED["qwen2.5-instruct"](messages, i, {})
        for i, m in enumerate(messages)
        if m["role"] == "assistant"
    ]
    assert trained == expected
    assert trained[0].endswith("</tool_call><|im_end|>")
