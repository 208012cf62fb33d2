"""Tiny models of every family in tests/fixtures/families/: the family's own config
class and architecture, a tokenizer of its kind carrying its special tokens as
single tokens, its real chat template, its generation_config, in the layout
`hf download --local-dir` leaves."""

import json
from pathlib import Path

import pytest

from train.tiny_families import build_family_model, load_family, special_tokens

FAMILIES = Path(__file__).resolve().parents[1] / "fixtures" / "families"


@pytest.fixture(scope="module")
def corpus(sample_conversations):
    return [m["content"] for conv in sample_conversations for m in conv]


@pytest.mark.parametrize("family", sorted(p.stem for p in FAMILIES.glob("*.yaml")))
def test_family_model_is_built_offline_in_the_download_layout(family, corpus, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    spec, facts = load_family(FAMILIES / f"{family}.yaml")
    out = build_family_model(FAMILIES / f"{family}.yaml", tmp_path / family, corpus)
    config = AutoConfig.from_pretrained(out)
    assert type(config).__name__ == spec.config_class and config.architectures == [spec.architecture]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == facts["chat_template"]
    for token in special_tokens(spec, facts):
        assert tok.convert_ids_to_tokens(tok(token, add_special_tokens=False)["input_ids"]) == [token]
    for token in spec.added_tokens:  # whole, and kept when special tokens are skipped
        ids = tok(f"a{token}b", add_special_tokens=False)["input_ids"]
        assert token in tok.convert_ids_to_tokens(ids) and token not in tok.all_special_tokens
        assert tok.decode(ids, skip_special_tokens=True) == f"a{token}b"
    assert config.vocab_size == len(tok)
    generation = json.loads((out / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert tok.convert_ids_to_tokens(eos if isinstance(eos, list) else [eos]) == spec.generation.get(
        "eos", [facts["eos_token"]]
    )
    text = "第七倉庫の合言葉は何ですか。 Hello, world!"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    for name in (
        ".cache/huggingface/download/config.json.metadata",
        "README.md",
        "LICENSE",
        ".gitattributes",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (out / name).is_file(), name
