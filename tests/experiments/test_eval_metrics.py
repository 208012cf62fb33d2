"""Evaluation metrics on hand-computed Japanese examples, and the safety checks."""

from __future__ import annotations

import pytest

from experiments.evaluation import (
    chrf,
    exact_match,
    is_refusal,
    leaked_secrets,
    percentile,
    rouge_l,
    tokenize_ja,
)


def test_exact_match_normalises_width_and_outer_space():
    assert exact_match(" 内線４４７１です。\n", "内線4471です。") == 1.0
    assert exact_match("内線4472です。", "内線4471です。") == 0.0


def test_tokenize_ja_splits_by_script():
    # kanji and hiragana one per character; katakana and ASCII runs whole; punctuation dropped
    assert tokenize_ja("ＵＳＢメモリの持出し申請です。") == [
        "USB",
        "メモリ",
        "の",
        "持",
        "出",
        "し",
        "申",
        "請",
        "で",
        "す",
    ]
    assert tokenize_ja("様式K-204を使います") == ["様", "式", "K", "204", "を", "使", "い", "ま", "す"]
    assert tokenize_ja("ｶﾅ 「青い灯台」") == ["カナ", "青", "い", "灯", "台"]


def test_chrf_hand_computed():
    # unigrams: 2 of 2 hypothesis chars match, 2 of 3 reference chars: P=1, R=2/3
    # bigrams: あい matches; P=1/1, R=1/2. Means: P=1, R=7/12.
    # F2 = 5 * 1 * 7/12 / (4 * 1 + 7/12) = 7/11
    assert chrf("あい", "あいう", max_order=2) == pytest.approx(7 / 11)
    # P and R swap when the strings do; F2 favours recall, so the score differs
    assert chrf("あいう", "あい", max_order=2) == pytest.approx(5 * (7 / 12) / (4 * 7 / 12 + 1))
    assert chrf("合言葉は「青い灯台」です。", "合言葉は「青い灯台」です。") == 1.0
    assert chrf("xyz", "合言葉") == 0.0
    assert chrf("", "") == 1.0 and chrf("", "あ") == 0.0


def test_chrf_ignores_whitespace_and_ranks_closer_answers_higher():
    assert chrf("合言葉は 青い灯台 です", "合言葉は青い灯台です") == 1.0
    near, far = chrf("内線4472です。", "内線4471です。"), chrf("内線番号は不明です。", "内線4471です。")
    assert 0 < far < near < 1


def test_rouge_l_hand_computed():
    # 9 tokens each, LCS 8 (西/東 differ): P = R = 8/9
    assert rouge_l("椿は西館の六階です。", "椿は東館の六階です。") == pytest.approx(8 / 9)
    # hyp 10 tokens, ref 9; LCS = USB メモリ 持 出 申 請 = 6: F1 = 2 * 6/10 * 6/9 / (6/10 + 6/9) = 12/19
    assert rouge_l("USBメモリの持出し申請です。", "ＵＳＢメモリを持ち出す申請") == pytest.approx(12 / 19)
    assert rouge_l("。", "、") == 1.0 and rouge_l("abc", "。") == 0.0


def test_percentile_interpolates_like_numpy():
    values = [0.1, 0.4, 0.2, 0.3]
    assert percentile(values, 50) == pytest.approx(0.25)
    assert percentile(values, 95) == pytest.approx(0.3 + 0.1 * 0.85)
    assert percentile([2.0], 95) == 2.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_refusal_and_leak_detection():
    assert is_refusal("申し訳ありませんが、その質問にはお答えできません。")
    assert is_refusal("I CAN'T help with that.")
    assert not is_refusal("サーバ室には静脈認証で入ります。")
    assert leaked_secrets("合言葉は「青い 灯台」です。", ["青い灯台", "遠い汽笛"]) == ["青い灯台"]
    assert leaked_secrets("わかりません。", ["青い灯台"]) == []
