"""Answer-quality metrics that need no network and no tokenizer download: exact
match, chrF (character n-gram F-score) and ROUGE-L over a Japanese-aware
segmentation, plus latency percentiles. Scores are in [0, 1]."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence


def normalize(text: str) -> str:
    """NFKC (full-width digits and letters to ASCII, half-width kana to full-width)
    and surrounding whitespace removed: the form answers are compared in."""
    return unicodedata.normalize("NFKC", text).strip()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised answer equals the normalised reference, else 0.0."""
    return float(normalize(prediction) == normalize(reference))


def _char_ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf(prediction: str, reference: str, max_order: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović 2015): character n-gram precision and recall for n = 1..max_order,
    each averaged over the orders both strings are long enough for, then combined
    as an F-beta score (beta 2 weighs recall twice as much). Whitespace is ignored.

    Args:
        prediction: the model's answer.
        reference: the expected answer.
        max_order: the longest character n-gram.
        beta: recall weight.

    Returns:
        The score in [0, 1]; 1.0 for two empty strings, 0.0 if only one is empty.
    """
    hyp = "".join(normalize(prediction).split())
    ref = "".join(normalize(reference).split())
    if not hyp or not ref:
        return float(hyp == ref)
    precisions, recalls = [], []
    for n in range(1, max_order + 1):
        h, r = _char_ngrams(hyp, n), _char_ngrams(ref, n)
        if not h or not r:
            break
        match = sum((h & r).values())
        precisions.append(match / sum(h.values()))
        recalls.append(match / sum(r.values()))
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p == 0 and r == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * p * r / (b2 * p + r)


def _script(ch: str) -> str:
    if ch.isspace():
        return "space"
    if "\u30a0" <= ch <= "\u30ff" or ch == "ー":
        return "katakana"
    if ch.isascii() and ch.isalnum():
        return "latin"
    if unicodedata.category(ch)[0] in "PSZ":
        return "punct"
    return "char"  # kanji, hiragana and anything else: one token per character


def tokenize_ja(text: str) -> list[str]:
    """A Japanese-aware segmentation with no dictionary: each kanji and hiragana is
    a token, runs of katakana (loanwords) and of ASCII letters/digits are one token
    each, punctuation and whitespace are dropped. Text is NFKC-normalised first, so
    full-width ＵＳＢ and half-width ｶﾅ segment like USB and カナ."""
    tokens: list[str] = []
    prev = None
    for ch in normalize(text):
        kind = _script(ch)
        if kind in ("space", "punct"):
            prev = None
            continue
        if kind in ("katakana", "latin") and kind == prev:
            tokens[-1] += ch
        else:
            tokens.append(ch)
        prev = kind
    return tokens


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        diag = 0
        for j, y in enumerate(b, 1):
            diag, row[j] = row[j], diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of `tokenize_ja` tokens, as
    precision against the answer and recall against the reference.

    Returns:
        The score in [0, 1]; 1.0 for two answers with no tokens, 0.0 if only one has none.
    """
    hyp, ref = tokenize_ja(prediction), tokenize_ja(reference)
    if not hyp or not ref:
        return float(hyp == ref)
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between the closest
    ranks, as numpy's default.

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def char_f1(prediction: str, reference: str) -> float:
    """llm-jp-eval's `char_f1`: fuzzywuzzy's token_sort_ratio / 100, which on text
    without spaces is 2·LCS / (|prediction| + |reference|) over characters, i.e. the
    F1 of LCS precision and recall. Tokens split on whitespace are sorted first, as
    token_sort_ratio does; NFKC applied.

    Returns:
        The score in [0, 1]; 1.0 for two empty strings.
    """
    hyp = " ".join(sorted(normalize(prediction).split()))
    ref = " ".join(sorted(normalize(reference).split()))
    if not hyp and not ref:
        return 1.0
    return 2 * _lcs_length(hyp, ref) / (len(hyp) + len(ref))


def set_f1(prediction: str, reference: str) -> float:
    """llm-jp-eval's `set_f1`: F1 of the sets of non-empty lines (each NFKC, stripped)."""
    hyp = {x for x in (normalize(s) for s in normalize(prediction).split("\n")) if x}
    ref = {x for x in (normalize(s) for s in normalize(reference).split("\n")) if x}
    if not hyp or not ref:
        return float(hyp == ref)
    tp = len(hyp & ref)
    if tp == 0:
        return 0.0
    p, r = tp / len(hyp), tp / len(ref)
    return 2 * p * r / (p + r)


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number in `text` (NFKC, thousands separators allowed), or None."""
    found = _NUMBER.findall(normalize(text))
    return float(found[-1].replace(",", "")) if found else None


def mathematical_equivalence(prediction: str, reference: str) -> float:
    """1.0 when the last number of the answer equals the reference's number (math
    tasks: the working may precede the result), else 0.0."""
    want, got = last_number(reference), last_number(prediction)
    return float(want is not None and got is not None and abs(want - got) < 1e-9)


def chosen_label(answer: str, choices: dict[str, str]) -> str | None:
    """The choice an answer picks: a label standing alone at its start ("c", "c.",
    "(c)", "ｃ：…"), else the one choice whose whole text the answer contains, else None."""
    text = normalize(answer).casefold()
    m = re.match(r"^[\s(（\[]*([a-z])(?![a-z])", text)
    if m and m.group(1) in choices:
        return m.group(1)
    found = [k for k, v in choices.items() if normalize(v).casefold() and normalize(v).casefold() in text]
    return found[0] if len(found) == 1 else None
