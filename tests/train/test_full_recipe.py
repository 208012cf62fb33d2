"""The full fine-tuning recipe (DeepSpeed ZeRO on CPU, gloo) without Ray, on the
tiny real model: it learns, exports merged sharded safetensors with tokenizer and
chat template, and the export loads back in transformers."""

import json

import pytest

from train import FullJobConfig
from train.full_recipe import FullRecipe, deepspeed_config


def job(**top):
    return FullJobConfig(name="f", recipe="sft_full", base_model="b@production", dataset="d.yaml",
                         register_as="m", log_every=5, max_shard_size="200KB",
                         optim={"steps": 20, "batch_size": 4, "warmup_steps": 2, "lr": 1e-3}, **top)


def test_deepspeed_config_follows_the_job():
    ds = deepspeed_config(job(deepspeed={"zero_stage": 3, "offload_optimizer": True, "offload_params": True}))
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW" and ds["bf16"]["enabled"] is False
    assert "optimizer" not in deepspeed_config(job(deepspeed={"zero_stage": 2}))
    with pytest.raises(ValueError, match="offload_params needs zero_stage 3"):
        job(deepspeed={"zero_stage": 2, "offload_params": True})


def test_zero3_full_finetune_learns_and_exports_safetensors(tmp_path, tiny_model_dir):
    import torch
    from data import DatasetConfig, prepare
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prepare(DatasetConfig(name="d", path="samples:internal_faq_ja.jsonl"), tiny_model_dir, tmp_path)
    recipe = FullRecipe(job(deepspeed={"zero_stage": 3}))
    recipe.setup(tiny_model_dir, tmp_path / "tokens.parquet")
    seen = []
    recipe.train(on_metrics=lambda m, step: seen.append((step, m)))
    assert [s for s, _ in seen] == [5, 10, 15, 20]
    assert seen[-1][1]["loss"] < seen[0][1]["loss"]
    out = recipe.save(tmp_path / "model")
    recipe.cleanup()
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors.index.json" in files and "tokenizer.json" in files
    assert len([f for f in files if f.endswith(".safetensors")]) > 1       # sharded
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert AutoTokenizer.from_pretrained(str(out)).chat_template
    trained = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not trained.state_dict()[name].equal(base.state_dict()[name])
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
