"""PII masking: personal information replaced by typed placeholders, with counts.

Each type is a pattern that finds candidates and a check that keeps only real
ones, so look-alikes (dates, order numbers, version strings, times) stay:

| type | placeholder | what counts |
| --- | --- | --- |
| EMAIL | <EMAIL> | local@domain.tld (ASCII, a TLD of 2+ letters) |
| IP_ADDRESS | <IP_ADDRESS> | IPv4 (each octet 0-255), IPv6 (valid, with a digit) |
| CREDIT_CARD | <CREDIT_CARD> | 13-19 digits (4-4-4-4, 4-6-5, or 13-19 unbroken), Luhn valid, a card-network prefix |
| MY_NUMBER | <MY_NUMBER> | 12 digits (4-4-4 or unbroken) with a valid My Number check digit |
| PHONE | <PHONE> | Japanese numbers: 0 or +81, 10 digits (landline, 0120, 0570) or 11 (050/070/080/090/020, 0800) |
| POSTAL_CODE | <POSTAL_CODE> | 〒 and 7 digits, or NNN-NNNN standing alone |

Digits may be full-width and separators hyphens, dashes, 'ー' or spaces, so
masking works with or without NFKC. Types run in the order above: a card or My
Number is never half-masked as a phone number.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable

D = "[0-9０-９]"
S = "[-‐‑–—−－ー \u3000]"  # separators seen in typed Japanese numbers
H = "[-‐‑–—−－ー]"  # hyphen-like only
# A number never starts or ends inside a longer one ("4111-1111-1111-1112" is not a
# 12-digit My Number followed by "-1112"); a space may still separate two numbers.
# Letters may touch a number ("TEL03-1234-5678"): masking errs on the safe side.
EDGE_L = f"(?<![0-9０-９])(?<![0-9０-９]{H})"
EDGE_R = f"(?![0-9０-９]|{H}[0-9０-９])"
_FULLWIDTH = str.maketrans("０１２３４５６７８９", "0123456789")
_DIGIT = re.compile("[0-9０-９]")
PII_TYPES = ("EMAIL", "IP_ADDRESS", "CREDIT_CARD", "MY_NUMBER", "PHONE", "POSTAL_CODE")


def digits_of(text: str) -> str:
    """The ASCII digits in `text`, full-width ones folded."""
    return "".join(c for c in text.translate(_FULLWIDTH) if c.isascii() and c.isdigit())


def luhn_valid(number: str) -> bool:
    """The Luhn checksum of a digit string (credit card numbers)."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def my_number_valid(number: str) -> bool:
    """Whether 12 digits carry a valid My Number (個人番号) check digit.

    Digits P1..P11 count from the right of the first eleven; weights Q are
    n+1 for n <= 6 and n-5 above; check = 0 if sum mod 11 <= 1 else 11 - (sum mod 11).
    """
    if len(number) != 12:
        return False
    body = [int(c) for c in number[:11]]
    total = sum(p * (n + 1 if n <= 6 else n - 5) for n, p in enumerate(reversed(body), start=1))
    r = total % 11
    return int(number[11]) == (0 if r <= 1 else 11 - r)


def _card(text: str) -> bool:
    n = digits_of(text)
    network = re.match(r"4|5[1-5]|2[2-7]|3[47]|35|30|36|38|6011|65|62", n)
    return 13 <= len(n) <= 19 and network is not None and luhn_valid(n)


def _phone(text: str) -> bool:
    n = digits_of(text)
    if text.lstrip("(（").startswith(("+", "＋")):
        rest = n[2:]
        n = "0" + (rest.removeprefix("0"))  # +81 (0)3 ... -> 03 ...
    if not n.startswith("0") or n[1] == "0":
        return False
    long_prefixes = ("020", "050", "070", "080", "090", "0800")
    if len(n) == 11:
        return n.startswith(long_prefixes)
    return len(n) == 10 and not n.startswith(long_prefixes[:5])


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return ":" not in text or any(c.isdigit() for c in text)


_DETECTORS: dict[str, tuple[re.Pattern, Callable[[str], bool]]] = {
    "EMAIL": (
        re.compile(
            r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
            r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![A-Za-z0-9-])"
        ),
        lambda _: True,
    ),
    "IP_ADDRESS": (
        re.compile(
            r"(?<![0-9A-Za-z.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9A-Za-z]|\.[0-9])"
            r"|(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Za-z:])"
        ),
        _ip,
    ),
    "CREDIT_CARD": (
        re.compile(
            rf"{EDGE_L}(?:{D}{{4}}(?:{S}{D}{{4}}){{3}}"
            rf"|{D}{{4}}{S}{D}{{6}}{S}{D}{{4,5}}|{D}{{13,19}}){EDGE_R}"
        ),
        _card,
    ),
    # Not a group of a longer spaced number ("4111 1111 1111 1112" is a card look-alike).
    "MY_NUMBER": (
        re.compile(rf"{EDGE_L}(?<!{D}{{4}}{S}){D}{{4}}{S}?{D}{{4}}{S}?{D}{{4}}(?!{S}{D}{{4}}){EDGE_R}"),
        lambda m: my_number_valid(digits_of(m)),
    ),
    "PHONE": (
        re.compile(
            rf"{EDGE_L}(?:(?:[+＋]81{S}?(?:[(（][0０][)）])?{S}?|[(（]?[0０]){D}{{0,4}}"
            rf"(?:[)）]{S}?|{S}|[(（])(?:{D}{{1,4}})(?:[)）]{S}?|{S}){D}{{3,4}}|[0０]{D}{{9,10}}){EDGE_R}"
        ),
        _phone,
    ),
    "POSTAL_CODE": (
        re.compile(
            rf"〒{S}?{D}{{3}}[-‐–−－ー]?{D}{{4}}{EDGE_R}"
            rf"|(?<![0-9０-９A-Za-z\-‐–−－ー]){D}{{3}}[-‐–−－ー]{D}{{4}}(?![0-9０-９A-Za-z\-‐–−－ー])"
        ),
        lambda _: True,
    ),
}


# The fewest digits a text must hold for each type to be found in it (masking only
# removes digits, so the count before the first type bounds every later one).
_MIN_DIGITS = {"EMAIL": 0, "IP_ADDRESS": 1, "CREDIT_CARD": 13, "MY_NUMBER": 12, "PHONE": 10, "POSTAL_CODE": 7}


def mask_pii(text: str, types: Iterable[str] = PII_TYPES, counts: Counter | None = None) -> str:
    """Replace the PII in `text` by `<TYPE>` placeholders.

    Args:
        types: the PII types to mask (see PII_TYPES).
        counts: a Counter to add the number of replacements per type to.

    Returns:
        The masked text.
    """
    wanted = set(types)
    digits = len(_DIGIT.findall(text))
    for kind in PII_TYPES:
        if (
            kind not in wanted
            or digits < _MIN_DIGITS[kind]
            or (kind == "EMAIL" and "@" not in text)
            or (kind == "IP_ADDRESS" and "." not in text and ":" not in text)
        ):
            continue  # it cannot be there: skip the regex (most prose has no digit at all)
        text = mask_type(text, kind, counts)
    return text


def mask_type(text: str, kind: str, counts: Counter | None = None) -> str:
    """Replace every `kind` (one of PII_TYPES) in `text` by `<kind>`, counting them in `counts`."""
    pattern, check = _DETECTORS[kind]

    def replace(m: re.Match) -> str:
        if not check(m.group()):
            return m.group()
        if counts is not None:
            counts[kind] += 1
        return f"<{kind}>"

    return pattern.sub(replace, text)
