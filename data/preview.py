"""Examples as the model sees them, with the trained tokens marked; the
manifest as rows of a table (for `sekisho data inspect`)."""

from __future__ import annotations

from dataclasses import dataclass

from data.chat import IGNORE_INDEX


@dataclass(frozen=True)
class Span:
    """Consecutive tokens of one example that are all trained or all not."""

    text: str
    trained: bool
    example: int  # index of the example inside a packed row (0 when unpacked)


def render_example(
    tokenizer, input_ids: list[int], labels: list[int], position_ids: list[int] | None = None
) -> list[Span]:
    """Split a row into spans of trained / untrained text, per packed example.

    Spans are decoded as runs, not token by token: a byte-level tokenizer spends
    several tokens on one kanji, and a lone token decodes to a broken character.
    """
    spans: list[Span] = []
    example, start = 0, 0
    for i in range(1, len(input_ids) + 1):
        boundary = i < len(input_ids) and position_ids is not None and position_ids[i] == 0
        changed = i < len(input_ids) and (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX)
        if i == len(input_ids) or boundary or changed:
            spans.append(Span(tokenizer.decode(input_ids[start:i]), labels[start] != IGNORE_INDEX, example))
            start = i
            example += boundary
    return spans


def marked_text(spans: list[Span], open_mark: str = "⟦", close_mark: str = "⟧") -> str:
    """Plain text with trained spans between marks and a rule between packed examples."""
    out, example = [], 0
    for s in spans:
        if s.example != example:
            out.append(f"\n──── example {s.example + 1} ────\n")
            example = s.example
        out.append(f"{open_mark}{s.text}{close_mark}" if s.trained else s.text)
    return "".join(out)


def manifest_rows(manifest: dict) -> list[tuple[str, str]]:
    """(field, value) pairs: the manifest flattened for a two-column table."""
    rows = [
        ("name", manifest["name"]),
        ("version", manifest["version"]),
        ("format", manifest.get("format", "chat")),
        ("source", f"{manifest['source']['path']} (sha256 {manifest['source']['sha256'][:12]})"),
    ]
    rows += [
        (f"  {s['name']}", f"{s['rows_in']} rows, {s['bytes']} bytes, sha256 {s['sha256'][:12]}")
        for s in manifest.get("sources", [])
    ]
    r = manifest["rows"]
    rows += [
        (
            "rows in / out",
            f"{r['in']} / {r['out']} (train {r.get('train', r['out'])}, eval {r.get('eval', 0)})",
        )
    ]
    rows += [(f"  dropped: {code}", str(n)) for code, n in r["dropped"].items()]
    rows += [("tokens (trained)", f"{manifest['tokens']} ({manifest['trained_tokens']})")]
    rows += [
        (f"  {name}", f"{s['sequences']} sequences, {s['examples']} examples, {s['tokens']} tokens")
        for name, s in manifest.get("splits", {}).items()
    ]
    rows += [(f"pii: {k}", str(n)) for k, n in manifest.get("pii", {}).items()]
    packing = manifest.get("packing", {})
    rows += [
        ("packing", f"{packing['length']} tokens" if packing.get("enabled") else "off"),
        ("max_length", str(manifest["max_length"])),
        ("tokenizer sha256", manifest["tokenizer_sha256"][:16]),
    ]
    template = manifest.get("chat_template", {})
    if template.get("turn_end_tokens"):
        rows += [("turns end with", ", ".join(f"{t} ({n})" for t, n in template["turn_end_tokens"].items()))]
    rows += [("warning", w) for w in template.get("warnings", [])]
    return rows
