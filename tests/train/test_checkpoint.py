"""Checkpoint and resume of the LoRA recipe without Ray: a run stopped at a
checkpoint and resumed in a fresh recipe equals the uninterrupted run."""

import pytest

from train import LoraJobConfig, LoraRecipe


def job(**top):
    return LoraJobConfig(
        name="t",
        base_model="b@production",
        dataset="d.yaml",
        register_as="a",
        optim={"warmup_steps": 2, "steps": 12, "batch_size": 4, "lr": 2e-3},
        log_every=2,
        **top,
    )


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, tiny_model_dir):
    from data import DatasetConfig, prepare

    out = tmp_path_factory.mktemp("tokens")
    prepare(DatasetConfig(name="d", path="samples:internal_faq_ja.jsonl"), tiny_model_dir, out)
    return out / "tokens.parquet"


def run(cfg, tiny_model_dir, tokens, resume_from=None, stop_after=None, ckpt_dir=None):
    """Train `cfg`; returns (recipe, ids per step, losses per logged step)."""
    recipe = LoraRecipe(cfg)
    recipe.setup(tiny_model_dir, tokens)
    if resume_from:
        recipe.load_checkpoint(resume_from)
    ids, losses = {}, {}

    class Stop(Exception):
        pass

    def on_checkpoint(step, _):
        if ckpt_dir:
            recipe.save_checkpoint(ckpt_dir / f"step{step}")
        if step == stop_after:
            raise Stop

    try:
        recipe.train(
            on_metrics=lambda m, s: losses.__setitem__(s, m["loss"]),
            on_checkpoint=on_checkpoint,
            on_step=lambda s: ids.__setitem__(s, list(recipe.batch_ids)),
        )
    except Stop:
        pass
    return recipe, ids, losses


def test_resume_continues_the_same_data_order_and_weights(tmp_path, tiny_model_dir, tokens):
    cfg = job(checkpoint_every=4)
    full, full_ids, full_losses = run(cfg, tiny_model_dir, tokens)
    _, first_ids, _ = run(cfg, tiny_model_dir, tokens, stop_after=8, ckpt_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step4", "step8"]
    assert {p.name for p in (tmp_path / "step8").iterdir()} >= {
        "trainable.safetensors",
        "optimizer.safetensors",
        "rng-rank0.safetensors",
        "trainer_state.json",
        "adapter",
    }
    assert not [p for p in (tmp_path / "step8").rglob("*") if p.suffix in {".pt", ".bin", ".pkl"}]
    resumed, rest_ids, rest_losses = run(cfg, tiny_model_dir, tokens, resume_from=tmp_path / "step8")
    assert list(rest_ids) == [9, 10, 11, 12]
    assert {**first_ids, **rest_ids} == full_ids  # none seen twice, none skipped
    assert rest_losses == pytest.approx({s: full_losses[s] for s in (10, 12)}, rel=1e-5)
    for (name, a), (_, b) in zip(full.peft_model.named_parameters(), resumed.peft_model.named_parameters()):
        if a.requires_grad:
            assert a.detach().allclose(b.detach(), atol=1e-6), name


def test_data_position_crosses_epochs(tiny_model_dir):
    r = LoraRecipe(job(), rank=1, world_size=2)
    r.examples = [([i], [i]) for i in range(21)]  # rank 1: 10 examples, 2 batches of 4
    assert [r.data_position(s) for s in (0, 1, 2, 5)] == [(0, 0), (0, 1), (1, 0), (2, 1)]
    it = r.batches()
    uninterrupted = [next(it) and list(r.batch_ids) for _ in range(6)]
    it = r.batches(start_step=3)
    assert [next(it) and list(r.batch_ids) for _ in range(3)] == uninterrupted[3:]


def test_checkpoint_from_another_world_size_is_refused(tmp_path, tiny_model_dir, tokens):
    recipe, _, _ = run(job(checkpoint_every=4), tiny_model_dir, tokens, stop_after=4, ckpt_dir=tmp_path)
    other = LoraRecipe(job(), rank=0, world_size=2)
    other.setup(tiny_model_dir, tokens)
    with pytest.raises(ValueError, match="written by 1 workers, this run has 2"):
        other.load_checkpoint(tmp_path / "step4")


def test_checkpoint_every_must_fit_the_run():
    with pytest.raises(ValueError, match="checkpoint_every"):
        job(checkpoint_every=13)
