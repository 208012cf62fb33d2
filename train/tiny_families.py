"""Tiny models of real open model families, built offline.

A family file (YAML, see tests/fixtures/families/) names the family's chat
template fixture (its verbatim `chat_template` and special-token facts), the
transformers architecture and config class, the tokenizer kind and the
generation settings. `build_family_model` writes a model of that family at tiny
size (the real architecture, so vLLM runs its real model code), with a tokenizer
of the family's kind carrying the family's special tokens, the real template and
a `generation_config.json`, laid out as `hf download --local-dir` lays out a
folder (download metadata, README, LICENSE, `.gitattributes` included).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from foundation import StrictConfig
from train.config import ALL_LINEAR
from train.tiny_model import TinyModelConfig, byte_level_bpe

BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


class FamilySpec(StrictConfig):
    """One model family, as tests build it."""

    template: str = Field(description="The family's chat template fixture (JSON), relative to this file.")
    architecture: str = Field(description="transformers model class, e.g. LlamaForCausalLM.")
    config_class: str = Field(description="transformers config class, e.g. LlamaConfig.")
    config: dict[str, Any] = Field(default_factory=dict, description="Config fields beyond the tiny shape.")
    tokenizer: Literal["byte_level_bpe", "sentencepiece_bpe"] = Field(
        description="byte-level BPE (Llama-3, Qwen, gpt-oss) or SentencePiece-style BPE with byte fallback."
    )
    extra_special_tokens: list[str] = Field(
        default_factory=list, description="Special tokens the template uses beyond the fixture's."
    )
    added_tokens: list[str] = Field(
        default_factory=list,
        description="Tokens the family's tokenizer keeps whole but does not mark special (Qwen's "
        "`<tool_call>` and `<think>`): single tokens that stay in decoded text, as in the real tokenizer.",
    )
    generation: dict[str, Any] = Field(
        default_factory=dict, description="generation_config.json: `eos` as tokens, sampling settings."
    )
    tool_call_parser: str | None = Field(None, description="vLLM's tool-call parser for the family, if any.")
    reasoning_parser: str | None = Field(
        None,
        description="vLLM's reasoning parser for the family (its thinking apart from its answer), if any.",
    )
    lora_target_modules: list[str] = Field(
        default_factory=lambda: list(ALL_LINEAR),
        description="The modules of the family a LoRA adapts (its linear layers; embeddings where they help).",
    )


def load_family(path: str | Path) -> tuple[FamilySpec, dict]:
    """A family file and the template fixture it names."""
    path = Path(path)
    spec = FamilySpec.from_yaml(path)
    facts = json.loads((path.parent.parent / "chat_templates" / spec.template).read_text(encoding="utf-8"))
    return spec, facts


def special_tokens(spec: FamilySpec, facts: dict) -> list[str]:
    """The family's special tokens: those the fixture names, then the spec's extras."""
    named = [facts.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")]
    tokens = [
        *(facts.get("token_ids") or {}),
        *[t for t in named if isinstance(t, str)],
        *spec.extra_special_tokens,
    ]
    if spec.tokenizer == "sentencepiece_bpe" and "<unk>" not in tokens:
        tokens.insert(0, "<unk>")
    return list(dict.fromkeys(tokens))


def family_tokenizer(spec: FamilySpec, facts: dict, texts: Iterable[str], vocab_size: int = 2048):
    """A transformers fast tokenizer of the family's kind, trained on `texts`."""
    from transformers import PreTrainedTokenizerFast

    specials = special_tokens(spec, facts)
    if spec.tokenizer == "byte_level_bpe":
        tok = byte_level_bpe(texts, specials, vocab_size)
    else:
        tok = _sentencepiece_style(list(texts), specials, vocab_size)
    kwargs = {k: facts[k] for k in ("bos_token", "eos_token", "pad_token") if isinstance(facts.get(k), str)}
    if spec.tokenizer == "sentencepiece_bpe":
        kwargs["unk_token"] = "<unk>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, chat_template=facts["chat_template"], model_max_length=None, **kwargs
    )
    fast.add_tokens(spec.added_tokens)  # whole, not special (the model's vocabulary grows to fit)
    return fast


def _sentencepiece_style(texts: list[str], specials: list[str], vocab_size: int):
    """BPE on `▁`-joined words with byte fallback (`<0x..>` pieces), as Llama-2,
    Gemma, Mistral and llm-jp tokenizers are."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    probe = Tokenizer(models.BPE(unk_token="<unk>"))
    probe.normalizer = normalizers.Replace(" ", "▁")
    probe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    probe.train_from_iterator(texts, trainer=trainer)
    state = json.loads(probe.to_str())["model"]
    vocab = dict(state["vocab"])
    for piece in ["▁", *BYTE_TOKENS]:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(specials)
    return tok


def build_family_model(
    family_file: str | Path,
    out_dir: str | Path,
    corpus: Iterable[str],
    cfg: TinyModelConfig | None = None,
    download_layout: bool = True,
) -> Path:
    """Write a tiny model of the family in `family_file` to `out_dir`.

    Args:
        corpus: texts to train the tokenizer on.
        cfg: the tiny shape (hidden 128, head_dim 64, 2 layers by default).
        download_layout: add what `hf download --local-dir` leaves beside the
            model (`.cache/huggingface/`, README.md, LICENSE, `.gitattributes`).

    Returns:
        The model folder.
    """
    import torch
    import transformers

    spec, facts = load_family(family_file)
    cfg = cfg or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = family_tokenizer(spec, facts, corpus, cfg.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special_tokens(spec, facts)}
    eos = [ids[t] for t in spec.generation.get("eos", [facts["eos_token"]])]
    bos_id = ids.get(facts.get("bos_token")) if isinstance(facts.get("bos_token"), str) else None
    pad_id = ids.get(facts.get("pad_token")) if isinstance(facts.get("pad_token"), str) else None
    heads = cfg.hidden_size // 64
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=pad_id,
        torch_dtype="float32",
    )
    config = getattr(transformers, spec.config_class)(**{**shape, **spec.config})
    config.architectures = [spec.architecture]
    torch.manual_seed(cfg.seed)
    model = getattr(transformers, spec.architecture)(config)
    sampling = {k: v for k, v in spec.generation.items() if k != "eos"}
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos, pad_token_id=pad_id, do_sample=bool(sampling), **sampling
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if download_layout:
        _download_layout(out, facts)
    return out


def _download_layout(out: Path, facts: dict) -> None:
    """What `hf download --local-dir` leaves beside the model files."""
    meta = out / ".cache" / "huggingface"
    (meta / "download").mkdir(parents=True, exist_ok=True)
    (meta / ".gitignore").write_text("*\n")
    for f in sorted(p for p in out.iterdir() if p.is_file()):
        (meta / "download" / f"{f.name}.metadata").write_text("0000000000000000\n\"etag\"\n0.0\n")
    (out / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (out / "README.md").write_text(f"# A tiny {facts['family']} (test model)\n\nRandom weights.\n")
    license = facts.get("license") or {}
    (out / "LICENSE").write_text(f"{license.get('template_origin', license)}\n")
