"""`optim.split_padding`: a batch whose rows differ widely in length (a tool-call
conversation of 600 tokens among short answers) runs as a few forward passes of
similar lengths, each padded on its own, instead of padding every row to the
longest. The step is the same step: each part's summed token losses are divided by
the whole batch's label count, so the parts' losses and gradients add up to the
unsplit batch's."""

import pytest
import torch

from train import LoraJobConfig, LoraRecipe
from train.examples import collate, length_groups, split_padded


def cfg(split: bool) -> LoraJobConfig:
    return LoraJobConfig(
        name="s",
        base_model="b@production",
        dataset="d.yaml",
        register_as="a",
        lora={"dropout": 0.0},
        optim={"warmup_steps": 0, "steps": 3, "batch_size": 8, "split_padding": split},
    )


@pytest.mark.parametrize(
    ("lengths", "groups"),
    [
        ([60] * 7 + [600], [list(range(7)), [7]]),
        ([600, 55, 60, 58, 600, 52, 59, 57], [[5, 1, 7, 3, 6, 2], [0, 4]]),
        ([40, 48, 44, 50], [[0, 2, 1, 3]]),  # similar lengths: one pass
        ([45, 80, 50, 75, 55, 70, 60, 62], [[0, 2, 4, 6, 7, 5, 3, 1]]),  # saves < 1/4: one pass
        ([10, 100, 1000], [[0, 1], [2]]),
        ([7], [[0]]),
    ],
)
def test_rows_are_grouped_where_separate_padding_computes_less(lengths, groups):
    got = length_groups(lengths)
    assert got == groups
    assert sorted(i for g in got for i in g) == list(range(len(lengths)))


def _batch(lengths: list[int], seed: int = 3) -> list:
    """Examples as `data` prepares them: ids, and labels on the second half (the answer)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 200, (n,), generator=g).tolist()
        out.append((ids, [-100] * (n // 2) + ids[n // 2 :]))
    return out


def test_parts_are_cut_to_their_own_longest_row_and_keep_every_label():
    inputs, _ = collate(_batch([60] * 7 + [600]), pad_id=0)
    parts, n_labels = split_padded(inputs)
    assert [tuple(p["input_ids"].shape) for p in parts] == [(7, 60), (1, 600)]
    assert n_labels == int((inputs["labels"][:, 1:] != -100).sum())
    assert sum(int((p["labels"][:, 1:] != -100).sum()) for p in parts) == n_labels
    packed = {
        "input_ids": inputs["input_ids"],
        "labels": inputs["labels"],
        "position_ids": inputs["attention_mask"],
    }
    assert split_padded(packed) == ([packed], None)  # packed rows have no padding to split
    assert split_padded(collate(_batch([50, 60, 70]), pad_id=0)[0])[1] is None  # too little to save


def _one_step(tiny_model_dir, tmp_path, split: bool, batch: list):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"tokens-{split}.parquet"
    pq.write_table(pa.table({"input_ids": [e[0] for e in batch], "labels": [e[1] for e in batch]}), str(path))
    recipe = LoraRecipe(cfg(split))
    recipe.setup(tiny_model_dir, path)
    inputs, _ = recipe.collate(batch)
    loss = recipe.forward_backward(inputs, last=True)
    grads = {n: p.grad.clone() for n, p in recipe.model.named_parameters() if p.requires_grad}
    return loss, grads


def test_a_split_batch_has_the_unsplit_loss_and_gradients(tiny_model_dir, tmp_path):
    batch = _batch([60] * 7 + [300])
    loss_whole, grads_whole = _one_step(tiny_model_dir, tmp_path, False, batch)
    loss_split, grads_split = _one_step(tiny_model_dir, tmp_path, True, batch)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5)
    assert grads_whole.keys() == grads_split.keys() and grads_whole
    for name, g in grads_whole.items():
        torch.testing.assert_close(grads_split[name], g, rtol=1e-4, atol=1e-6, msg=name)
