"""Text normalisation: NFKC folds the ways Japanese text is typed, and the
whitespace modes trim or collapse what they say, nothing else."""

import re
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from data.normalize import normalize_text

_TRAILING = re.compile(r"[ \t\u3000]+(?=\n)|[ \t\u3000]+\Z")
_BLANK_LINES = re.compile(r"\n{3,}")
_RUNS = re.compile(r"[ \t\u3000]+")


def reference(text: str, nfkc: bool, whitespace: str) -> str:
    """The rules written as regular expressions over the whole text (slower)."""
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    if whitespace == "keep":
        return text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if whitespace == "collapse":
        text = "\n".join(_RUNS.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", _TRAILING.sub("", text)).strip()


def test_nfkc_folds_full_width_and_half_width_forms():
    assert normalize_text("ＡＢＣ１２３　ｶﾀｶﾅ") == "ABC123 カタカナ"


def test_trim_keeps_inner_spaces_and_drops_trailing_ones_and_extra_blank_lines():
    text = "  first line \t\r\nsecond  line\u3000\r\n\r\n\r\n\r\nthird\n   \n"
    assert normalize_text(text, nfkc=False) == "first line\nsecond  line\n\nthird"


def test_collapse_makes_each_run_of_spaces_one():
    assert (
        normalize_text("a  \t b\u3000\u3000c \n\n\n  d  e ", nfkc=False, whitespace="collapse")
        == "a b c\n\nd e"
    )


def test_keep_changes_nothing_but_nfkc():
    assert normalize_text(" x \r\n\n\n\ny ", nfkc=False, whitespace="keep") == " x \r\n\n\n\ny "


@settings(max_examples=400, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab 　\t\r\n\u00a0ｱＡ１")), max_size=40),
    st.booleans(),
    st.sampled_from(["trim", "collapse", "keep"]),
)
def test_same_result_as_the_rules_written_as_regular_expressions(text, nfkc, whitespace):
    assert normalize_text(text, nfkc, whitespace) == reference(text, nfkc, whitespace)
