"""Batched tokenisation: the same ids and labels as `data.chat.tokenize_conversation`,
with one tokenizer call per kind of piece for a whole batch of examples.

`tokenize_conversation` calls the tokenizer three times per assistant turn;
here every turn's prompt and answer across the batch go to the Rust tokenizer
in two batched calls (the trained part of an answer ends at its EOS token), and
only the assembling is per row.
"""

from __future__ import annotations

from data.chat import IGNORE_INDEX
from data.records import Example


def _prompt_renderer(tokenizer, sample: list[dict[str, str]]):
    """messages -> the chat template's prompt text (with the generation prompt).

    Renders with the tokenizer's compiled template directly, which skips
    `apply_chat_template`'s per-call overhead (a third of its time); checked on
    `sample` against `apply_chat_template` itself, which is used instead when
    they differ or the shortcut is unavailable.
    """
    def slow(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(tokenizer.get_chat_template())
        extra = dict(tokenizer.special_tokens_map)
    except Exception:  # noqa: BLE001  (a transformers without the shortcut: the public API)
        return slow

    def fast(messages):
        return compiled.render(messages=messages, tools=None, documents=None, add_generation_prompt=True, **extra)

    return fast if fast(sample) == slow(sample) else slow


def _pieces(tokenizer, messages: list[dict[str, str]], render=None) -> list[tuple[str, str, str]]:
    """(prompt, answer as rendered, answer as trained) for each assistant turn."""
    eos = tokenizer.eos_token
    if render is None:
        def render(msgs):
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return [(render(messages[:i]), m["content"] + eos + "\n", m["content"] + eos)
            for i, m in enumerate(messages) if m["role"] == "assistant"]


def _assemble(turns: list[tuple[list[int], list[int], int]]) -> dict[str, list[int]]:
    """Ids and labels of one conversation from its turns' (prompt ids, answer ids, trained count)."""
    input_ids: list[int] = []
    labels: list[int] = []
    for prompt_ids, answer_ids, trained in turns:
        if prompt_ids[:len(input_ids)] == input_ids:
            new_prompt = prompt_ids[len(input_ids):]
        else:  # earlier turns re-tokenised differently in context: start from the full prompt
            input_ids, labels, new_prompt = [], [], prompt_ids
        input_ids += new_prompt + answer_ids
        labels += [IGNORE_INDEX] * len(new_prompt) + answer_ids[:trained] + [IGNORE_INDEX] * (len(answer_ids) - trained)
    return {"input_ids": input_ids, "labels": labels}


def _trained_count(eos: int | None, answer_ids: list[int]) -> int | None:
    """Tokens up to and including the answer's end marker `eos` (the EOS id when
    it is a special token: the tokenizer splits around those, so the count is
    exact); None means: tokenise the trained answer to find out."""
    if eos is None:
        return None
    for k in range(len(answer_ids) - 1, -1, -1):
        if answer_ids[k] == eos:
            return k + 1
    return None


def _encoder(tokenizer, add_special_tokens: bool):
    """texts -> ids lists, straight from the Rust tokenizer (no offsets, no
    per-encoding conversion): the ids `tokenizer(texts)` gives."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return lambda texts: [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)] if texts else []


def tokenize_batch(tokenizer, examples: list[Example]) -> list[dict[str, list[int]]]:
    """Untruncated ids and labels for each example.

    Chat examples train on assistant turns only (chat template, as a server
    renders it); raw text trains on every token and ends with the EOS token.
    """
    convs = [(i, ex.messages) for i, ex in enumerate(examples) if ex.messages is not None]
    render = _prompt_renderer(tokenizer, convs[0][1][:-1]) if convs else None
    chats = [(i, _pieces(tokenizer, messages, render)) for i, messages in convs]
    flat = [p for _, pieces in chats for p in pieces]
    encode = _encoder(tokenizer, add_special_tokens=False)
    prompts, answers = encode([p[0] for p in flat]), encode([p[1] for p in flat])
    eos = tokenizer.eos_token_id if tokenizer.eos_token in tokenizer.all_special_tokens else None
    trained = [_trained_count(eos, a) for a in answers]
    missing = [j for j, t in enumerate(trained) if t is None]
    for j, ids in zip(missing, encode([flat[j][2] for j in missing])):
        trained[j] = len(ids)
    out: list[dict[str, list[int]] | None] = [None] * len(examples)
    pos = 0
    for i, pieces in chats:
        n = len(pieces)
        out[i] = _assemble([(prompts[j], answers[j], trained[j]) for j in range(pos, pos + n)])
        pos += n
    texts = [(i, ex.text + tokenizer.eos_token) for i, ex in enumerate(examples) if ex.messages is None]
    if texts:
        for (i, _), ids in zip(texts, _encoder(tokenizer, add_special_tokens=True)([t for _, t in texts])):
            out[i] = {"input_ids": ids, "labels": list(ids)}
    return out
