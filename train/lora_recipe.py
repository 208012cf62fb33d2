"""PEFT LoRA supervised fine-tuning (`sft_lora`), in one process without Ray or as
one rank under Ray Train: data parallel through the caller's `wrap_model` (DDP),
or, with `deepspeed:` (ZeRO-3, for a base too large for one GPU), with the frozen
base partitioned over the ranks as it loads (`train.deepspeed_zero`) and the
adapter trained by a DeepSpeed engine. Export: the adapter (safetensors +
adapter_config.json).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from foundation import UserError
from train import examples, loop
from train.config import LoraJobConfig
from train.recipe import CheckpointSink, MetricsSink, ModelWrapper


class LoraRecipe(examples.RankData):
    """LoRA on a frozen base, on tokenised examples (a `train.recipe.Recipe`)."""

    export_dir, export_kind, full_parameters = "adapter", "adapter", False

    def __init__(self, cfg: LoraJobConfig, rank: int = 0, world_size: int = 1):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.step, self.attempt = 0, 1
        self._device = None
        self.engine = None  # the DeepSpeed engine, under ZeRO
        self.batch_ids: list[int] = []
        self.examples: list = []
        self.eval_examples: list = []

    @classmethod
    def check(cls, cfg: LoraJobConfig) -> None:
        """Raises:
        UserError: the config asks for ZeRO at a stage below 3, or on one worker:
            either shards nothing of the frozen base, which is what ZeRO is for here."""
        ds = cfg.deepspeed
        if ds is None:
            return
        if ds.zero_stage != 3:
            raise UserError(
                f"job {cfg.name!r}: LoRA under DeepSpeed ZeRO runs at zero_stage 3, which shards "
                f"the frozen base; stage {ds.zero_stage} would shard only the adapter's small "
                f"state. Set deepspeed.zero_stage: 3, or remove `deepspeed:` to train with DDP."
            )
        if cfg.scaling.num_workers == 1:
            raise UserError(
                f"job {cfg.name!r}: LoRA under DeepSpeed ZeRO on one worker shards nothing; "
                f"remove `deepspeed:` (the base fits one GPU) or give more scaling.num_workers."
            )

    def setup(
        self, base_model_dir: str | Path, tokens_path: str | Path, wrap_model: ModelWrapper | None = None
    ) -> None:
        """Load the base model, add LoRA, load the examples.

        Args:
            wrap_model: applied to the PEFT model (Ray Train's `prepare_model` for DDP).
        """
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from train import deepspeed_zero
        from train.utilisation import forward_params

        torch.set_num_threads(self.cfg.scaling.cpus_per_worker)
        torch.manual_seed(self.cfg.seed)
        # First: with `epochs` the number of steps follows from the examples.
        self.examples = examples.read_examples(tokens_path)
        self.cfg = loop.resolve_epochs(self.cfg, len(self.examples), self.world_size)
        self.eval_examples = examples.read_eval(tokens_path)
        on_gpu = self.cfg.scaling.use_gpu and torch.cuda.is_available()
        # Ray Train gives each worker one GPU (CUDA_VISIBLE_DEVICES); standalone: the current one.
        self._device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else None
        if self.cfg.deepspeed is not None:
            deepspeed_zero.ensure_process_group("nccl" if on_gpu else "gloo")
            base = deepspeed_zero.load_model(base_model_dir, self.cfg)
        else:
            base = AutoModelForCausalLM.from_pretrained(
                str(base_model_dir), dtype=torch.bfloat16 if on_gpu else torch.float32
            )
        if self.cfg.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lora = self.cfg.lora
        self.peft_model = get_peft_model(
            base,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
        self.pad_id = base.config.pad_token_id or 0
        if self.cfg.deepspeed is not None:
            self.engine = self.model = deepspeed_zero.start_engine(self.peft_model, self.cfg)
            self._device, self.optimizer = self.engine.device, self.engine.optimizer
        else:
            if self._device is not None:
                self.peft_model.to(self._device)
            self.model = wrap_model(self.peft_model) if wrap_model else self.peft_model
            self.optimizer = torch.optim.AdamW(
                self._trainable(), lr=self.cfg.optim.lr, weight_decay=self.cfg.optim.weight_decay
            )
        self.n_params = forward_params(self.peft_model)

    def _trainable(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]

    def module(self):
        return self.model

    def device(self):
        return self._device

    def evaluate(self) -> float | None:
        return examples.evaluate(
            self.model, self.eval_examples, self.cfg.optim.batch_size, self.pad_id, self._device
        )

    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def forward_backward(self, inputs: dict, last: bool) -> float:
        if self.engine is not None:  # as the full recipe: the engine accumulates and steps
            loss = self.engine(**inputs).loss
            self.engine.backward(loss)
            self.engine.step()
            return float(loss.detach()) / self.cfg.optim.grad_accum_steps
        accum = self.cfg.optim.grad_accum_steps
        if not self.cfg.optim.split_padding:
            parts, n_labels = [inputs], None
        else:
            parts, n_labels = examples.split_padded(inputs)
        total = 0.0
        for k, part in enumerate(parts):
            # Under DDP, gradients are all-reduced once per step, on the last forward pass.
            quiet = not (last and k == len(parts) - 1) and hasattr(self.model, "no_sync")
            with self.model.no_sync() if quiet else contextlib.nullcontext():
                if n_labels is None:
                    loss = self.model(**part).loss / accum
                else:  # this part's summed token losses over the whole batch's label count
                    loss = self.model(**part, num_items_in_batch=max(n_labels, 1)).loss / accum
                loss.backward()
            total += float(loss.detach())
        return total

    def optimizer_step(self):
        import torch

        if self.engine is not None:
            return self.engine.get_global_grad_norm()  # the engine stepped in `forward_backward`
        grad_norm = torch.nn.utils.clip_grad_norm_(self._trainable(), self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def train(
        self,
        on_metrics: MetricsSink | None = None,
        log_every: int | None = None,
        on_checkpoint: CheckpointSink | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> dict[str, float]:
        """See `train.recipe.Recipe.train`."""
        self.model.train()
        return loop.run(self, on_metrics, log_every, on_checkpoint, on_step)

    def save_checkpoint(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write the resumable state (weights, optimizer, RNG, step, data position);
        rank 0 also writes the adapter. Every rank calls it (each saves its RNG)."""
        from train.checkpoint import save_rng, save_state

        if self.engine is None:
            out = save_state(
                out_dir, self.peft_model, self.optimizer, loop.trainer_state(self, extra), rank=self.rank
            )
        else:  # every rank writes its shard of the adapter's state; the base is not saved
            out = Path(out_dir)
            self.engine.save_checkpoint(str(out / "deepspeed"), tag="state", exclude_frozen_parameters=True)
            save_rng(out, self.rank)
            if self.rank == 0:
                (out / "trainer_state.json").write_text(json.dumps(loop.trainer_state(self, extra), indent=1))
        self.save(out / self.export_dir)
        return out

    def load_checkpoint(self, ckpt_dir: str | Path) -> dict:
        """Continue from a checkpoint written by `save_checkpoint` (after `setup`).

        Raises:
            ValueError: it was written with another world size or another model.
        """
        from train.checkpoint import load_rng, load_state, read_state

        state = read_state(ckpt_dir)
        loop.check_resumable(state, ckpt_dir, self.world_size)
        if self.engine is None:
            load_state(ckpt_dir, self.peft_model, self.optimizer, rank=self.rank)
        else:
            self.engine.load_checkpoint(
                str(Path(ckpt_dir, "deepspeed")), tag="state", load_module_strict=False
            )
            load_rng(ckpt_dir, self.rank)
        self.step = state["step"]
        return state

    def save(self, out_dir: str | Path) -> Path:
        """Write the adapter (safetensors + adapter_config.json) to `out_dir` on rank 0.
        Every rank must call it (under ZeRO-3 the adapter is gathered from the shards)."""
        from train import deepspeed_zero

        out = Path(out_dir)
        state = deepspeed_zero.gathered_trainable(self.engine) if self.engine is not None else None
        if self.rank == 0:
            self.peft_model.save_pretrained(str(out), safe_serialization=True, state_dict=state)
        return out

    def cleanup(self) -> None:
        self.model = self.peft_model = self.optimizer = self.engine = None
        self.examples = []
