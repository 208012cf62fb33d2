"""`epochs` instead of `optim.steps`: one of the two, the steps derived from the
prepared data (size, batch size, accumulation, workers), the same on every rank,
and a resumed run continues exactly as the uninterrupted one."""

import pytest
import torch
from pydantic import ValidationError

from foundation import ConfigError
from train import LoraJobConfig, LoraRecipe, TrainJobConfig
from train.examples import count_examples
from train.loop import resolve_epochs

N_EXAMPLES = 30


def job(epochs=2, **optim):
    return LoraJobConfig(
        name="e",
        base_model="b@production",
        dataset="d.yaml",
        register_as="a",
        log_every=1,
        epochs=epochs,
        optim={"warmup_steps": 0, "lr": 1e-2, "batch_size": 4, **optim},
    )


@pytest.fixture
def tokens(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 200, (N_EXAMPLES, 16), generator=g).tolist()
    path = tmp_path / "tokens.parquet"
    pq.write_table(pa.table({"input_ids": ids, "labels": ids}), str(path))
    return path


def test_epochs_or_steps_not_both(tmp_path):
    with pytest.raises(ValidationError, match="give either epochs or optim.steps"):
        job(epochs=2, steps=10)
    path = tmp_path / "t.yaml"
    path.write_text(
        "name: e\nbase_model: b@p\ndataset: d.yaml\nregister_as: a\noptim:\n  steps: 100\nepochs: 2\n"
    )
    with pytest.raises(ConfigError, match=rf"{path}:7: epochs: .*give either epochs or optim.steps"):
        TrainJobConfig.from_yaml(path)
    assert job().optim.steps == 1000 and job(epochs=None).epochs is None  # neither: the default steps


@pytest.mark.parametrize(
    "world,accum,steps",
    [
        (1, 1, 14),  # 30 examples in batches of 4: 7 micro-batches an epoch, x 2 epochs
        (1, 2, 7),
        (1, 3, 4),  # 14 // 3: rounded down, no example seen a third time
        (2, 1, 6),  # 15 examples a rank: 3 micro-batches an epoch
        (4, 1, 2),  # 7 or 8 a rank: every rank counts the smallest shard's 1 micro-batch
    ],
)
def test_steps_follow_from_the_data(world, accum, steps):
    cfg = resolve_epochs(job(grad_accum_steps=accum), N_EXAMPLES, world)
    assert cfg.optim.steps == steps and cfg.epochs is None
    assert resolve_epochs(cfg, 5, world) is cfg  # already resolved: unchanged


def test_too_few_derived_steps_is_a_config_error():
    with pytest.raises(
        ConfigError,
        match=r"epochs: 1 epoch\(s\) of 30 examples .* is 7 steps: "
        r"warmup_steps \(20\) must not exceed steps \(7\)",
    ):
        resolve_epochs(job(epochs=1, warmup_steps=20), N_EXAMPLES, 1)
    bad = job(epochs=1).model_copy(update={"checkpoint_every": 8})
    with pytest.raises(ConfigError, match=r"checkpoint_every \(8\) exceeds optim.steps \(7\)"):
        resolve_epochs(bad, N_EXAMPLES, 1)


def _train(cfg, tiny_model_dir, tokens, on_checkpoint=None, ckpt=None):
    torch.manual_seed(0)
    recipe = LoraRecipe(cfg)
    recipe.setup(tiny_model_dir, tokens)
    if ckpt:
        recipe.load_checkpoint(ckpt)
    losses, ids = {}, {}
    recipe.train(
        on_metrics=lambda m, s: losses.__setitem__(s, m["loss"]),
        on_checkpoint=on_checkpoint and (lambda s, _: on_checkpoint(recipe, s)),
        on_step=lambda s: ids.__setitem__(s, list(recipe.batch_ids)),
    )
    return recipe, losses, ids


def test_a_recipe_trains_the_derived_steps_and_resumes_exactly(tmp_path, tiny_model_dir, tokens):
    cfg = job(epochs=2).model_copy(update={"checkpoint_every": 5})
    assert count_examples(tokens) == N_EXAMPLES
    recipe, losses, ids = _train(
        cfg, tiny_model_dir, tokens, on_checkpoint=lambda r, s: r.save_checkpoint(tmp_path / f"step{s}")
    )
    assert recipe.cfg.optim.steps == 14 and sorted(losses) == list(range(1, 15))
    seen = [i for batch in ids.values() for i in batch]
    # Two passes of 7 batches of 4: 28 of the 30 examples twice each (the last 2 fill no batch).
    assert len(seen) == 56 and len(set(seen)) <= N_EXAMPLES and max(seen.count(i) for i in seen) == 2
    _, resumed_losses, resumed_ids = _train(cfg, tiny_model_dir, tokens, ckpt=tmp_path / "step5")
    assert resumed_ids == {s: v for s, v in ids.items() if s > 5}
    assert resumed_losses == pytest.approx({s: v for s, v in losses.items() if s > 5}, rel=1e-4)
