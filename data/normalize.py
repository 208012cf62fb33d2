"""Text normalisation: Unicode NFKC and whitespace.

NFKC folds full-width ASCII to half-width (ＡＢＣ１２３ -> ABC123), half-width
katakana to full-width (ｶﾀｶﾅ -> カタカナ) and the ideographic space to a
space, so the same text typed two ways tokenises (and deduplicates) the same.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = " \t\u3000"  # what "trailing spaces" means here
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
    if "\n" not in text:  # one line (most chat turns): its ends are all there is to trim
        return (_RUNS.sub(" ", text) if whitespace == "collapse" else text).strip()
    if whitespace == "collapse":
        text = "\n".join(_RUNS.sub(" ", line).strip() for line in text.split("\n"))
    else:  # line by line: a regex for trailing spaces would try every space of the text
        text = "\n".join(line.rstrip(_SPACES) for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()
