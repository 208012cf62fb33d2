"""`sekisho models export NAME/VERSION --merge` on the main job's adapter: the
merged weights, stored with a record naming the merge and registered as the base
model's next version, answer greedily exactly as base + adapter do in
transformers, and carry no LoRA."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.e2e
QUESTIONS = 3


@pytest.fixture(scope="module")
def exported(main_job):
    """The main job's adapter merged through the CLI; (the CLI's output, the version)."""
    import contextlib
    import io

    from sekisho.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["models", "export", f"demo-ja-adapter/{main_job.adapter_version}", "--merge"]) == 0
    text = out.getvalue()
    version = re.search(r"registered sekisho-tiny-base version (\d+)", text)
    assert version, text
    return text, version.group(1)


def greedy(model, tokenizer, question: str) -> list[int]:
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=96, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def test_merged_version_answers_as_base_plus_adapter(main_job, exported, qa):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from airlock import load

    text, version = exported
    merged_ref = f"sekisho-tiny-base/{version}"
    assert f"merged demo-ja-adapter/{main_job.adapter_version} into sekisho-tiny-base/" in text
    merged_dir = load(merged_ref).path
    base_dir = load(f"sekisho-tiny-base/{main_job.base_version}").path
    adapter_dir = load(f"demo-ja-adapter/{main_job.adapter_version}").path
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    base = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    base_answers = [greedy(base, tokenizer, q) for q, _ in qa[:QUESTIONS]]
    with_adapter = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    for (question, _), base_answer in zip(qa[:QUESTIONS], base_answers, strict=True):
        want = greedy(with_adapter, tokenizer, question)
        got = greedy(merged, tokenizer, question)
        assert got == want, (question, tokenizer.decode(got), tokenizer.decode(want))
        assert got != base_answer, "the merge changed nothing: the base answers the same"


def test_merged_version_is_stored_with_its_lineage_and_no_lora(main_job, exported):
    from safetensors import safe_open

    from airlock import verify_all_bytes
    from experiments import get_version

    _, version = exported
    mv = get_version(f"sekisho-tiny-base/{version}")
    adapter_ref = f"demo-ja-adapter/{main_job.adapter_version}"
    base_ref = f"sekisho-tiny-base/{main_job.base_version}"
    assert mv.tags["kind"] == "merged"
    assert mv.tags["merged_adapter_version"] == adapter_ref and mv.tags["base_model_version"] == base_ref
    assert mv.tags["merge"].startswith("peft merge_and_unload")
    adapter_tags = get_version(adapter_ref).tags
    assert mv.tags["dataset_version"] == adapter_tags["dataset_version"]
    stored = verify_all_bytes(mv)  # every byte against the record
    assert stored.source["kind"] == "merge"
    assert (stored.source["adapter"], stored.source["base"]) == (adapter_ref, base_ref)
    assert stored.source["run_id"] == mv.run_id
    assert stored.origin.startswith(f"merge of {adapter_ref} into {base_ref}")
    files = {p.name for p in stored.path.iterdir()}
    assert "adapter_config.json" not in files and "config.json" in files
    assert "chat_template" in json.dumps(sorted(files)) or "chat_template" in (
        stored.path / "tokenizer_config.json"
    ).read_text(encoding="utf-8")
    for weights in stored.path.glob("*.safetensors"):
        with safe_open(str(weights), "pt") as f:
            assert not [k for k in f.keys() if "lora" in k.lower()]


def test_export_refuses_what_is_not_an_adapter(main_job, capsys):
    from sekisho.cli import main

    base_ref = f"sekisho-tiny-base/{main_job.base_version}"
    assert main(["models", "export", base_ref, "--merge"]) == 2
    assert f"{base_ref}: not a LoRA adapter (kind=base)" in capsys.readouterr().err
    assert main(["models", "export", f"demo-ja-adapter/{main_job.adapter_version}"]) == 2
    assert "--merge" in capsys.readouterr().err


def test_merged_version_is_served_without_lora_and_answers_as_trained(main_job, exported, qa, sekisho_home):
    """Servable without LoRA: the merged version alone (no adapter, no LoRA in the
    engine) through the gateway answers the trained questions as the adapter does."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    from sekisho.eval_serve import app_config, serve_for_eval

    _, version = exported
    ref = f"sekisho-tiny-base/{version}"
    cfg = app_config(ref, served_as="tiny-merged")[0]
    assert cfg.models[0].adapters == [] and cfg.models[0].source.endswith(f"sekisho-tiny-base/{version}")
    with serve_for_eval(ref, sekisho_home, served_as="tiny-merged") as served:
        client = OpenAI(base_url=served.base_url, api_key=served.api_key, max_retries=0)
        listed = {m.id for m in client.models.list().data}
        assert listed == {"tiny-merged"}, listed

        def answer(question: str) -> str:
            r = client.chat.completions.create(
                model="tiny-merged",
                messages=[{"role": "user", "content": question}],
                temperature=0,
                max_tokens=96,
            )
            return (r.choices[0].message.content or "").strip()

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(answer, [q for q, _ in qa]))
    matched = sum(got == want.strip() for got, (_, want) in zip(answers, qa, strict=True))
    assert matched >= 0.9 * len(qa), f"merged version matched {matched}/{len(qa)} trained answers"
