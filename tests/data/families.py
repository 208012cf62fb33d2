"""Stand-in tokenizers for real model families, built offline from the chat
template fixtures (tests/fixtures/chat_templates/), and the conversations and
expected labels the property tests check them with.

One family per fixture file: its real chat template, bos/eos/pad and special
tokens, on a small BPE trained here (byte-level, or SentencePiece-style with
byte fallback; `test_tokenizers.json` says which, and which tokens are special).
Adding a family is adding its fixture (and, when its markers are not in the
fixture's token_ids, a line in test_tokenizers.json); the generic properties
check it at once, `EXPECTED` (the trained text of each turn, written from the
family's documented format) more closely where the family has an entry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "chat_templates"
FACTS = json.loads((FIXTURES / "test_tokenizers.json").read_text(encoding="utf-8"))
FAMILY_FILES = sorted(p for p in FIXTURES.glob("*.json") if p.name != "test_tokenizers.json")
FAMILIES = [p.stem for p in FAMILY_FILES]

CORPUS = [
    "The capital of Japan is Tokyo, and the capital of France is Paris.",
    "Please answer the question politely and briefly.",
    "What is the weather like in Osaka tomorrow? It will be sunny.",
    "Two plus two is four; three plus three is six.",
    "日本の首都は東京です。フランスの首都はパリです。",
    "明日の大阪の天気は晴れでしょう。気温は二十度です。",
    "丁寧に、簡潔に答えてください。ありがとうございます。",
    "申請書は様式K-204を使い、総務課に提出してください。",
    "def add(a, b):\n    return a + b\n",
    '{"city": "Tokyo", "unit": "celsius"}',
]


@dataclass
class Family:
    name: str
    fixture: dict
    tokenizer: object
    turn_ends: frozenset[str]  # the turn-end tokens the fixture documents
    tools: bool  # the template renders OpenAI tool calls
    reasoning_key: str | None  # where the template reads an assistant turn's reasoning


def _special_tokens(fixture: dict, facts: dict) -> list[str]:
    named = [fixture.get(k) for k in ("bos_token", "eos_token", "pad_token")] + list(
        fixture.get("token_ids", {})
    )
    named += facts.get("special", [])
    if not facts:  # no facts: the <|...|> tokens the template itself names
        named += re.findall(r"<\|[a-z_]+\|>", fixture["chat_template"])
    seen: dict[str, None] = {}
    for t in named:
        if t and t not in facts.get("added", []):
            seen.setdefault(t, None)
    return list(seen)


def _train(model: str, specials: list[str], added: list[str], prepend_space: bool, corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if model == "byte_level":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(
            corpus,
            trainers.BpeTrainer(
                vocab_size=700,
                special_tokens=specials,
                show_progress=False,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            ),
        )
    else:  # SentencePiece-style: '▁' for spaces, unknown characters as <0xNN> bytes
        scheme = "first" if prepend_space else "never"
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split("\n", behavior="isolated"),
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True),
            ]
        )
        tok.train_from_iterator(
            corpus, trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False)
        )
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        for b in range(256):
            vocab.setdefault(f"<0x{b:02X}>", len(vocab))
        spec["model"]["byte_fallback"] = True
        tok = Tokenizer.from_str(json.dumps(spec))
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
            + ([decoders.Strip(" ", 1, 0)] if prepend_space else [])
        )
    if added:
        from tokenizers import AddedToken

        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tok


@cache
def build_family(name: str) -> Family:
    """The family's stand-in tokenizer (a transformers PreTrainedTokenizerFast)
    with its real chat template, bos/eos/pad and special tokens."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    fixture = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    facts = FACTS.get(name, {})
    specials = _special_tokens(fixture, facts)
    corpus = CORPUS + [
        m["content"]
        for conv in conversations(name, fixture).values()
        for m in conv
        if isinstance(m.get("content"), str)
    ]
    tok = _train(
        facts.get("model", "byte_level"),
        specials,
        facts.get("added", []),
        facts.get("prepend_space", True),
        corpus,
    )
    bos = fixture.get("bos_token")
    if facts.get("add_bos") and bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    extra = [t for t in specials if t not in (bos, fixture.get("eos_token"), fixture.get("pad_token"))]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=fixture.get("eos_token"),
        pad_token=fixture.get("pad_token"),
        additional_special_tokens=extra,
        chat_template=fixture["chat_template"],
        model_max_length=None,
    )
    template = fixture["chat_template"]
    key = (
        "reasoning_content"
        if "reasoning_content" in template
        else "thinking"
        if "thinking" in template
        else None
    )
    turn_ends = frozenset(re.findall(r"<[^<>\s]+>|\[/?[A-Z_]+\]", fixture["turn_end_token"]))
    return Family(name, fixture, tokenizer, turn_ends, "tool_calls" in template, key)


def _call(call_id: str, name: str, args: dict) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
    }


def conversations(name: str, fixture: dict | None = None) -> dict[str, list[dict]]:
    """The property test's conversations, by kind (in OpenAI's shape, as a
    dataset row holds them: tool arguments as JSON text)."""
    fixture = fixture or json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    template = fixture["chat_template"]
    key = (
        "reasoning_content"
        if "reasoning_content" in template
        else "thinking"
        if "thinking" in template
        else None
    )
    u = [{"role": "user", "content": c} for c in ("日本の首都は？", "Two plus two?", "  Thank you! ")]
    a = [
        {"role": "assistant", "content": c}
        for c in ("東京です。", " Four, of course.\n", "どういたしまして。")
    ]
    convs = {
        "single": [u[0], a[0]],
        "multi": [u[0], a[0], u[1], a[1], u[2], a[2]],
        "system": [{"role": "system", "content": "丁寧に答えてください。"}, u[0], a[0], u[1], a[1]],
        "tools": [
            {"role": "user", "content": "明日の大阪の天気は？"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [_call("call00001", "get_weather", {"city": "大阪", "day": "tomorrow"})],
            },
            {"role": "tool", "tool_call_id": "call00001", "content": '{"forecast": "晴れ", "high": 20}'},
            {"role": "assistant", "content": "明日の大阪は晴れ、最高気温は二十度です。"},
        ],
    }
    if key:
        think = {"role": "assistant", "content": "4", key: "2 + 2 = 4, simple."}
        convs["reasoning"] = [u[1], think]
        convs["reasoning_multi"] = [u[1], think, u[0], {**a[0], key: "Japan's capital: Tokyo."}]
        convs["think_in_content"] = [
            u[1],
            {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
            u[0],
            {"role": "assistant", "content": "<think>\nrecall\n</think>\n\n東京です。"},
        ]
    if "tool_calls" in template and key:
        convs["reasoning_tools"] = [
            u[0],
            {
                "role": "assistant",
                "content": "",
                key: "I should look it up.",
                "tool_calls": [_call("call00002", "lookup", {"q": "capital of Japan"})],
            },
            {"role": "tool", "tool_call_id": "call00002", "content": "Tokyo"},
            a[0],
        ]
    return convs


# --- the trained text of each assistant turn, per family, from its documented format --------------------------


def _args(call: dict) -> dict:
    args = call["function"]["arguments"]
    return json.loads(args) if isinstance(args, str) else args


def _js(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _llama(messages, i, kwargs):
    m = messages[i]
    if m.get("tool_calls"):
        f = m["tool_calls"][0]["function"]
        return '{"name": "' + f["name"] + '", "parameters": ' + _js(_args(m["tool_calls"][0])) + "}<|eot_id|>"
    return m["content"].strip() + "<|eot_id|>"


def _qwen25(messages, i, kwargs):
    m = messages[i]
    if not m.get("tool_calls"):
        return m["content"] + "<|im_end|>"
    text = m["content"] or ""
    for c in m["tool_calls"]:
        text += (
            '\n<tool_call>\n{"name": "'
            + c["function"]["name"]
            + '", "arguments": '
            + _js(_args(c))
            + "}\n</tool_call>"
        )
    return text.removeprefix("\n") + "<|im_end|>"  # the prompt's '\n' is the one before the first call


def _qwen3(messages, i, kwargs):
    m = messages[i]
    last_query = max(
        k
        for k, x in enumerate(messages)
        if x["role"] == "user"
        and not (x["content"].startswith("<tool_response>") and x["content"].endswith("</tool_response>"))
    )
    content, reasoning = m["content"] or "", m.get("reasoning_content") or ""
    if "reasoning_content" not in m and "</think>" in content:
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = content.split("</think>")[-1].lstrip("\n")
    last = i == len(messages) - 1
    if i > last_query and (last or reasoning):
        text = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
        if last and kwargs.get("enable_thinking") is False and not reasoning:
            text = text.removeprefix(
                "<think>\n\n</think>\n\n"
            )  # the serving prompt has the empty think block
    else:
        text = content
    for k, c in enumerate(m.get("tool_calls") or []):
        text += (
            ("\n" if (k == 0 and content) or k else "")
            + '<tool_call>\n{"name": "'
            + c["function"]["name"]
            + '", "arguments": '
            + _js(_args(c))
            + "}\n</tool_call>"
        )
    return text + "<|im_end|>"


def _gemma(messages, i, kwargs):
    return messages[i]["content"].strip() + "<end_of_turn>"


def _mistral(messages, i, kwargs):
    m = messages[i]
    if m.get("tool_calls"):
        calls = ", ".join(
            _js({"name": c["function"]["name"], "arguments": _args(c)})[:-1] + ', "id": "' + c["id"] + '"}'
            for c in m["tool_calls"]
        )
        return "[TOOL_CALLS][" + calls + "]</s>"
    return m["content"] + "</s>"


def _phi(messages, i, kwargs):
    return messages[i]["content"] + "<|end|>"


def _gpt_oss(messages, i, kwargs):
    m = messages[i]
    later_final = any(x["role"] == "assistant" and "tool_calls" not in x for x in messages[i + 1 :])
    if m.get("tool_calls"):
        text = ""
        if not later_final and (m.get("content") or m.get("thinking")):
            text = (
                "<|channel|>analysis<|message|>"
                + (m.get("content") or m["thinking"])
                + "<|end|><|start|>assistant"
            )
        f = m["tool_calls"][0]["function"]
        return (
            text
            + " to=functions."
            + f["name"]
            + "<|channel|>commentary json<|message|>"
            + _js(_args(m["tool_calls"][0]))
            + "<|call|>"
        )
    if i == len(messages) - 1:
        think = (
            ("<|channel|>analysis<|message|>" + m["thinking"] + "<|end|><|start|>assistant")
            if "thinking" in m
            else ""
        )
        return think + "<|channel|>final<|message|>" + m["content"] + "<|return|>"
    return "<|channel|>final<|message|>" + m["content"] + "<|end|>"


def _llm_jp(messages, i, kwargs):
    return messages[i]["content"] + "</s>"


EXPECTED = {
    "llama-3.1-3.3-instruct": _llama,
    "qwen2.5-instruct": _qwen25,
    "qwen3": _qwen3,
    "gemma-2-it": _gemma,
    "mistral-nemo-instruct-2407": _mistral,
    "phi-3.5-mini-instruct": _phi,
    "gpt-oss-harmony": _gpt_oss,
    "llm-jp-3-instruct": _llm_jp,
}
