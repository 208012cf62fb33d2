"""The LoRA fine-tuning recipe: a plain object (setup / train / save / cleanup)
that runs in one process without Ray; `train.trainer` wraps it for Ray Train.

Loss is on assistant tokens only (labels prepared by `data`). Data order is a
seeded permutation per epoch and one batch is drawn per step, so the data position
is a function of the step: a run resumed from a checkpoint at step N continues
with batch N + 1, exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

from train.config import LoraJobConfig
from train.examples import ExampleFeed, read_examples

MetricsSink = Callable[[dict[str, float], int], None]
CheckpointSink = Callable[[int, dict[str, float]], None]


def lr_at(step: int, cfg) -> float:
    """Learning rate for 0-based `step`: linear warmup, then constant/linear/cosine decay."""
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    progress = (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps)
    if o.schedule == "linear":
        return o.lr * max(0.0, 1.0 - progress)
    return o.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class LoraRecipe(ExampleFeed):
    """PEFT LoRA supervised fine-tuning on tokenised chat examples."""

    def __init__(self, cfg: LoraJobConfig, rank: int = 0, world_size: int = 1):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.step = 0
        self.attempt = 1
        self._device = None
        self.batch_ids: list[int] = []
        self.eval_examples: list = []

    def setup(self, base_model_dir: str | Path, tokens_path: str | Path, wrap_model=None) -> None:
        """Load the base model, add LoRA, load the examples.

        Args:
            wrap_model: optional function applied to the PEFT model (Ray Train's
                `prepare_model` for data parallelism).
        """
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from train.utilisation import forward_params

        torch.set_num_threads(self.cfg.scaling.cpus_per_worker)
        torch.manual_seed(self.cfg.seed)
        on_gpu = self.cfg.scaling.use_gpu and torch.cuda.is_available()
        # Ray Train gives each worker one GPU (CUDA_VISIBLE_DEVICES); standalone: the current one.
        self._device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else None
        base = AutoModelForCausalLM.from_pretrained(str(base_model_dir),
                                                    dtype=torch.bfloat16 if on_gpu else torch.float32)
        if self.cfg.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lora = self.cfg.lora
        self.peft_model = get_peft_model(base, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, task_type="CAUSAL_LM"))
        if self._device is not None:
            self.peft_model.to(self._device)
        self.model = wrap_model(self.peft_model) if wrap_model else self.peft_model
        self.n_params = forward_params(self.peft_model)
        self.pad_id = base.config.pad_token_id or 0
        self.examples = read_examples(tokens_path)
        self.load_eval(tokens_path)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.optim.lr,
                                           weight_decay=self.cfg.optim.weight_decay)

    def module(self):
        return self.model

    def device(self):
        return self._device

    def train(self, on_metrics: MetricsSink | None = None, log_every: int | None = None,
              on_checkpoint: CheckpointSink | None = None, on_step: Callable[[int], None] | None = None,
              ) -> dict[str, float]:
        """Run from the current step to the configured number of steps.

        Args:
            on_metrics: called with (metrics, step) every `log_every` steps and at the end.
            on_checkpoint: called with (step, last metrics) every `cfg.checkpoint_every`
                steps and at the end; the caller saves with `save_checkpoint`.
            on_step: called with the step just finished (tests record `batch_ids` here).

        Returns:
            The last metrics logged.
        """
        import torch

        from train.utilisation import cuda_peak_memory, gpu_step_metrics

        log_every = log_every or self.cfg.log_every
        every = self.cfg.checkpoint_every
        self.model.train()
        accum = self.cfg.optim.grad_accum_steps
        batches = self.batches(self.step * accum)
        last: dict[str, float] = {}
        window_tokens, window_start = 0, time.perf_counter()
        while self.step < self.cfg.optim.steps:
            lr = lr_at(self.step, self.cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            step_ids, step_loss, step_tokens = [], 0.0, 0
            for micro in range(accum):
                inputs, tokens = self.collate(next(batches))
                step_ids += list(self.batch_ids)
                # Under DDP, gradients are all-reduced once per step, on the last micro-batch.
                quiet = micro < accum - 1 and hasattr(self.model, "no_sync")
                with self.model.no_sync() if quiet else contextlib.nullcontext():
                    loss = self.model(**inputs).loss / accum
                    loss.backward()
                step_loss += float(loss.detach())
                step_tokens += tokens
            self.batch_ids = step_ids
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.cfg.optim.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            window_tokens += step_tokens * self.world_size
            if self.step % log_every == 0 or self.step == self.cfg.optim.steps:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / elapsed if elapsed > 0 else 0.0
                last = {"loss": step_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tps,
                        **gpu_step_metrics(tps, self.world_size, self.n_params, self.cfg.peak_flops,
                                           cuda_peak_memory(self._device))}
                if on_metrics:
                    on_metrics(last, self.step)
                window_tokens, window_start = 0, time.perf_counter()
            if on_metrics and self.cfg.eval_every and (
                    self.step % self.cfg.eval_every == 0 or self.step == self.cfg.optim.steps):
                eval_loss = self.evaluate()
                if eval_loss is not None:
                    on_metrics({"eval_loss": eval_loss}, self.step)
            if on_step:
                on_step(self.step)
            if on_checkpoint and ((every and self.step % every == 0) or self.step == self.cfg.optim.steps):
                on_checkpoint(self.step, last)
        return last

    def save_checkpoint(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write the resumable state (weights, optimizer, RNG, step, data position);
        rank 0 also writes the adapter. Every rank calls it (each saves its RNG)."""
        from train.checkpoint import save_state

        epoch, batch = self.data_position(self.step * self.cfg.optim.grad_accum_steps)
        out = save_state(out_dir, self.peft_model, self.optimizer, {
            "step": self.step, "attempt": self.attempt, "world_size": self.world_size,
            "data_position": {"epoch": epoch, "batch": batch}, **(extra or {})}, rank=self.rank)
        if self.rank == 0:
            self.save(out / "adapter")
        return out

    def load_checkpoint(self, ckpt_dir: str | Path) -> dict:
        """Continue from a checkpoint written by `save_checkpoint` (after `setup`).

        Raises:
            ValueError: it was written with another world size or another model.
        """
        from train.checkpoint import load_state, read_state

        state = read_state(ckpt_dir)
        if state["world_size"] != self.world_size:
            raise ValueError(f"checkpoint {ckpt_dir} was written by {state['world_size']} workers, "
                             f"this run has {self.world_size}; the data order would differ")
        load_state(ckpt_dir, self.peft_model, self.optimizer, rank=self.rank)
        self.step = state["step"]
        return state

    def save(self, out_dir: str | Path) -> Path:
        """Write the adapter (safetensors + adapter_config.json) to `out_dir`."""
        out = Path(out_dir)
        self.peft_model.save_pretrained(str(out), safe_serialization=True)
        return out

    def cleanup(self) -> None:
        self.model = self.peft_model = self.optimizer = None
        self.examples = []
