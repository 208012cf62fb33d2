"""Labels from the chat template itself: where each assistant turn is in the
model's own rendering of a conversation.

No assumption about how a template marks turns. A conversation is rendered
once as a whole (`add_generation_prompt=False`: what is trained), and each
assistant turn i is found in that render from two things the template says:

- where the turn starts: the prompt a server sends to have the model write it,
  the render of `messages[:i]` with `add_generation_prompt=True`. When that is a
  prefix of the full render (it should be: the model is trained on exactly what
  it is served), the turn starts where the prompt ends, so whatever the template
  makes the model say before the content (Qwen3's `<think>` block on the last
  turn, gpt-oss's `<|channel|>final<|message|>`) is part of what it learns to say.
  When it is not (Mistral renders the system prompt only in a conversation that
  ends with a user turn), the turn is found by its content alone, and the
  conversation is counted under `serving_prompt_mismatch`: it trains, and the
  dataset's report says how many rows the model will see differently when served.
- where the turn ends: the first of the template's turn-end tokens after the
  turn's content (trimmed, as templates trim it; after `</think>` when the
  content carries its reasoning) and tool calls (name, then the arguments as
  JSON). The turn-end tokens are learnt once per tokenizer, by rendering a few
  probe conversations and taking the special token that follows each probe
  answer (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`, `</s>`, `<|end|>`, and for
  gpt-oss `<|end|>`, `<|return|>` and `<|call|>`), plus the EOS token. After a tool
  call the first special token may only close the call (`</tool_call>`, where a
  tokenizer makes the tags special): when a token that ends answers follows it
  before the tool result, the turn ends there, and the closing tag is not a turn end.

A turn whose content or tool call is not in its place in the render (the
template drops or rewrites it) cannot be labelled: `SpanError`, a row-level
problem. Content that a template drops beside a tool call (Llama-3.1 renders
only the call; gpt-oss drops the analysis before a later final answer) is
not an error: the call is what is trained (counted as `content_dropped`).

`turn_end_warnings` checks that the tokens turns end with are ones generation
stops at (the EOS token, or generation_config.json's eos ids): the Gemma case,
whose turns end with `<end_of_turn>` while its EOS is `<eos>`.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

NOTE_MISMATCH = (
    "serving_prompt_mismatch"  # conversations whose serving prompt is not a prefix of the training render
)
NOTE_CONTENT_DROPPED = "content_dropped"  # tool-call turns whose content the template does not render
NOTE_SPLIT_TOKEN = "prompt_end_inside_token"  # turns whose first token begins inside the serving prompt
NOTE_TURN_END = "turn_end "  # + token: assistant turns ending with that token


class SpanError(ValueError):
    """An assistant turn of a conversation that cannot be found in the template's render."""

    code = "assistant_turn_not_rendered"


@dataclass(frozen=True)
class TemplateProfile:
    """What labelling needs to know of one tokenizer's template, learnt once."""

    specials: re.Pattern  # any special token's text
    special_ids: tuple[int, ...]  # their ids
    turn_ends: frozenset[str]  # the special tokens that end an assistant turn
    probed: frozenset[str]  # those seen ending the probe answers (turn_ends less the EOS when unseen)
    generation_prompt: str = ""  # what add_generation_prompt appends ("" when not found)
    header: str = (
        ""  # the same without the template kwargs (Qwen3's, without enable_thinking's empty think block)
    )

    def continues(self, text: str, end: re.Match) -> bool:
        """Whether the turn-end token `end` is followed by the generation prompt:
        the assistant goes on (gpt-oss's analysis message, then its answer or call)."""
        return bool(self.generation_prompt) and text.startswith(self.generation_prompt, end.end())


_PROFILES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PROBE_ID = "probecall"  # 9 characters: Mistral's templates take no other length
_PROBE_ARGS = {"probe": "sekisho probe argument"}
_PROBE_RESULT = "Sekisho probe result"


def _probes() -> list[tuple[list[dict], list[str]]]:
    """Probe conversations and, in each, the texts a turn-end token must follow."""

    def user(k):
        return {"role": "user", "content": f"Sekisho probe question {k}"}

    def answer(k):
        return {"role": "assistant", "content": f"Sekisho probe answer {k}"}

    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": _PROBE_ID,
                "type": "function",
                "function": {"name": "sekisho_probe", "arguments": _PROBE_ARGS},
            }
        ],
    }
    result = {"role": "tool", "tool_call_id": _PROBE_ID, "content": _PROBE_RESULT}
    args = json.dumps(_PROBE_ARGS, ensure_ascii=False)
    return [
        ([user(1), answer(1)], [answer(1)["content"]]),
        ([user(1), answer(1), user(2), answer(2)], [answer(1)["content"], answer(2)["content"]]),
        ([user(1), call, result, answer(2)], [args, answer(2)["content"]]),
    ]


def special_tokens(tokenizer) -> list[str]:
    """The text of every special token (the tokenizer splits around them)."""
    found = set(tokenizer.all_special_tokens)
    found.update(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special)
    return sorted((t for t in found if t), key=len, reverse=True)


def template_profile(tokenizer, template_kwargs: dict | None = None) -> TemplateProfile:
    """The tokenizer's `TemplateProfile` (cached per tokenizer, template and kwargs)."""
    kwargs = template_kwargs or {}
    key = (tokenizer.get_chat_template(), json.dumps(kwargs, sort_keys=True, default=str))
    try:
        cache = _PROFILES.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    if key in cache:
        return cache[key]

    def render(messages, prompt=False, kwargs=kwargs):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt, **kwargs)

    def generation_prompt(kwargs):
        try:
            question = _probes()[0][0][:1]
            with_prompt, without = render(question, True, kwargs), render(question, False, kwargs)
        except Exception:  # noqa: BLE001
            return ""
        return with_prompt[len(without) :] if with_prompt.startswith(without) else ""

    texts = special_tokens(tokenizer)
    specials = re.compile("|".join(map(re.escape, texts)) or r"(?!)")
    special_ids = tuple(sorted({i for i in tokenizer.convert_tokens_to_ids(texts) if i is not None}))
    # The special token after each probe answer ends its turn. After a tool call's
    # arguments the first special token may instead close the call (`</tool_call>`,
    # where a tokenizer makes it special) with the turn ending later: there, a token
    # that ends answers comes before the tool result, and the call adds nothing.
    probed, after_calls = set(), []
    call_args = json.dumps(_PROBE_ARGS, ensure_ascii=False)
    for messages, after in _probes():
        try:
            text = render(messages)
        except Exception:  # noqa: BLE001  (a template that takes no tool calls, say: other probes decide)
            continue
        for needle in after:
            at = text.find(needle)
            token = specials.search(text, at + len(needle)) if at >= 0 else None
            if token and needle == call_args:
                after_calls.append((text, token))
            elif token:
                probed.add(token.group())
    for text, token in after_calls:
        result = text.find(_PROBE_RESULT, token.end())
        later = {
            m.group() for m in specials.finditer(text, token.end(), result if result >= 0 else len(text))
        }
        if not later & probed:
            probed.add(token.group())
    eos = tokenizer.eos_token
    ends = probed | ({eos} if eos and specials.fullmatch(eos) else set())
    gen = generation_prompt(kwargs)
    cache[key] = TemplateProfile(
        specials,
        special_ids,
        frozenset(ends),
        frozenset(probed),
        gen,
        generation_prompt({}) if kwargs else gen,
    )
    return cache[key]


def _needles(message: dict) -> tuple[str, list[str]]:
    """(content as a template shows it, the tool calls' names and arguments JSON, in order)."""
    content = message["content"] or ""
    if "</think>" in content:  # Qwen3 renders the text after the reasoning (and the reasoning apart)
        content = content.rsplit("</think>", 1)[1]
    calls = []
    for call in message.get("tool_calls", ()):
        f = call["function"]
        args = f["arguments"]
        calls += [f["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)]
    return content.strip(), calls


def _turn_end(profile: TemplateProfile, text: str, pos: int, limit: int | None = None) -> re.Match | None:
    """The first turn-end token at or after `pos` that ends the turn: one the
    generation prompt follows is passed over (the assistant goes on), unless
    that would pass `limit` (where the next assistant turn's prompt ends)."""
    search, ends, gen, first = profile.specials.search, profile.turn_ends, profile.generation_prompt, None
    while True:
        m = search(text, pos)
        if m is None or (limit is not None and m.start() >= limit):
            return first
        if m.group() in ends:
            if not (gen and text.startswith(gen, m.end())):  # profile.continues, inline: this is per turn
                return m
            first = first or m
        pos = m.end()


def assistant_spans(
    full: str, prompts: list[str], messages: list[dict], profile: TemplateProfile, notes=None
) -> list[tuple[int, int]]:
    """The (start, end) character span of each assistant turn in `full`, the
    conversation's render: what the model says, through its turn-end token.

    Args:
        prompts: for each assistant turn, in order, the render of the messages
            before it with the generation prompt (what a server sends).
        notes: a Counter, if given: counts `serving_prompt_mismatch` (once per
            conversation), `content_dropped` and the turn-end token of each turn.

    Raises:
        SpanError: a turn's content or tool call is not where it belongs in the render.
    """
    spans: list[tuple[int, int]] = []
    cursor, mismatch = 0, False
    turns = [(i, m) for i, m in enumerate(messages) if m["role"] == "assistant"]
    for k, ((i, message), prompt) in enumerate(zip(turns, prompts)):
        exact = len(prompt) >= cursor and full.startswith(prompt)
        mismatch |= not exact
        nxt = prompts[k + 1] if k + 1 < len(prompts) else ""
        limit = len(nxt) if nxt and full.startswith(nxt) else None
        pos = len(prompt) if exact else cursor
        first = None  # where the turn's first content or call is
        content, calls = _needles(message)
        end = None
        if content:
            at = _find_content(full, content, pos, profile, exact)
            if exact:  # within this turn: before its first turn-end token
                first_end = _turn_end(profile, full, pos, limit)
                at = at if first_end is None or at < first_end.start() else -1
                if at >= 0 and first_end is not None and first_end.start() >= at + len(content) and not calls:
                    end = first_end  # the usual case: the turn ends with the first turn-end token after it
            if at >= 0:
                first, pos = at, at + len(content)
            elif calls:  # the template renders only the tool call: that is what is trained
                if notes is not None:
                    notes[NOTE_CONTENT_DROPPED] += 1
            else:
                raise SpanError(
                    f"messages[{i}]: the assistant content is not in the chat template's rendering of "
                    f"the conversation{' after the serving prompt' if exact else ''}, so its labels "
                    f"cannot be placed (the template drops or rewrites it)"
                )
        for j, needle in enumerate(calls):
            at = full.find(needle, pos)
            if at < 0:
                what = "name" if j % 2 == 0 else "arguments"
                raise SpanError(
                    f"messages[{i}].tool_calls[{j // 2}]: the chat template does not render the tool "
                    f"call's {what} where it belongs, so its labels cannot be placed (does the template "
                    f"support tool calls?)"
                )
            first = at if first is None else first
            pos = at + len(needle)
        start = len(prompt) if exact else _fallback_start(full, cursor, first, message, profile)
        end = end or _turn_end(profile, full, pos, limit)
        if end is None:
            raise SpanError(
                f"messages[{i}]: no turn-end token ({', '.join(sorted(profile.turn_ends)) or 'none known'}) "
                f"after the assistant turn in the chat template's rendering, so its labels cannot end"
            )
        _check_gap(full, pos, end.start(), messages, i)
        spans.append((start, end.end()))
        cursor = end.end()
        if notes is not None:
            notes[NOTE_TURN_END + end.group()] += 1
    if mismatch and notes is not None:
        notes[NOTE_MISMATCH] += 1
    return spans


def _fallback_start(full: str, cursor: int, first: int, message: dict, profile: TemplateProfile) -> int:
    """Where a turn whose serving prompt is not a prefix of the render starts,
    given where its first content or call is: just after the generation prompt
    when the render has it before the content (gpt-oss: then
    `<|channel|>final<|message|>` is part of the turn), or after the generation
    prompt as the template writes it without the template kwargs (Qwen3 with
    enable_thinking off: the prompt's empty think block is not in the render);
    else where the content starts, with the leading whitespace the template kept."""
    for gen in dict.fromkeys((profile.generation_prompt, profile.header)):
        if gen and (j := full.rfind(gen, cursor, first)) >= 0:
            return j + len(gen)
    raw = message["content"] or ""
    raw = raw.rsplit("</think>", 1)[1] if "</think>" in raw else raw
    lead = raw[: len(raw) - len(raw.lstrip())]
    if lead and first - len(lead) >= cursor and full.startswith(lead, first - len(lead)):
        return first - len(lead)
    return first


def _find_content(full: str, content: str, pos: int, profile: TemplateProfile, exact: bool) -> int:
    """Where the content is after `pos`: its first occurrence when the turn's
    start is known; else (found by content alone) the first one that a turn-end
    token follows (not, say, a quote of it in the user's question)."""
    at = full.find(content, pos)
    if exact:
        return at
    while at >= 0:
        nxt = profile.specials.search(full, at + len(content))
        if nxt is not None and nxt.group() in profile.turn_ends:
            return at
        at = full.find(content, at + 1)
    return -1


def _check_gap(full: str, pos: int, end: int, messages: list[dict], i: int) -> None:
    """What lies between a turn's last content and its turn-end token must not
    be the next message (a template whose assistant turns end with no special
    token: the next turn-end found would be another turn's)."""
    if end - pos < 2 or i + 1 >= len(messages):
        return
    nxt = (messages[i + 1].get("content") or "").strip()
    if nxt and nxt in full[pos:end]:
        raise SpanError(
            f"messages[{i}]: the assistant turn does not end with a special token in the chat "
            f"template's rendering (the next one found is after messages[{i + 1}]), so its labels "
            f"cannot end"
        )


def stop_tokens(tokenizer, model_dir: str | Path | None = None) -> tuple[set[str], list[str] | None]:
    """(the tokens generation stops at: the EOS token and generation_config.json's
    eos ids when that file is in `model_dir`, those ids' tokens or None without the file)."""
    stops = {tokenizer.eos_token} if tokenizer.eos_token else set()
    config = Path(model_dir, "generation_config.json") if model_dir else None
    if config is None or not config.is_file():
        return stops, None
    try:
        ids = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return stops, None
    ids = [ids] if isinstance(ids, int) else [i for i in ids or [] if isinstance(i, int)]
    tokens = [t for t in tokenizer.convert_ids_to_tokens(ids) if t]
    return stops | set(tokens), tokens


def turn_end_warnings(
    tokenizer, model_dir: str | Path | None = None, used=None, template_kwargs: dict | None = None
) -> list[str]:
    """A warning for each token that ends trained assistant turns but that
    generation does not stop at: not the tokenizer's EOS, and not one of the eos
    ids of generation_config.json when that file is in `model_dir` (Gemma's
    `<end_of_turn>` with an older generation_config that lists only `<eos>`).
    A server must stop at it too, or the model writes on past its answer.

    Args:
        used: the turn-end tokens to check (those of a prepared dataset); by
            default those the template ends its turns with (probed).
    """
    if used is None:
        used = template_profile(tokenizer, template_kwargs=template_kwargs).probed
    stops, config_tokens = stop_tokens(tokenizer, model_dir)
    where = (
        f"nor one of generation_config.json's eos_token_id ({', '.join(config_tokens)})"
        if config_tokens is not None
        else "and no generation_config.json beside the tokenizer lists it"
    )
    return [
        f"the chat template ends assistant turns with {t!r}, which is not the tokenizer's EOS "
        f"{tokenizer.eos_token!r} {where}: the model learns to end its answers with {t!r}, so serve it with "
        f"{t!r} as a stop token (or add its id to generation_config.json's eos_token_id)"
        for t in sorted(set(used) - stops)
    ]
