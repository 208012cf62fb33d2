"""Full fine-tuning (`sft_full`) and continued pre-training (`cpt`) with DeepSpeed
ZeRO-2/3: a plain object (setup / train / save / cleanup) that runs in one process
without Ray (it starts a one-rank gloo group itself) and, under Ray Train, on the
process group Ray set up. Data order, padding and eval loss are shared with the LoRA
recipe (`train.examples`).

The two recipes differ only in their data: `sft_full` trains on chat examples with
labels on assistant tokens, `cpt` on raw text with labels on every token (both as
prepared by `data`). Output: merged full weights as sharded safetensors, with the
tokenizer and its chat template.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from train.config import FullJobConfig
from train.examples import ExampleFeed, read_examples
from train.recipe import CheckpointSink, MetricsSink, lr_at


def deepspeed_config(cfg: FullJobConfig) -> dict:
    """The DeepSpeed config a job config stands for."""
    ds, o = cfg.deepspeed, cfg.optim
    zero: dict = {"stage": ds.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    out = {"train_micro_batch_size_per_gpu": o.batch_size, "gradient_accumulation_steps": o.grad_accum_steps,
           "gradient_clipping": o.max_grad_norm, "zero_optimization": zero,
           "bf16": {"enabled": cfg.scaling.use_gpu}, "steps_per_print": 10 ** 9,
           "zero_allow_untested_optimizer": True, "wall_clock_breakdown": False}
    if ds.offload_optimizer:   # DeepSpeed's CPU Adam (a small op built with gcc on first use)
        out["optimizer"] = {"type": "AdamW", "params": {"lr": o.lr, "weight_decay": o.weight_decay}}
    return out


class FullRecipe(ExampleFeed):
    """Full-parameter training of a causal LM under DeepSpeed ZeRO."""

    def __init__(self, cfg: FullJobConfig, rank: int = 0, world_size: int = 1):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.step, self.attempt = 0, 1
        self.batch_ids: list[int] = []
        self.eval_examples: list = []

    def setup(self, base_model_dir: str | Path, tokens_path: str | Path) -> None:
        """Load the base model and examples; wrap the model in a DeepSpeed engine."""
        import torch
        import torch.distributed as dist
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(self.cfg.scaling.cpus_per_worker)
        torch.manual_seed(self.cfg.seed)
        if not dist.is_initialized():      # standalone: a group of one
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            for var in ("LOCAL_RANK", "RANK"):       # what DeepSpeed reads from a launcher
                os.environ.setdefault(var, "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            dist.init_process_group("gloo", rank=0, world_size=1)
        import deepspeed

        self.base_model_dir = Path(base_model_dir)
        model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pad_id = model.config.pad_token_id or 0
        ds_cfg = deepspeed_config(self.cfg)
        optimizer = None
        if "optimizer" not in ds_cfg:
            optimizer = torch.optim.AdamW(model.parameters(), lr=self.cfg.optim.lr,
                                          weight_decay=self.cfg.optim.weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_cfg,
            model_parameters=None if optimizer else model.parameters())
        from train.utilisation import forward_params

        self.n_params = forward_params(self.engine.module)
        self.examples = read_examples(tokens_path)
        self.load_eval(tokens_path)

    def module(self):
        return self.engine

    def device(self):
        return self.engine.device

    def train(self, on_metrics: MetricsSink | None = None, log_every: int | None = None,
              on_checkpoint: CheckpointSink | None = None, on_step: Callable[[int], None] | None = None,
              ) -> dict[str, float]:
        """Run from the current step to the configured number of steps (arguments
        as `LoraRecipe.train`); returns the last metrics logged."""
        from train.utilisation import cuda_peak_memory, gpu_step_metrics

        log_every = log_every or self.cfg.log_every
        every = self.cfg.checkpoint_every
        self.engine.train()
        accum = self.cfg.optim.grad_accum_steps
        batches = self.batches(self.step * accum)
        last: dict[str, float] = {}
        window_tokens, window_start = 0, time.perf_counter()
        while self.step < self.cfg.optim.steps:
            lr = lr_at(self.step, self.cfg)
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr
            step_ids, step_loss, step_tokens = [], 0.0, 0
            for _ in range(accum):
                inputs, tokens = self.collate(next(batches))
                step_ids += list(self.batch_ids)
                loss = self.engine(**inputs).loss
                self.engine.backward(loss)  # scaled by 1/accum; reduced at the boundary
                self.engine.step()  # steps the optimizer only at the accumulation boundary
                step_loss += float(loss.detach()) / accum
                step_tokens += tokens
            self.batch_ids = step_ids
            self.step += 1
            window_tokens += step_tokens * self.world_size
            if self.step % log_every == 0 or self.step == self.cfg.optim.steps:
                elapsed = time.perf_counter() - window_start
                grad_norm = self.engine.get_global_grad_norm()
                tps = window_tokens / elapsed if elapsed > 0 else 0.0
                last = {"loss": step_loss, "lr": lr,
                        "grad_norm": float(grad_norm) if grad_norm is not None else 0.0, "tokens_per_s": tps,
                        **gpu_step_metrics(tps, self.world_size, self.n_params, self.cfg.peak_flops,
                                           cuda_peak_memory(self.engine.device))}
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

    def full_state_dict(self) -> dict:
        """The whole model's weights on rank 0 (gathered from the ZeRO-3 shards); {} elsewhere.
        Every rank must call it."""
        if self.cfg.deepspeed.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
            return sd if self.rank == 0 else {}
        return self.engine.module.state_dict() if self.rank == 0 else {}

    def save(self, out_dir: str | Path) -> Path:
        """Write merged full weights (sharded safetensors), config, tokenizer and chat
        template to `out_dir` on rank 0. Every rank must call it (ZeRO-3 gathers)."""
        from transformers import AutoTokenizer

        out = Path(out_dir)
        state = self.full_state_dict()
        if self.rank == 0:
            self.engine.module.save_pretrained(str(out), state_dict=state, safe_serialization=True,
                                               max_shard_size=self.cfg.max_shard_size)
            AutoTokenizer.from_pretrained(str(self.base_model_dir)).save_pretrained(str(out))
        return out

    def save_checkpoint(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write the resumable state (and, at the last step, the merged weights in
        `model/`). DeepSpeed's own sharded format (torch files: a
        job reads back only what it wrote itself) plus trainer_state.json; every rank
        calls it and writes its own shard."""
        out = Path(out_dir)
        self.engine.save_checkpoint(str(out / "deepspeed"), tag="state")
        if self.step == self.cfg.optim.steps:      # the last checkpoint also holds the export
            self.save(out / "model")
        if self.rank == 0:
            epoch, batch = self.data_position(self.step * self.cfg.optim.grad_accum_steps)
            (out / "trainer_state.json").write_text(json.dumps({
                "step": self.step, "attempt": self.attempt, "world_size": self.world_size,
                "data_position": {"epoch": epoch, "batch": batch}, **(extra or {})}, indent=1))
        return out

    def load_checkpoint(self, ckpt_dir: str | Path) -> dict:
        """Continue from a checkpoint written by `save_checkpoint` (after `setup`).

        Raises:
            ValueError: it was written by another number of workers.
        """
        state = json.loads(Path(ckpt_dir, "trainer_state.json").read_text())
        if state["world_size"] != self.world_size:
            raise ValueError(f"checkpoint {ckpt_dir} was written by {state['world_size']} workers, "
                             f"this run has {self.world_size}; the data order would differ")
        self.engine.load_checkpoint(str(Path(ckpt_dir, "deepspeed")), tag="state")
        self.step = state["step"]
        return state

    def cleanup(self) -> None:
        # A group of one started by `setup` stays for the process: DeepSpeed keeps
        # handles to it, and a later recipe in the same process reuses it.
        self.engine = self.optimizer = None
        self.examples = []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
