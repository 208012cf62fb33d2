"""Dedup (exact and near) and the train/eval split's stability."""

import random

from data import Deduplicator, split_of
from data.dedup import band_shape, collision_probability, content_key

ARTICLE = ("関所は旧街道で人と物の出入りを改める場所であった。通行手形を持たない者は通れず、"
           "女性や鉄砲の出入りは特に厳しく調べられた。箱根の関所は東海道の要所として知られる。") * 3


def check(d, text):
    return d.check(content_key(None, text), text)


def test_exact_duplicate_is_dropped_and_the_first_kept():
    d = Deduplicator(near=False)
    assert check(d, ARTICLE) is None
    assert check(d, ARTICLE) == "exact_duplicate"
    assert check(d, ARTICLE + "。") is None  # exact only: one character differs


def test_near_duplicate_with_a_small_edit_is_dropped():
    d = Deduplicator()
    assert check(d, ARTICLE) is None
    assert check(d, ARTICLE.replace("箱根", "碓氷", 1)) == "near_duplicate"


def test_distinct_texts_are_kept():
    rng = random.Random(0)
    pool = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
    d = Deduplicator()
    texts = ["".join(rng.choice(pool) for _ in range(200)) for _ in range(300)]
    assert [check(d, t) for t in texts] == [None] * 300


def test_band_shape_catches_the_threshold():
    b, r = band_shape(64, 0.8)
    assert b * r <= 64 and collision_probability(0.8, b, r) >= 0.85 and collision_probability(0.5, b, r) < 0.1


def keys(n, start=0):
    return [content_key(None, f"行{i}") for i in range(start, start + n)]


def test_split_is_stable_when_rows_are_appended():
    old = keys(1000)
    before = [split_of(k, 0.1, seed=3) for k in old]
    after = [split_of(k, 0.1, seed=3) for k in old + keys(500, start=1000)]
    assert after[:1000] == before
    assert 60 < before.count("eval") < 140  # about 10%


def test_another_seed_gives_another_split_and_zero_means_all_train():
    ks = keys(500)
    assert [split_of(k, 0.2, 0) for k in ks] != [split_of(k, 0.2, 1) for k in ks]
    assert {split_of(k, 0.0, 0) for k in ks} == {"train"}


def test_key_set_holds_keys_compactly():
    from data.dedup import KeySet

    rng = random.Random(1)
    keys = [rng.getrandbits(64) for _ in range(50_000)] + [0]
    s = KeySet(capacity=16)
    for k in keys:
        s.add(k)
    s.add(keys[0])
    assert len(s) == len(keys) and all(k in s for k in keys)
    assert sum(rng.getrandbits(64) in s for _ in range(10_000)) == 0
    assert s.nbytes <= 8 * 1.5 * len(keys) / KeySet.MAX_LOAD + 8  # 12-18 bytes a key
