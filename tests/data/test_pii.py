"""PII masking: positives and look-alike negatives for every type."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import mask_pii
from data.pii import PII_TYPES, luhn_valid, my_number_valid

POSITIVES = {
    "EMAIL": ["連絡先はtaro.yamada@example.co.jpです", "mail: a_b+tag@sub.example.com.", "<x-1@mail.go.jp>"],
    "IP_ADDRESS": ["サーバは192.168.10.1です", "10.0.0.255/24", "fe80::1", "2001:db8::8a2e:370:7334"],
    "CREDIT_CARD": [
        "カード4111 1111 1111 1111で",
        "5500-0000-0000-0004",
        "3782-822463-10005",
        "JCB 3530111333300000",
        "4111 1111 1111 1111 12/25",
    ],
    "MY_NUMBER": ["個人番号123456789018", "1234-5678-9018", "１２３４ ５６７８ ９０１８"],
    "PHONE": [
        "電話は03-1234-5678まで",
        "090-1234-5678",
        "+81-90-1234-5678",
        "+81 (0)3 1234 5678",
        "03(1234)5678",
        "(03)1234-5678",
        "０３ー１２３４ー５６７８",
        "0120-123-456",
        "09012345678",
        "0312345678",
        "TEL03-1234-5678",
    ],
    "POSTAL_CODE": ["〒100-0001 東京都千代田区", "〒1000001", "住所 100-0001 東京都"],
}

NEGATIVES = {
    "EMAIL": ["@username さん", "foo@bar", "a@b.c", "価格は10@100円"],
    "IP_ADDRESS": ["999.1.1.1", "1.2.3.4.5", "バージョン1.2.3", "12:30:45", "std::vector", "abc::def"],
    "CREDIT_CARD": ["4111 1111 1111 1112", "9111 1111 1111 1111", "4111-1111-1111-1111-1"],
    "MY_NUMBER": ["123456789012", "1234-5678-9012", "1234567890180"],
    "PHONE": [
        "2024-01-15",
        "03-1234-567",
        "1-2345-6789",
        "090-1234-56789",
        "0001-2222-3333",
        "00-1234-5678",
        "03-1234-5678-9",
    ],
    "POSTAL_CODE": ["123-45678", "1234-567", "12-34567", "03-123-4567"],
}


@pytest.mark.parametrize("kind,text", [(k, t) for k, ts in POSITIVES.items() for t in ts])
def test_positive_is_masked_with_its_type(kind, text):
    counts = Counter()
    masked = mask_pii(text, counts=counts)
    assert f"<{kind}>" in masked and dict(counts) == {kind: 1}, masked
    assert not any(c.isdigit() for c in masked.replace("12/25", "").replace("/24", "")), masked


@pytest.mark.parametrize("kind,text", [(k, t) for k, ts in NEGATIVES.items() for t in ts])
def test_look_alike_is_left_alone(kind, text):
    counts = Counter()
    assert mask_pii(text, counts=counts) == text and not counts


def test_every_type_has_positives_and_negatives():
    assert set(POSITIVES) == set(NEGATIVES) == set(PII_TYPES)


def test_only_the_configured_types_are_masked():
    text = "090-1234-5678 / taro@example.com"
    assert mask_pii(text, types=["EMAIL"]) == "090-1234-5678 / <EMAIL>"


def test_counts_add_up_over_a_text():
    counts = Counter()
    mask_pii("03-1234-5678、FAX 03-1234-5679、taro@example.com、〒100-0001", counts=counts)
    assert counts == Counter({"PHONE": 2, "EMAIL": 1, "POSTAL_CODE": 1})


def test_check_digits():
    assert my_number_valid("123456789018") and not my_number_valid("123456789011")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def _mask_every_type(text: str) -> tuple[str, Counter]:
    """mask_pii without its shortcuts: every pattern runs on every text."""
    from data.pii import mask_type

    counts = Counter()
    for kind in PII_TYPES:
        text = mask_type(text, kind, counts)
    return text, counts


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789０１-－ .:@〒+()abcＡ連")), max_size=48))
def test_the_shortcuts_skip_only_texts_where_nothing_can_be_found(text):
    counts = Counter()
    assert (mask_pii(text, counts=counts), counts) == _mask_every_type(text)
