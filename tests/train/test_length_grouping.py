"""`optim.group_by_length`: each epoch's batches hold the same examples as without
it, regrouped by length, so that a few long rows (tool prompts, documents) stop
padding every batch they land in; the order is still a function of the seed, and
a run resumed from a checkpoint continues with exactly the batches it would have
had."""

import pytest
import torch

from train import LoraJobConfig, LoraRecipe
from train.examples import LENGTH_GROUP_BATCHES, batch_order

N = 83  # 10 batches of 8 and 3 examples that fill none


def cfg(grouped: bool, batch_size: int = 8, **job):
    return LoraJobConfig(
        name="g",
        base_model="b@production",
        dataset="d.yaml",
        register_as="a",
        log_every=1,
        optim={"warmup_steps": 0, "steps": 12, "batch_size": batch_size, "group_by_length": grouped},
        **job,
    )


def mixed_lengths(n: int = N, seed: int = 1) -> list[int]:
    """Mostly short rows and one in ten long: the shape of Q/A data with a few tool calls."""
    g = torch.Generator().manual_seed(seed)
    short = torch.randint(20, 60, (n,), generator=g).tolist()
    return [600 + i if i % 10 == 3 else s for i, s in enumerate(short)]


def epochs(c, lengths, count: int, rank: int = 0, world: int = 1, start: int = 0) -> list[list[int]]:
    it = batch_order(len(lengths), c, rank, world, start, lengths)
    return [next(it) for _ in range(count)]


def padded_tokens(batches, lengths) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_each_epoch_holds_the_same_examples_with_less_padding():
    lengths = mixed_lengths()
    per_epoch = N // 8
    plain = epochs(cfg(False), lengths, 3 * per_epoch)
    grouped = epochs(cfg(True), lengths, 3 * per_epoch)
    for e in range(3):
        a, b = plain[e * per_epoch : (e + 1) * per_epoch], grouped[e * per_epoch : (e + 1) * per_epoch]
        assert sorted(i for x in a for i in x) == sorted(i for x in b for i in x), f"epoch {e}"
        assert [len(x) for x in b] == [8] * per_epoch
        # The longest example's batch goes first: a batch that cannot fit fails at step 1.
        assert max(lengths[i] for i in b[0]) == max(lengths[i] for x in b for i in x)
    assert padded_tokens(grouped, lengths) < 0.5 * padded_tokens(plain, lengths)
    # Epochs still differ (the order is shuffled, not sorted once).
    assert grouped[:per_epoch] != grouped[per_epoch : 2 * per_epoch]


def test_the_order_is_a_function_of_the_seed_and_resumes_exactly():
    lengths = mixed_lengths()
    run = epochs(cfg(True), lengths, 25)
    assert run == epochs(cfg(True), lengths, 25)
    assert epochs(cfg(True), lengths, 25, start=13) == epochs(cfg(True), lengths, 38)[13:]
    assert epochs(cfg(True, seed=1), lengths, 25) != run


def test_without_lengths_or_the_switch_the_order_is_unchanged():
    lengths = mixed_lengths()
    plain = epochs(cfg(False), lengths, 20)
    it = batch_order(N, cfg(True), 0, 1, 0, None)
    assert [next(it) for _ in range(20)] == plain


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_regroups_only_its_own_shard(world):
    lengths = mixed_lengths()
    for rank in range(world):
        per_epoch = len(range(rank, N, world)) // 8
        plain = epochs(cfg(False), lengths, per_epoch, rank, world)
        grouped = epochs(cfg(True), lengths, per_epoch, rank, world)
        assert sorted(i for b in plain for i in b) == sorted(i for b in grouped for i in b)


def test_windows_bound_how_far_an_example_moves():
    """Regrouping sorts windows of LENGTH_GROUP_BATCHES batches, not the whole epoch."""
    n = 8 * LENGTH_GROUP_BATCHES * 2 + 5
    lengths = mixed_lengths(n)
    c = cfg(True)
    plain = epochs(cfg(False), lengths, 2 * LENGTH_GROUP_BATCHES)
    grouped = epochs(c, lengths, 2 * LENGTH_GROUP_BATCHES)
    first_window = {i for b in plain[:LENGTH_GROUP_BATCHES] for i in b}
    grouped_windows = [set(b) for b in grouped]
    # Every grouped batch comes wholly from one window of the plain order.
    assert all(w <= first_window or not (w & first_window) for w in grouped_windows)


def test_a_recipe_trains_with_grouped_batches(tiny_model_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = [n // 10 for n in mixed_lengths(40)]
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(3, 200, (n,), generator=g).tolist() for n in lengths]
    path = tmp_path / "tokens.parquet"
    pq.write_table(pa.table({"input_ids": ids, "labels": ids}), str(path))
    recipe = LoraRecipe(cfg(True, batch_size=4))
    recipe.setup(tiny_model_dir, path)
    seen, losses = [], []
    recipe.train(
        on_metrics=lambda m, s: losses.append(m["loss"]),
        on_step=lambda s: seen.append(list(recipe.batch_ids)),
    )
    assert len(losses) == 12 and all(loss == loss for loss in losses)
    assert seen == epochs(cfg(True, batch_size=4), lengths, 12)
    assert losses[-1] < losses[0]
