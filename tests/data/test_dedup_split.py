"""Dedup (exact and near) and the train/eval split's stability."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import DataValidationError, Deduplicator, split_of
from data.dedup import band_shape, collision_probability, content_key

ARTICLE = (
    "関所は旧街道で人と物の出入りを改める場所であった。通行手形を持たない者は通れず、"
    "女性や鉄砲の出入りは特に厳しく調べられた。箱根の関所は東海道の要所として知られる。"
) * 3


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


def test_key_index_holds_keys_at_5_bytes_each():
    import numpy as np

    from data.dedup import KeyIndex

    rng = random.Random(1)
    keys = np.array([rng.getrandbits(64) for _ in range(50_000)] + [0, 2**64 - 1], dtype=np.uint64)
    s = KeyIndex()
    s.MIN_PENDING = 1000  # many merges into the sorted ranges
    for i in range(0, len(keys), 777):
        assert not s.contains(keys[i : i + 777]).any()
        s.add(keys[i : i + 777])
    s.add(keys[:5])  # again: harmless
    assert s.contains(keys).all()
    assert not s.contains(np.array([rng.getrandbits(64) for _ in range(10_000)], dtype=np.uint64)).any()
    assert len(s._pending) < 1000 and s.nbytes <= 5.25 * len(keys) + 8 * 1000


_fingerprints = st.integers(0, 2**52 - 1).map(lambda f: f << 12)  # distinct keys, distinct fingerprints


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(_fingerprints | st.sampled_from([0, 2**64 - 4096]), max_size=40), max_size=25))
def test_key_index_answers_as_a_set_does(batches):
    """Pending keys, merged ones and keys added twice (in one batch or again later)."""
    import numpy as np

    from data.dedup import KeyIndex

    index, seen = KeyIndex(), set()
    index.MIN_PENDING = 16  # merges every few batches
    for batch in batches:
        keys = np.array(batch, dtype=np.uint64)
        assert index.contains(keys).tolist() == [k in seen for k in batch]
        index.add(keys if len(batch) % 2 else set(batch))  # an array or ints
        seen.update(batch)


def test_a_merge_holds_one_range_twice_at_most():
    """A merge grows the index's mappings in place and moves one range at a
    time: beside the index it holds the new keys and one range's copy, never
    the whole index twice."""
    import tracemalloc

    import numpy as np

    from data import dedup

    rng = np.random.default_rng(5)
    s = dedup.KeyIndex()
    s.MIN_PENDING = 20_000
    s.add(rng.integers(0, 2**63, 200_000, dtype=np.uint64))  # the first merge: 200k keys
    maps = list(s._maps)
    s.MIN_PENDING = 10**9
    s.add(rng.integers(0, 2**63, 20_000, dtype=np.uint64))
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    s._merge()  # 20k keys into every range
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    index = s.nbytes
    assert 5 * 220_000 <= index < 5.25 * 221_000 and s._maps == maps  # the same mappings, grown
    new_keys, one_range = 8 * 20_000, 8 * 220_000 // 64  # as uint64
    assert peak <= 6 * new_keys + 4 * one_range < index, (peak, index)
    assert s.contains(rng.integers(0, 2**63, 1000, dtype=np.uint64)).sum() == 0


def test_batch_decisions_equal_row_by_row_ones():
    """Within a batch, a row is checked against the rows before it in the same batch too."""
    import numpy as np

    rng = random.Random(2)
    pool = "あいうえおかきくけこさしすせそたちつてと"
    base = ["".join(rng.choice(pool) for _ in range(150)) for _ in range(40)]
    texts = base + [t.replace(t[10], "ん", 1) for t in base[:10]] + base[:5] + ["短い", "短い", ""]
    rng.shuffle(texts)
    one, batch = Deduplicator(), Deduplicator()
    expected = [check(one, t) for t in texts]
    assert {"exact_duplicate", "near_duplicate", None} == set(expected)
    got = []
    for chunk in (texts[:20], texts[20:]):
        exact = np.array([int.from_bytes(content_key(None, t)[:8], "little") for t in chunk], dtype=np.uint64)
        got += batch.check_batch(exact, batch.band_keys_batch(chunk))
    assert got == expected


def test_a_spilled_index_decides_the_same(tmp_path):
    """The index kept in unnamed files (page cache) gives the same decisions and
    leaves no file behind."""
    import numpy as np

    from data.dedup import KeyIndex

    rng = random.Random(4)
    keys = np.array([rng.getrandbits(64) for _ in range(30_000)], dtype=np.uint64)
    spilled, kept = KeyIndex(str(tmp_path)), KeyIndex()
    spilled.MIN_PENDING = kept.MIN_PENDING = 500
    for i in range(0, len(keys), 600):
        chunk = keys[i : i + 600]
        assert (spilled.contains(chunk) == kept.contains(chunk)).all()
        spilled.add(chunk[::2])
        kept.add(chunk[::2])
    assert (spilled.contains(keys) == kept.contains(keys)).all() and spilled.contains(keys).sum() == 15_000
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("chunk_chars", [1, 700, 1 << 15, 1 << 40])  # a text per chunk ... all in one
def test_batch_signatures_equal_one_at_a_time(monkeypatch, chunk_chars):
    import numpy as np

    from data.dedup import MinHasher

    rng = random.Random(3)
    texts = ["".join(rng.choice("関所手形abc ") for _ in range(rng.randint(0, 300))) for _ in range(400)]
    m = MinHasher()
    monkeypatch.setattr(MinHasher, "CHUNK_CHARS", chunk_chars)
    assert (m.signatures(texts) == np.stack([m.signature(t) for t in texts])).all()
    assert m.signatures([]).shape == (0, m.num_perm)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text()), max_size=4), st.text()
)
def test_content_key_is_the_digest_of_the_standard_json(turns, text):
    """The key hashes what json.dumps writes (the split and dedup of existing
    datasets depend on it), whichever encoder wrote the bytes."""
    import hashlib
    import json

    messages = [{"role": r, "content": c} for r, c in turns]
    for value, key in ((messages, content_key(messages, None)), (text, content_key(None, text))):
        reference = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        assert key == hashlib.blake2b(reference, digest_size=16).digest()


def test_a_lone_surrogate_is_a_counted_row_problem_not_a_crash(tmp_path, tiny_model_dir):
    from data import DatasetConfig, prepare, validate_rows

    src = tmp_path / "s.jsonl"
    src.write_text(
        '{"text": "half a pair \\ud800 here, then more text"}\n'
        '{"text": "a whole character \\ud83d\\ude00 here, then more text"}\n',
        encoding="utf-8",
    )
    cfg = DatasetConfig(name="s", path=str(src), format="text", on_error="skip", workers=1)
    m = prepare(cfg, tiny_model_dir, tmp_path / "out")
    assert m["rows"]["dropped"] == {"invalid_text": 1} and m["rows"]["out"] == 1
    with pytest.raises(
        DataValidationError, match=r"s.jsonl:1: text holds '\\ud800': half of a UTF-16 surrogate"
    ):
        validate_rows(cfg.model_copy(update={"on_error": "fail"}))
