"""Build a tiny, trainable Llama base model offline: tokenizer and weights from
nothing, so tests and the demo never download a model.

Settings checked to learn (docs/design-notes.md): hidden 128, 2 heads (head_dim 64, which
vLLM's CPU attention supports), 2 layers, initializer_range 0.1 (with the default
0.02 the frozen random output layer caps the logits and LoRA training stalls).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from foundation import StrictConfig

# Roles are special tokens; `<|end|>` closes every turn and is the EOS token.
SPECIAL_TOKENS = ["<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
EOS_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class TinyModelConfig(StrictConfig):
    """A tiny Llama built from scratch with a fixed seed."""

    vocab_size: int = Field(
        2048, ge=256, le=65536, description="BPE vocabulary size to train (special tokens included)."
    )
    hidden_size: int = Field(
        128,
        ge=64,
        description="Model width; hidden_size / num_attention_heads must be 64 for vLLM's CPU attention.",
    )
    intermediate_size: int = Field(256, ge=64, description="MLP width.")
    num_hidden_layers: int = Field(2, ge=1, le=8, description="Transformer layers.")
    num_attention_heads: int = Field(2, ge=1, description="Attention heads (also KV heads).")
    max_position_embeddings: int = Field(
        512, ge=64, description="Longest sequence the model accepts (vLLM's max_model_len)."
    )
    initializer_range: float = Field(
        0.1, gt=0, description="Std of the random init; 0.1 lets LoRA learn (see module docstring)."
    )
    seed: int = Field(0, description="Seed for the weights.")


def byte_level_bpe(texts: Iterable[str], special_tokens: list[str], vocab_size: int):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `texts`, `special_tokens` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE tokenizer on `texts` (decoding round-trips any UTF-8).

    Returns:
        A transformers fast tokenizer with the chat template and special tokens set.
    """
    from transformers import PreTrainedTokenizerFast

    tok = byte_level_bpe(texts, SPECIAL_TOKENS, vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=None,
    )


def build_tiny_model(out_dir: str | Path, corpus: Iterable[str], cfg: TinyModelConfig | None = None) -> Path:
    """Write a tiny Llama (safetensors), its tokenizer and chat template to `out_dir`.

    Args:
        out_dir: empty or missing directory to write the model to.
        corpus: texts to train the tokenizer on (the chat template's markers are
            special tokens, so they need not appear).
        cfg: model shape and seed.

    Returns:
        The model directory.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = cfg or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(list(corpus), cfg.vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=eos_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "sekisho_tiny_model.json").write_text(json.dumps(cfg.model_dump(), indent=2))
    return out
