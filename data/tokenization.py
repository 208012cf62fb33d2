"""Batched tokenisation: the same ids and labels as `data.chat.tokenize_conversation`,
with one tokenizer call for a whole batch of examples.

A conversation is rendered once by its chat template (`add_generation_prompt=False`)
and tokenised as a whole; its labels are the tokens of its assistant turns as
that render has them (`data.template_labels`: each turn starts where its serving
prompt ends and runs through its own turn-end token). The batch's renders go to
the Rust tokenizer in one call; each turn's characters become tokens through
the encoding's char-to-token map, and the batch's ids and labels are built as
two flat arrays (`TokenizedBatch`): per row, only its trained token ranges are
listed, never the tokens.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass
from itertools import chain

import numpy as np

from data.chat import IGNORE_INDEX
from data.records import Example, Problem
from data.template_labels import NOTE_SPLIT_TOKEN, SpanError, assistant_spans, template_profile


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


def _renderer(
    tokenizer, samples: list[list[dict]], add_generation_prompt: bool, template_kwargs: dict | None = None
):
    """(messages, tools=None) -> the chat template's text (with the generation prompt or not).

    Runs the tokenizer's compiled template directly on one context, reset
    between calls: jinja's `render` builds a new context on every call (copying
    the template's globals), most of its time for a short conversation. Checked
    against `apply_chat_template` itself on `samples`, in order and then the
    first again (a template that left state behind in the context would differ),
    which is used instead when they differ or the shortcut is unavailable. A
    conversation the template refuses (it raises) is rendered by
    `apply_chat_template`, which raises the same error.
    """
    kwargs = dict(template_kwargs or {})

    def slow(messages, tools=None):
        return tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        template = _compile_jinja_template(tokenizer.get_chat_template())
        scope = {
            **template.globals,
            **tokenizer.special_tokens_map,
            "tools": None,
            "documents": None,
            **kwargs,
            "add_generation_prompt": add_generation_prompt,
            "messages": None,
        }
        context, run = template.new_context(scope, shared=True), template.root_render_func
    except Exception:  # noqa: BLE001  (a transformers or jinja without the shortcut: the public API)
        return slow

    def fast(messages, tools=None):
        scope["messages"], scope["tools"] = messages, tools
        context.vars.clear()  # what the last call's top-level {% set %} left
        context.exported_vars.clear()
        try:
            return "".join(run(context))
        except Exception:  # noqa: BLE001
            return slow(messages, tools)

    try:
        same = bool(samples) and all(fast(m) == slow(m) for m in [*samples, samples[0]])
    except Exception:  # noqa: BLE001  (a sample is refused: let the public API say so per row)
        same = False
    return fast if same else slow


def _prompt_renderer(tokenizer, samples: list[list[dict]], template_kwargs: dict | None = None):
    """(messages, tools=None) -> the prompt a server sends for the next assistant turn (see `_renderer`)."""
    return _renderer(tokenizer, samples, True, template_kwargs)


def template_error(exc: Exception) -> Problem:
    """The row-level problem of a conversation the chat template raised on."""
    from jinja2 import TemplateError

    if isinstance(exc, TemplateError):  # the template's raise_exception: e.g. a role it does not take
        return Problem("template_error", f"the chat template refused the conversation: {exc}")
    return Problem(
        "template_error", f"the chat template failed on the conversation ({type(exc).__name__}: {exc})"
    )


def render_conversation(
    messages: list[dict],
    render_full,
    render_prompt,
    profile,
    notes: Counter | None = None,
    tools: list[dict] | None = None,
) -> tuple[str, list[tuple[int, int]]] | Problem:
    """(the conversation's render, the character span of each assistant turn in
    it), or the problem that keeps it from training. `tools`: the tool
    definitions rendered into every prompt, as a server renders them."""
    extra = (tools,) if tools else ()  # renderers without tools may take the messages alone
    try:
        full = render_full(messages, *extra)
        prompts = [
            render_prompt(messages[:i], *extra) for i, m in enumerate(messages) if m["role"] == "assistant"
        ]
    except Exception as exc:  # noqa: BLE001  (a template error of one row is that row's problem)
        return template_error(exc)
    try:
        return full, assistant_spans(full, prompts, messages, profile, notes)
    except SpanError as exc:
        return Problem(SpanError.code, str(exc))


def token_ranges(
    encoding, spans: list[tuple[int, int]], notes: Counter | None = None
) -> list[tuple[int, int]]:
    """The [first, last + 1) tokens of each character span: the tokens that start
    inside it. A token that starts before the span and reaches into it (the
    serving prompt does not end on a token boundary) is not trained; it is
    counted in `notes` (`prompt_end_inside_token`)."""
    ranges = []
    for a, b in spans:
        t0, t1 = encoding.char_to_token(a), encoding.char_to_token(b - 1)
        s0 = encoding.token_to_chars(t0)[0] if t0 is not None else None
        if s0 is None or t1 is None or s0 > a:  # characters with no token (normalised away): by the offsets
            starts = [o[0] for o in encoding.offsets]
            first, stop = bisect_left(starts, a), bisect_left(starts, b)
            split = first > 0 and encoding.offsets[first - 1][1] > a
        else:
            first, stop, split = t0 + (s0 < a), t1 + 1, s0 < a
        if split and notes is not None:
            notes[NOTE_SPLIT_TOKEN] += 1
        ranges.append((first, stop))
    return ranges


_TAILS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {text: ids}


def _anchored_ranges(
    tokenizer,
    profile,
    texts: list[str],
    spans_of: list[list[tuple[int, int]]],
    ids_of: list[list[int]],
    flat: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[list[tuple[int, int]] | None]:
    """The trained token ranges of each render from its ids alone (no offsets:
    converting them costs a fifth of the tokenizer's time), or None where
    this cannot be sure (then `token_ranges` decides, from offsets).

    The tokenizer splits the text around special tokens, so the k-th special
    token in the text is the k-th special id in the ids: a span ends just after
    one (its turn-end token). A span starts a short tail after the last special
    token before it (the header's "\n\n", say). That special token and the tail,
    tokenised together (so that a SentencePiece metaspace sees the tail where it
    is, not at the start of a text; cached: it is the same for most turns),
    give ids whose text is exactly theirs; when the render's ids from that
    special token on begin with exactly those ids, the span starts on a token
    boundary, just after them.
    """
    offsets, flat = flat if flat is not None else _flat_ids(ids_of)
    where = np.flatnonzero(np.isin(flat, np.asarray(profile.special_ids, dtype=np.int32)))
    cuts = np.searchsorted(where, offsets)
    within = (where - np.repeat(offsets[:-1], np.diff(cuts))).tolist()  # each special id's index in its row
    cuts = cuts.tolist()
    plans: list[list[tuple[int, str, int]] | None] = []
    for k, (text, spans) in enumerate(zip(texts, spans_of)):
        positions = within[cuts[k] : cuts[k + 1]]
        found = [m.span() for m in profile.specials.finditer(text)]
        if len(found) != len(positions):
            plans.append(None)
            continue
        ends = [e for _, e in found]
        plan = []
        for a, b in spans:
            last = bisect_right(ends, a) - 1
            close = bisect_left(ends, b)
            if close == len(ends) or ends[close] != b or (last >= 0 and found[last][0] >= a):
                plan = None
                break
            if last >= 0:  # the tail with the special token before it (the context it is tokenised in)
                plan.append((positions[last], text[found[last][0] : a], positions[close] + 1))
            else:
                plan.append((0, text[:a], positions[close] + 1))
        plans.append(plan)
    try:
        known = _TAILS.setdefault(tokenizer, {})
    except TypeError:
        known = {}
    missing = list({tail for plan in plans if plan for _, tail, _ in plan if tail and tail not in known})
    tails = dict(zip(missing, _encoder(tokenizer, add_special_tokens=False)(missing)))
    if len(known) < 4096:
        known.update((t, ids) for t, ids in tails.items() if len(t) <= 96)
    out: list[list[tuple[int, int]] | None] = []
    for plan, ids in zip(plans, ids_of):
        ranges = []
        for base, tail, stop in plan or ():
            head = (known.get(tail) or tails.get(tail) or []) if tail else []
            if (tail and not head) or ids[base : base + len(head)] != head:
                ranges = None
                break
            ranges.append((base + len(head), stop))
        out.append(ranges if plan is not None else None)
    return out


def _encoder(tokenizer, add_special_tokens: bool):
    """texts -> ids lists, straight from the Rust tokenizer (no offsets, no
    per-encoding conversion): the ids `tokenizer(texts)` gives."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return lambda texts: (
        [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)] if texts else []
    )


def _flat_ids(ids_of: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets: row i is [offsets[i], offsets[i + 1]), every row's ids one after another (int32))."""
    lengths = np.fromiter(map(len, ids_of), dtype=np.int64, count=len(ids_of))
    offsets = np.zeros(len(ids_of) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, np.fromiter(chain.from_iterable(ids_of), dtype=np.int32, count=int(offsets[-1]))


def _flatten(
    ids_of: list[list[int]],
    ranges_of: list[list[tuple[int, int]]],
    flat: tuple[np.ndarray, np.ndarray] | None = None,
) -> TokenizedBatch:
    """Each example's ids and trained token ranges -> flat ids and labels (tokens
    outside the ranges get IGNORE_INDEX), a few numpy operations for the whole
    batch. `flat`: `_flat_ids` of the rows with ids, when already made."""
    if flat is None:
        offsets, input_ids = _flat_ids(ids_of)
    else:  # the same ids; the offsets are the examples' (some have none)
        input_ids = flat[1]
        offsets = np.zeros(len(ids_of) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, ids_of), dtype=np.int64, count=len(ids_of)), out=offsets[1:])
    total = int(offsets[-1])
    per = np.fromiter(map(len, ranges_of), dtype=np.int64, count=len(ranges_of))
    bounds = (
        np.fromiter(
            chain.from_iterable(chain.from_iterable(ranges_of)), dtype=np.int64, count=2 * int(per.sum())
        ).reshape(-1, 2)
        + np.repeat(offsets[:-1], per)[:, None]
    )
    edges = np.zeros(total + 1, dtype=np.int64)  # +1 where a trained range starts, -1 where it ends
    np.add.at(edges, bounds[:, 0], 1)
    np.add.at(edges, bounds[:, 1], -1)
    trained = np.cumsum(edges[:-1]) > 0
    labels = np.where(trained, input_ids, np.int32(IGNORE_INDEX)).astype(np.int32)
    return TokenizedBatch(input_ids, labels, offsets)


def tokenize_batch(
    tokenizer, examples: list[Example], template_kwargs: dict | None = None, notes: Counter | None = None
) -> tuple[TokenizedBatch, dict[int, Problem]]:
    """Untruncated ids and labels for each example, and the problem of each
    conversation that cannot train (by index; it gets no tokens): the chat
    template refuses it, or one of its assistant turns is not in its render.

    Chat examples train on their assistant turns as the chat template renders
    the whole conversation (`data.template_labels`); raw text trains on every
    token and ends with the EOS token.

    Args:
        template_kwargs: extra chat template variables (e.g. enable_thinking),
            the ones a server renders prompts with.
        notes: a Counter, if given, for the dataset's report: conversations
            whose serving prompt is not a prefix of their render, the turn-end
            token of each turn, and so on (`data.template_labels`).
    """
    convs = [(i, ex.messages, ex.tools) for i, ex in enumerate(examples) if ex.messages is not None]
    problems: dict[int, Problem] = {}
    ids_of: list[list[int]] = [[] for _ in examples]
    ranges_of: list[list[tuple[int, int]]] = [[] for _ in examples]
    flat = None  # the chats' ids as flat arrays: the batch's, when it has no raw text
    if convs:
        samples = [convs[0][1], convs[-1][1]]  # checked without tools: the fast path sets them per call
        render_full = _renderer(tokenizer, samples, False, template_kwargs)
        render_prompt = _prompt_renderer(tokenizer, [m[:-1] for m in samples], template_kwargs)
        profile = template_profile(tokenizer, template_kwargs)
        chats, texts = [], []
        for i, messages, tools in convs:
            out = render_conversation(messages, render_full, render_prompt, profile, notes, tools)
            if isinstance(out, Problem):
                problems[i] = out
            else:
                chats.append((i, out[1]))
                texts.append(out[0])
        if texts:
            encoded = _encoder(tokenizer, add_special_tokens=False)(texts)
            flat = _flat_ids(encoded)
            ranges = _anchored_ranges(tokenizer, profile, texts, [spans for _, spans in chats], encoded, flat)
            slow = [k for k, r in enumerate(ranges) if r is None]
            if slow:  # by the encodings' offsets
                encodings = tokenizer.backend_tokenizer.encode_batch(
                    [texts[k] for k in slow], add_special_tokens=False
                )
                for k, enc in zip(slow, encodings):
                    ranges[k] = token_ranges(enc, chats[k][1], notes)
            for (i, _), ids, r in zip(chats, encoded, ranges):
                ids_of[i], ranges_of[i] = ids, r
    raw = [(i, ex.text + tokenizer.eos_token) for i, ex in enumerate(examples) if ex.messages is None]
    if raw:
        flat = None
        for (i, _), ids in zip(raw, _encoder(tokenizer, add_special_tokens=True)([t for _, t in raw])):
            ids_of[i], ranges_of[i] = ids, [(0, len(ids))]
    return _flatten(ids_of, ranges_of, flat), problems
