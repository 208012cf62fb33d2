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


def test_cpt_on_raw_text_with_zero2_learns_and_resumes(tmp_path, tiny_model_dir, sample_conversations):
    from data import DatasetConfig, prepare

    raw = tmp_path / "raw.jsonl"
    raw.write_text("\n".join(json.dumps({"text": " ".join(m["content"] for m in conv)}, ensure_ascii=False)
                             for conv in sample_conversations) + "\n", encoding="utf-8")
    prepare(DatasetConfig(name="raw", path=str(raw), format="text"), tiny_model_dir, tmp_path)
    cfg = job(deepspeed={"zero_stage": 2}, checkpoint_every=10).model_copy(update={"recipe": "cpt"})
    recipe = FullRecipe(cfg)
    recipe.setup(tiny_model_dir, tmp_path / "tokens.parquet")
    losses, ids = {}, {}

    def stop_at_10(step, _):
        recipe.save_checkpoint(tmp_path / f"ckpt{step}")

    recipe.train(on_metrics=lambda m, s: losses.__setitem__(s, m["loss"]), on_checkpoint=stop_at_10,
                 on_step=lambda s: ids.__setitem__(s, list(recipe.batch_ids)))
    recipe.cleanup()
    assert losses[20] < losses[5]
    assert (tmp_path / "ckpt20" / "model" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "ckpt10" / "model").exists()      # merged weights only at the end
    again = FullRecipe(cfg)
    again.setup(tiny_model_dir, tmp_path / "tokens.parquet")
    again.load_checkpoint(tmp_path / "ckpt10")
    resumed_losses, resumed_ids = {}, {}
    again.train(on_metrics=lambda m, s: resumed_losses.__setitem__(s, m["loss"]),
                on_step=lambda s: resumed_ids.__setitem__(s, list(again.batch_ids)))
    again.cleanup()
    assert resumed_ids == {s: v for s, v in ids.items() if s > 10}
    assert resumed_losses == pytest.approx({s: losses[s] for s in (15, 20)}, rel=1e-4)
