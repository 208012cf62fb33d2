"""GPU readiness: the LoRA and the full fine-tuning recipe, standalone (no Ray), on
a ~1B model of a real architecture (Llama-3.2-1B's shape, random bf16 weights) and
synthetic packed rows, on one CUDA GPU. For each recipe it prints tokens/s, peak
memory (with `train.estimate_memory`'s figure beside it) and MFU = 6 x params x
tokens/s / the GPU's peak dense bf16 FLOP/s; the last line is

    result: full_ft_mfu=0.xxx target=>=0.40 pass|fail

The full recipe trains under DeepSpeed when it is installed (ZeRO-2 on one GPU, the
path jobs take) and otherwise with torch's AdamW through the same recipe interface
(`TorchFullRecipe`: GPU machines for this check may lack DeepSpeed); the `full:`
line says which path ran. Needs torch, transformers and peft; not Ray or vLLM.
On one H100 it takes about 2 minutes (budget: 8).

    python benchmarks/gpu_check.py              # one CUDA GPU
    python benchmarks/gpu_check.py --dry-run    # CPU: a tiny model, a few steps, same lines

The peak FLOP/s comes from the device name (PEAK_BF16_FLOPS) or the environment
variable SEKISHO_PEAK_FLOPS, which wins when set.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from foundation import offline

offline.apply()

from train import FullJobConfig, FullRecipe, LoraJobConfig, LoraRecipe, loop  # noqa: E402
from train.memory import GB, ModelShape, estimate_memory  # noqa: E402

TARGET_MFU = 0.40
PEAK_ENV = "SEKISHO_PEAK_FLOPS"
# Dense bf16 tensor-core peaks (vendor data sheets), most specific name first.
PEAK_BF16_FLOPS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]
# Llama-3.2-1B (tied embeddings), and the dry run's stand-in.
LLAMA_1B = dict(
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=8192,
    vocab_size=128256,
    tie_word_embeddings=True,
    rope_theta=500000.0,
)
TINY = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=256,
    vocab_size=512,
    tie_word_embeddings=True,
)


def peak_flops(device_name: str) -> float | None:
    """The GPU's dense bf16 peak FLOP/s: $SEKISHO_PEAK_FLOPS, else by name; None if unknown."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV])
    return next((flops for name, flops in PEAK_BF16_FLOPS if name in device_name), None)


def write_model_and_rows(work: Path, shape: dict, seq_len: int, rows: int, on_gpu: bool) -> tuple[Path, Path]:
    """A random-init Llama in `work/model` and packed rows (examples of 64 to seq_len/2
    tokens, position_ids restarting per example, labels on every token) in
    `work/tokens.parquet`, the format `data` prepares."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **shape, max_position_embeddings=max(seq_len, 2048), pad_token_id=0, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):  # initialising 1B weights on a CPU takes a minute
        model = LlamaForCausalLM(config).to(torch.bfloat16 if on_gpu else torch.float32)
    model.save_pretrained(work / "model", safe_serialization=True)
    del model
    g = torch.Generator().manual_seed(0)
    ids, pos = [], []
    for _ in range(rows):
        lengths = []
        while sum(lengths) < seq_len:
            lengths.append(
                min(int(torch.randint(64, max(65, seq_len // 2), (1,), generator=g)), seq_len - sum(lengths))
            )
        ids.append(torch.randint(3, shape["vocab_size"], (seq_len,), generator=g).tolist())
        pos.append([p for n in lengths for p in range(n)])
    pq.write_table(
        pa.table({"input_ids": ids, "labels": ids, "position_ids": pos}), str(work / "tokens.parquet")
    )
    return work / "model", work / "tokens.parquet"


class TorchFullRecipe(FullRecipe):
    """The full recipe without DeepSpeed: the same data, loop and metrics, with the
    whole model and torch's (fused on CUDA) AdamW on one device."""

    def setup(self, base_model_dir, tokens_path, wrap_model=None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from train import examples
        from train.deepspeed_zero import train_dtype
        from train.utilisation import forward_params

        torch.manual_seed(self.cfg.seed)
        self.examples = examples.read_examples(tokens_path)
        self.cfg = loop.resolve_epochs(self.cfg, len(self.examples), self.world_size)
        self.eval_examples = []
        on_gpu = self.cfg.scaling.use_gpu
        self._device = torch.device("cuda" if on_gpu else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=train_dtype(self.cfg))
        self.model.to(self._device)
        self.pad_id, self.n_params = self.model.config.pad_token_id or 0, forward_params(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.optim.lr, fused=on_gpu)

    def device(self):
        return self._device

    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def forward_backward(self, inputs: dict, last: bool) -> float:
        loss = self.model(**inputs).loss / self.cfg.optim.grad_accum_steps
        loss.backward()
        return float(loss.detach())

    def optimizer_step(self):
        import torch

        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def train(self, on_metrics=None, log_every=None, on_checkpoint=None, on_step=None) -> dict[str, float]:
        self.model.train()
        return loop.run(self, on_metrics, log_every, on_checkpoint, on_step)

    def cleanup(self) -> None:
        self.model = self.optimizer = None
        self.examples = []


def run_recipe(kind: str, model_dir: Path, tokens: Path, args, on_gpu: bool) -> dict:
    """Train one recipe for `args.steps` steps; its steady tokens/s (the logged windows
    after the first), peak memory (GB) and parameter count."""
    import torch

    common = dict(
        name=f"gpu-check-{kind}",
        base_model="b@p",
        dataset="d.yaml",
        register_as="m",
        seed=0,
        log_every=args.log_every,
        gradient_checkpointing=False,
        optim={"steps": args.steps, "batch_size": args.batch_size, "warmup_steps": 1, "lr": 1e-5},
        scaling={"use_gpu": on_gpu, "cpus_per_worker": os.cpu_count() or 1},
        plan={"model_shape": "llama-3.2-1b", "seq_len": args.seq_len},
    )
    has_deepspeed = importlib.util.find_spec("deepspeed") is not None
    if kind == "lora":
        recipe, path = LoraRecipe(LoraJobConfig(**common)), "peft-lora"
    elif has_deepspeed and not args.no_deepspeed:
        recipe, path = (
            FullRecipe(FullJobConfig(recipe="sft_full", deepspeed={"zero_stage": 2}, **common)),
            "deepspeed-zero2",
        )
    else:
        # zero_stage 0 is the config of a replicated model (what estimate_memory sizes it as).
        recipe, path = (
            TorchFullRecipe(FullJobConfig(recipe="sft_full", deepspeed={"zero_stage": 0}, **common)),
            "torch-adamw",
        )
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    windows: list[dict] = []
    recipe.setup(model_dir, tokens)
    recipe.train(on_metrics=lambda m, step: windows.append(m))
    # The loop resets the CUDA peak at every logged step and logs each window's (GiB).
    peak = (
        max(m["gpu_mem_max_allocated_gb"] for m in windows) * 2**30 / GB
        if on_gpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    )
    steady = [m["tokens_per_s"] for m in windows[1:] or windows]
    out = {
        "tokens_per_s": sum(steady) / len(steady),
        "peak_gb": peak,
        "params": recipe.n_params,
        "path": path,
        "cfg": recipe.cfg,
    }
    recipe.cleanup()
    return out


def estimate_gb(cfg, shape: dict) -> float:
    """`train.estimate_memory`'s per-GPU figure for this check's model and batch."""
    kv = shape["hidden_size"] // shape["num_attention_heads"] * shape["num_key_value_heads"]
    params = shape["vocab_size"] * shape["hidden_size"] * (1 if shape["tie_word_embeddings"] else 2) + shape[
        "num_hidden_layers"
    ] * (
        2 * shape["hidden_size"] ** 2
        + 2 * shape["hidden_size"] * kv
        + 3 * shape["hidden_size"] * shape["intermediate_size"]
    )
    return (
        estimate_memory(
            cfg,
            ModelShape(
                params,
                shape["hidden_size"],
                shape["num_hidden_layers"],
                shape["intermediate_size"],
                kv,
                shape["vocab_size"],
            ),
        ).per_gpu
        / GB
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, a tiny model, a few steps: the same lines")
    p.add_argument("--steps", type=int, help="optimizer steps per recipe (default: 30; dry run 4)")
    p.add_argument("--batch-size", type=int, help="packed rows per step (default: 4; dry run 2)")
    p.add_argument("--seq-len", type=int, help="tokens per packed row (default: 2048; dry run 128)")
    p.add_argument(
        "--no-deepspeed", action="store_true", help="full recipe with torch AdamW even if DeepSpeed is there"
    )
    args = p.parse_args(argv)
    import torch

    on_gpu = not args.dry_run
    if on_gpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    args.steps = args.steps or (4 if args.dry_run else 30)
    args.batch_size = args.batch_size or (2 if args.dry_run else 4)
    args.seq_len = args.seq_len or (128 if args.dry_run else 2048)
    args.log_every = max(1, args.steps // 3)
    shape = TINY if args.dry_run else LLAMA_1B
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    peak = peak_flops(device) if on_gpu else None
    print(
        f"device: {device}, peak bf16 FLOP/s: {f'{peak:.3g}' if peak else 'unknown (set ' + PEAK_ENV + ')'}"
    )
    start, mfu = time.perf_counter(), {}
    with tempfile.TemporaryDirectory(prefix="sekisho-gpu-check-") as tmp:
        model_dir, tokens = write_model_and_rows(Path(tmp), shape, args.seq_len, 8 * args.batch_size, on_gpu)
        for kind in ("lora", "full"):
            r = run_recipe(kind, model_dir, tokens, args, on_gpu)
            mfu[kind] = 6 * r["params"] * r["tokens_per_s"] / peak if peak else None
            print(
                f"{kind}: path={r['path']} params={r['params']:.3g} tokens/s={r['tokens_per_s']:.0f} "
                f"peak_mem_gb={r['peak_gb']:.2f} ({'GPU allocated' if on_gpu else 'process RSS'}; "
                f"estimate {estimate_gb(r['cfg'], shape):.1f} per GPU) "
                f"mfu={'n/a' if mfu[kind] is None else f'{mfu[kind]:.3f}'}",
                flush=True,
            )
    print(f"elapsed: {time.perf_counter() - start:.0f} s")
    full = mfu["full"]
    if full is None:
        note = "CPU dry run: no GPU peak, the number is not meaningful" if args.dry_run else f"set {PEAK_ENV}"
        print(f"result: full_ft_mfu=n/a target=>={TARGET_MFU:.2f} fail ({note})")
        return 0 if args.dry_run else 1
    verdict = "pass" if full >= TARGET_MFU else "fail"
    print(f"result: full_ft_mfu={full:.3f} target=>={TARGET_MFU:.2f} {verdict}")
    return 0 if verdict == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
