"""Packing: boundaries, labels and positions, and, with the real tiny model,
no attention across the examples that share a sequence."""

import pytest

from data import Packer, tokenize_conversation
from data.chat import IGNORE_INDEX


def ex(n, start):
    ids = list(range(start, start + n))
    return ids, list(ids)


def test_first_fit_fills_open_sequences_and_marks_boundaries():
    p = Packer(10, open_bins=2)
    out = []
    for n, start in [(6, 100), (5, 200), (4, 300), (3, 400), (7, 500)]:
        out += list(p.add(*ex(n, start)))
    out += list(p.flush())
    out = [{k: v.tolist() for k, v in r.items()} for r in out]
    assert [r["example_lengths"] for r in out] == [[6, 4], [5, 3], [7]]
    first = out[0]
    assert first["input_ids"] == list(range(100, 106)) + list(range(300, 304))
    assert first["position_ids"] == list(range(6)) + list(range(4))
    # No loss on the first token of an example: it would be predicted from the previous example.
    assert first["labels"] == [IGNORE_INDEX] + list(range(101, 106)) + [IGNORE_INDEX] + list(range(301, 304))


def test_full_sequences_leave_at_once_and_every_token_is_kept():
    p = Packer(8, open_bins=4)
    emitted = list(p.add(*ex(8, 0)))
    assert [r["example_lengths"].tolist() for r in emitted] == [[8]]
    rows = [r for n in (3, 5, 2, 6, 1) for r in p.add(*ex(n, 10 * n))] + list(p.flush())
    assert all(len(r["input_ids"]) <= 8 for r in rows)
    assert sorted(t for r in rows for t in r["input_ids"]) == sorted(
        t for n in (3, 5, 2, 6, 1) for t in ex(n, 10 * n)[0]
    )


def test_an_example_longer_than_the_sequence_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        list(Packer(4).add(*ex(5, 0)))


def test_packed_examples_do_not_attend_to_each_other(tiny_model_dir, sample_conversations):
    """The documented contract: position_ids restart per example, attention_mask=None,
    use_cache=False -> transformers builds a block-diagonal causal mask."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    a, b = (tokenize_conversation(tok, c, 256) for c in sample_conversations[:2])
    packer = Packer(len(a["input_ids"]) + len(b["input_ids"]) + 5)
    [row] = [
        *packer.add(a["input_ids"], a["labels"]),
        *packer.add(b["input_ids"], b["labels"]),
        *packer.flush(),
    ]
    with torch.no_grad():
        packed = model(
            input_ids=torch.tensor([row["input_ids"].tolist()]),
            position_ids=torch.tensor([row["position_ids"].tolist()]),
            use_cache=False,
        ).logits[0]
        alone = [model(input_ids=torch.tensor([e["input_ids"]]), use_cache=False).logits[0] for e in (a, b)]
        leaky = model(input_ids=torch.tensor([row["input_ids"].tolist()]), use_cache=False).logits[0]
    n = len(a["input_ids"])
    torch.testing.assert_close(packed[:n], alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed[n:], alone[1], atol=1e-4, rtol=1e-4)
    # Without the restarted positions the second example would see the first one.
    assert not torch.allclose(leaky[n:], alone[1], atol=1e-3)
