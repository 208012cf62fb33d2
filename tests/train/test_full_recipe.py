"""The full fine-tuning recipe (DeepSpeed ZeRO on CPU, gloo) without Ray, on the
tiny real model: it learns, exports merged sharded safetensors with tokenizer and
chat template, and the export loads back in transformers and generates in vLLM."""

import json
from pathlib import Path

import pytest

from train import FullJobConfig
from train.deepspeed_zero import deepspeed_config
from train.full_recipe import FullRecipe


def job(**top):
    return FullJobConfig(
        name="f",
        recipe="sft_full",
        base_model="b@production",
        dataset="d.yaml",
        register_as="m",
        log_every=5,
        max_shard_size="200KB",
        optim={"steps": 20, "batch_size": 4, "warmup_steps": 2, "lr": 1e-3},
        **top,
    )


def test_deepspeed_config_follows_the_job():
    ds = deepspeed_config(job(deepspeed={"zero_stage": 3, "offload_optimizer": True, "offload_params": True}))
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW" and ds["bf16"]["enabled"] is False
    assert "optimizer" not in deepspeed_config(job(deepspeed={"zero_stage": 2}))
    with pytest.raises(ValueError, match="offload_params needs zero_stage 3"):
        job(deepspeed={"zero_stage": 2, "offload_params": True})


@pytest.fixture(scope="module")
def zero3_export(tmp_path_factory, tiny_model_dir):
    """The tiny model fully fine-tuned (ZeRO-3, 20 steps) and exported: (export dir, logged metrics)."""
    from data import DatasetConfig, prepare

    work = tmp_path_factory.mktemp("zero3")
    prepare(DatasetConfig(name="d", path="samples:internal_faq_ja.jsonl"), tiny_model_dir, work)
    recipe = FullRecipe(job(deepspeed={"zero_stage": 3}))
    recipe.setup(tiny_model_dir, work / "tokens.parquet")
    seen = []
    recipe.train(on_metrics=lambda m, step: seen.append((step, m)))
    out = recipe.save(work / "model")
    recipe.cleanup()
    return out, seen


def test_zero3_full_finetune_learns_and_exports_safetensors(zero3_export, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, seen = zero3_export
    assert [s for s, _ in seen] == [5, 10, 15, 20]
    assert seen[-1][1]["loss"] < seen[0][1]["loss"]
    assert "mfu" not in seen[-1][1]  # GPU metrics only on GPU
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors.index.json" in files and "tokenizer.json" in files
    assert len([f for f in files if f.endswith(".safetensors")]) > 1  # sharded
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert AutoTokenizer.from_pretrained(str(out)).chat_template
    trained = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not trained.state_dict()[name].equal(base.state_dict()[name])
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


VLLM_GENERATE = """
import json, sys
from foundation import offline
offline.apply()
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
prompt = llm.get_tokenizer().apply_chat_template(
    [{"role": "user", "content": sys.argv[2]}], tokenize=False, add_generation_prompt=True)
out = llm.generate([prompt], SamplingParams(max_tokens=4, temperature=0.0, logprobs=0, ignore_eos=True))[0]
done = out.outputs[0]
print("RESULT " + json.dumps({"prompt_ids": out.prompt_token_ids, "ids": list(done.token_ids),
      "logprobs": [lp[t].logprob for t, lp in zip(done.token_ids, done.logprobs)]}))
"""


def test_full_finetune_export_generates_in_vllm(zero3_export, sample_conversations):
    """The merged export (sharded safetensors, tokenizer, chat template) is what vLLM
    serves: it loads on the CPU engine and generates, and the log-probabilities of
    its greedy tokens match transformers' on the same weights."""
    import os
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM

    out, _ = zero3_export
    question = sample_conversations[0][0]["content"]
    repo = str(Path(__file__).resolve().parents[2])
    # One process: the engine core inside the caller (vLLM's LLM class with multiprocessing off).
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "PYTHONPATH": repo,
    }
    run = subprocess.run(
        [sys.executable, "-c", VLLM_GENERATE, str(out), question],
        check=False,
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT ") :])
    assert len(got["ids"]) == 4
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor([got["prompt_ids"] + got["ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, len(got["prompt_ids"]) - 1 : -1], dim=-1)
    expected = [float(logp[i, t]) for i, t in enumerate(got["ids"])]
    assert got["logprobs"] == pytest.approx(expected, abs=1e-2)


def test_cpt_on_raw_text_with_zero2_learns_and_resumes(tmp_path, tiny_model_dir, sample_conversations):
    from data import DatasetConfig, prepare

    raw = tmp_path / "raw.jsonl"
    raw.write_text(
        "\n".join(
            json.dumps({"text": " ".join(m["content"] for m in conv)}, ensure_ascii=False)
            for conv in sample_conversations
        )
        + "\n",
        encoding="utf-8",
    )
    prepare(DatasetConfig(name="raw", path=str(raw), format="text"), tiny_model_dir, tmp_path)
    cfg = job(deepspeed={"zero_stage": 2}, checkpoint_every=10).model_copy(update={"recipe": "cpt"})
    recipe = FullRecipe(cfg)
    recipe.setup(tiny_model_dir, tmp_path / "tokens.parquet")
    losses, ids = {}, {}

    def stop_at_10(step, _):
        recipe.save_checkpoint(tmp_path / f"ckpt{step}")

    recipe.train(
        on_metrics=lambda m, s: losses.__setitem__(s, m["loss"]),
        on_checkpoint=stop_at_10,
        on_step=lambda s: ids.__setitem__(s, list(recipe.batch_ids)),
    )
    recipe.cleanup()
    assert losses[20] < losses[5]
    assert (tmp_path / "ckpt20" / "model" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "ckpt10" / "model").exists()  # merged weights only at the end
    again = FullRecipe(cfg)
    again.setup(tiny_model_dir, tmp_path / "tokens.parquet")
    again.load_checkpoint(tmp_path / "ckpt10")
    resumed_losses, resumed_ids = {}, {}
    again.train(
        on_metrics=lambda m, s: resumed_losses.__setitem__(s, m["loss"]),
        on_step=lambda s: resumed_ids.__setitem__(s, list(again.batch_ids)),
    )
    again.cleanup()
    assert resumed_ids == {s: v for s, v in ids.items() if s > 10}
    assert resumed_losses == pytest.approx({s: losses[s] for s in (15, 20)}, rel=1e-4)
