"""The LoRA recipe without Ray, on a tiny real model."""

import json

import pytest
from safetensors import safe_open

from train import LoraJobConfig, LoraRecipe, TinyModelConfig
from train.loop import lr_at


def job(**optim):
    return LoraJobConfig(
        name="t",
        base_model="b@production",
        dataset="d.yaml",
        register_as="a",
        optim={"warmup_steps": 2, **optim},
        log_every=5,
    )


def test_tiny_model_is_safetensors_only_with_vllm_friendly_shape(tiny_model_dir):
    files = {p.name for p in tiny_model_dir.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".py"))}
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 64
    assert cfg["architectures"] == ["LlamaForCausalLM"]


def test_tiny_model_is_reproducible(tmp_path, sample_conversations, tiny_model_dir):
    from train import build_tiny_model

    corpus = [m["content"] for conv in sample_conversations for m in conv]
    again = build_tiny_model(tmp_path / "again", corpus, TinyModelConfig())
    with (
        safe_open(str(again / "model.safetensors"), "pt") as a,
        safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as b,
    ):
        name = "model.layers.0.self_attn.q_proj.weight"
        assert a.get_tensor(name).equal(b.get_tensor(name))


def test_lr_schedule():
    cfg = job(steps=100, lr=1e-3, schedule="linear")
    assert lr_at(0, cfg) == pytest.approx(5e-4)
    assert lr_at(2, cfg) == pytest.approx(1e-3)
    assert lr_at(99, cfg) < 2e-5
    assert lr_at(51, job(steps=100, schedule="cosine")) == pytest.approx(5e-4, rel=0.05)


def test_recipe_learns_and_saves_a_safetensors_adapter(tmp_path, tiny_model_dir):
    from data import DatasetConfig, prepare

    prepare(DatasetConfig(name="d", path="samples:internal_faq_ja.jsonl"), tiny_model_dir, tmp_path)
    recipe = LoraRecipe(job(steps=40, lr=2e-3))
    recipe.setup(tiny_model_dir, tmp_path / "tokens.parquet")
    seen = []
    recipe.train(on_metrics=lambda m, step: seen.append((step, m)))
    assert [s for s, _ in seen] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert seen[-1][1]["loss"] < seen[0][1]["loss"] * 0.7
    assert all(m["tokens_per_s"] > 0 and m["grad_norm"] >= 0 for _, m in seen)
    out = recipe.save(tmp_path / "adapter")
    assert (out / "adapter_model.safetensors").is_file()
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 16 and len(adapter_cfg["target_modules"]) == 7
    recipe.cleanup()


def test_data_order_is_seeded_and_sharded(tmp_path, tiny_model_dir):
    from data import DatasetConfig, prepare

    prepare(DatasetConfig(name="d", path="samples:internal_faq_ja.jsonl"), tiny_model_dir, tmp_path)

    def first_batches(rank, world, seed=0):
        r = LoraRecipe(job(steps=4).model_copy(update={"seed": seed}), rank=rank, world_size=world)
        r.examples = [([i], [i]) for i in range(30)]
        it = r.batches()
        return [[x[0][0] for x in next(it)] for _ in range(3)]

    assert first_batches(0, 1) == first_batches(0, 1)
    assert first_batches(0, 1) != first_batches(0, 1, seed=1)
    r0, r1 = first_batches(0, 2), first_batches(1, 2)
    assert not set(r0[0]) & set(r1[0])


def test_eval_loss_on_the_held_out_split_falls(tmp_path, tiny_model_dir):
    from data import DatasetConfig, prepare

    prepare(
        DatasetConfig(name="d", path="samples:internal_faq_ja.jsonl", split={"eval_fraction": 0.25}),
        tiny_model_dir,
        tmp_path,
    )
    assert (tmp_path / "eval.parquet").is_dir()  # shards in a folder
    recipe = LoraRecipe(job(steps=30, lr=2e-3).model_copy(update={"eval_every": 15}))
    recipe.setup(tiny_model_dir, tmp_path / "tokens.parquet")
    assert recipe.eval_examples and recipe.examples
    before = recipe.evaluate()
    evals = []
    recipe.train(on_metrics=lambda m, step: "eval_loss" in m and evals.append((step, m["eval_loss"])))
    assert [s for s, _ in evals] == [15, 30]
    assert evals[-1][1] < before


def test_packed_rows_train_without_attention_across_examples(tmp_path, tiny_model_dir):
    """A packed batch's loss equals the loss of its examples run one by one
    (the recipe feeds position ids, no mask), and a packed dataset trains."""
    import torch

    from data import DatasetConfig, prepare

    packed_cfg = DatasetConfig(
        name="d",
        path="samples:internal_faq_ja.jsonl",
        max_length=128,
        packing={"enabled": True, "length": 512},
    )
    prepare(packed_cfg, tiny_model_dir, tmp_path / "packed")
    recipe = LoraRecipe(job(steps=30, lr=2e-3, batch_size=2))
    recipe.setup(tiny_model_dir, tmp_path / "packed" / "tokens.parquet")
    assert (
        len(recipe.examples[0]) == 3 and len(recipe.examples) < 30
    )  # (ids, labels, positions), several a row

    batch = recipe.examples[:2]
    inputs, tokens = recipe.collate(batch)
    assert "attention_mask" not in inputs and tokens == sum(len(ex[0]) for ex in batch)
    model = recipe.module()
    with torch.no_grad():
        packed = float(model(**inputs).loss)
        total, count = 0.0, 0
        for ids, labels, positions in batch:  # each example alone, cut at its position restarts
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
            for a, b in zip(starts, starts[1:]):
                alone, _ = recipe.collate([(ids[a:b], labels[a:b])])
                n = sum(1 for y in labels[a + 1 : b] if y != -100)
                total += float(model(**alone).loss) * n
                count += n
    assert packed == pytest.approx(total / count, rel=1e-4)
    before = recipe.evaluate() if recipe.eval_examples else None
    seen = []
    recipe.train(on_metrics=lambda m, step: seen.append(m["loss"]))
    assert seen[-1] < seen[0] * 0.8
    assert before is None or recipe.evaluate() < before
    recipe.cleanup()
