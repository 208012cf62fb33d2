"""Batched tokenisation: the same ids and labels as `data.chat.tokenize_conversation`,
with one tokenizer call per kind of piece for a whole batch of examples.

`tokenize_conversation` calls the tokenizer three times per assistant turn;
here every turn's prompt and answer across the batch go to the Rust tokenizer
in two batched calls (the trained part of an answer ends at its EOS token), and
the batch's ids and labels are built as two flat arrays (`TokenizedBatch`):
per row, only the pieces are listed, never the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np

from data.chat import IGNORE_INDEX
from data.records import Example, Problem


@dataclass
class TokenizedBatch:
    """Ids and labels of a batch's examples, one after another (int32), and
    where each example starts: example i is [offsets[i], offsets[i + 1])."""

    input_ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray  # int64, len(examples) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> dict[str, list[int]]:
        """Example i as lists (the form `tokenize_conversation` returns)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return {"input_ids": self.input_ids[a:b].tolist(), "labels": self.labels[a:b].tolist()}


def _prompt_renderer(tokenizer, samples: list[list[dict[str, str]]]):
    """messages -> the chat template's prompt text (with the generation prompt).

    Runs the tokenizer's compiled template directly on one context, reset
    between calls: jinja's `render` builds a new context on every call (copying
    the template's globals), most of its time for a short conversation. Checked
    against `apply_chat_template` itself on `samples`, in order and then the
    first again (a template that left state behind in the context would differ),
    which is used instead when they differ or the shortcut is unavailable. A
    conversation the template refuses (it raises) is rendered by
    `apply_chat_template`, which raises the same error.
    """
    def slow(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        template = _compile_jinja_template(tokenizer.get_chat_template())
        scope = {**template.globals, **tokenizer.special_tokens_map,
                 "tools": None, "documents": None, "add_generation_prompt": True, "messages": None}
        context, run = template.new_context(scope, shared=True), template.root_render_func
    except Exception:  # noqa: BLE001  (a transformers or jinja without the shortcut: the public API)
        return slow

    def fast(messages):
        scope["messages"] = messages
        context.vars.clear()  # what the last call's top-level {% set %} left
        context.exported_vars.clear()
        try:
            return "".join(run(context))
        except Exception:  # noqa: BLE001
            return slow(messages)

    try:
        same = all(fast(m) == slow(m) for m in [*samples, samples[0]])
    except Exception:  # noqa: BLE001  (a sample is refused: let the public API say so per row)
        same = False
    return fast if same else slow


def _pieces(tokenizer, messages: list[dict[str, str]], render=None) -> list[tuple[str, str, str]]:
    """(prompt, answer as rendered, answer as trained) for each assistant turn."""
    eos = tokenizer.eos_token
    if render is None:
        def render(msgs):
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return [(render(messages[:i]), m["content"] + eos + "\n", m["content"] + eos)
            for i, m in enumerate(messages) if m["role"] == "assistant"]


def _segments(turns: list[tuple[list[int], list[int], int]]) -> list[tuple[list[int], int]]:
    """A conversation as (ids, trained count) segments from its turns' (prompt ids,
    answer ids, trained count): each turn adds the part of its prompt not already
    there (nothing trained), then its answer (the first `trained` ids trained)."""
    if len(turns) == 1:  # the usual case: nothing before the prompt
        prompt_ids, answer_ids, trained = turns[0]
        return [(prompt_ids, 0), (answer_ids, trained)]
    input_ids: list[int] = []
    segments: list[tuple[list[int], int]] = []
    for prompt_ids, answer_ids, trained in turns:
        if prompt_ids[:len(input_ids)] == input_ids:
            new_prompt = prompt_ids[len(input_ids):]
        else:  # earlier turns re-tokenised differently in context: start from the full prompt
            input_ids, segments, new_prompt = [], [], prompt_ids
        segments += [(new_prompt, 0), (answer_ids, trained)]
        input_ids += new_prompt + answer_ids
    return segments


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


def _flatten(per_example: list[list[tuple[list[int], int]]]) -> TokenizedBatch:
    """Segments of each example -> flat ids and labels (a segment's ids past its
    trained count get IGNORE_INDEX), a few numpy operations for the whole batch."""
    ids_of = [ids for segments in per_example for ids, _ in segments]
    seg_len = np.fromiter(map(len, ids_of), dtype=np.int64, count=len(ids_of))
    seg_trained = np.fromiter((t for segments in per_example for _, t in segments), dtype=np.int64,
                              count=len(ids_of))
    total = int(seg_len.sum())
    input_ids = np.fromiter(chain.from_iterable(ids_of), dtype=np.int32, count=total)
    # position of each token within its segment, against the segment's trained count
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(seg_len) - seg_len, seg_len)
    labels = np.where(within < np.repeat(seg_trained, seg_len), input_ids, np.int32(IGNORE_INDEX)).astype(np.int32)
    per = np.fromiter(map(len, per_example), dtype=np.int64, count=len(per_example))  # segments per example
    example_of = np.repeat(np.arange(len(per_example)), per)
    offsets = np.zeros(len(per_example) + 1, dtype=np.int64)
    np.cumsum(np.bincount(example_of, weights=seg_len, minlength=len(per_example)).astype(np.int64), out=offsets[1:])
    return TokenizedBatch(input_ids, labels, offsets)


def tokenize_batch(tokenizer, examples: list[Example]) -> tuple[TokenizedBatch, dict[int, Problem]]:
    """Untruncated ids and labels for each example, and the problem of each
    conversation the chat template refuses (by index; it gets no tokens).

    Chat examples train on assistant turns only (chat template, as a server
    renders it); raw text trains on every token and ends with the EOS token.
    """
    from jinja2 import TemplateError

    convs = [(i, ex.messages) for i, ex in enumerate(examples) if ex.messages is not None]
    render = _prompt_renderer(tokenizer, [convs[0][1][:-1], convs[-1][1][:-1]]) if convs else None
    chats, problems = [], {}
    for i, messages in convs:
        try:
            chats.append((i, _pieces(tokenizer, messages, render)))
        except TemplateError as exc:  # the template's raise_exception: e.g. a role it does not take
            problems[i] = Problem("template_error", f"the chat template refused the conversation: {exc}")
    flat = [p for _, pieces in chats for p in pieces]
    encode = _encoder(tokenizer, add_special_tokens=False)
    prompts, answers = encode([p[0] for p in flat]), encode([p[1] for p in flat])
    eos = tokenizer.eos_token_id if tokenizer.eos_token in tokenizer.all_special_tokens else None
    trained = [_trained_count(eos, a) for a in answers]
    missing = [j for j, t in enumerate(trained) if t is None]
    for j, ids in zip(missing, encode([flat[j][2] for j in missing])):
        trained[j] = len(ids)
    per_example: list[list[tuple[list[int], int]]] = [[] for _ in examples]
    pos = 0
    for i, pieces in chats:
        n = len(pieces)
        per_example[i] = _segments(list(zip(prompts[pos:pos + n], answers[pos:pos + n], trained[pos:pos + n])))
        pos += n
    texts = [(i, ex.text + tokenizer.eos_token) for i, ex in enumerate(examples) if ex.messages is None]
    if texts:
        for (i, _), ids in zip(texts, _encoder(tokenizer, add_special_tokens=True)([t for _, t in texts])):
            per_example[i] = [(ids, len(ids))]
    return _flatten(per_example), problems
