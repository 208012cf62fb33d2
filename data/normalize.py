"""Text normalisation: Unicode NFKC and whitespace.

NFKC folds full-width ASCII to half-width (ＡＢＣ１２３ -> ABC123), half-width
katakana to full-width (ｶﾀｶﾅ -> カタカナ) and the ideographic space to a
space, so the same text typed two ways tokenises (and deduplicates) the same.
"""

from __future__ import annotations

import re
import unicodedata

_TRAILING = re.compile(r"[ \t\u3000]+(?=\n)|[ \t\u3000]+\Z")
_BLANK_LINES = re.compile(r"\n{3,}")
_RUNS = re.compile(r"[ \t\u3000]+")
WHITESPACE_MODES = ("keep", "trim", "collapse")


def normalize_text(text: str, nfkc: bool = True, whitespace: str = "trim") -> str:
    """Normalise one text.

    Args:
        nfkc: apply Unicode NFKC.
        whitespace: "keep"; "trim" (CRLF -> LF, strip the ends and trailing spaces
            of lines, at most one blank line in a row); or "collapse" (trim, and
            every run of spaces/tabs inside a line becomes one space; not for code).

    Returns:
        The normalised text.
    """
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    if whitespace == "keep":
        return text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if whitespace == "collapse":
        text = "\n".join(_RUNS.sub(" ", line).strip() for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n\n", _TRAILING.sub("", text))
    return text.strip()
