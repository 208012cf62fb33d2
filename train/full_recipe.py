"""Full fine-tuning (`sft_full`) and continued pre-training (`cpt`) with DeepSpeed
ZeRO-2/3 (`train.deepspeed_zero`), in one process without Ray (on a gloo group of
one it starts itself) or as one rank of the process group Ray Train set up.

The two differ only in their data, as `data` prepared it: chat examples with
labels on assistant tokens, or raw text with labels on every token. Export:
merged full weights as sharded safetensors, with the tokenizer and chat template.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from train import deepspeed_zero, examples, loop
from train.config import FullJobConfig
from train.recipe import CheckpointSink, MetricsSink, ModelWrapper


class FullRecipe(examples.RankData):
    """Full-parameter training of a causal LM under DeepSpeed ZeRO (a `train.recipe.Recipe`)."""

    export_dir, export_kind, full_parameters = "model", "merged", True

    def __init__(self, cfg: FullJobConfig, rank: int = 0, world_size: int = 1):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.step, self.attempt = 0, 1
        self.batch_ids: list[int] = []
        self.examples: list = []
        self.eval_examples: list = []

    @classmethod
    def check(cls, cfg: FullJobConfig) -> None:
        """Nothing to refuse: every config of this class is trainable."""

    def setup(
        self, base_model_dir: str | Path, tokens_path: str | Path, wrap_model: ModelWrapper | None = None
    ) -> None:
        """Load the base model (under ZeRO-3 partitioned as it loads: no rank holds
        all of it) and the examples; wrap the model in a DeepSpeed engine (which does
        data parallelism itself: `wrap_model` is not used)."""
        import torch

        from train.utilisation import forward_params

        torch.set_num_threads(self.cfg.scaling.cpus_per_worker)
        torch.manual_seed(self.cfg.seed)
        # First: with `epochs` the number of steps follows from the examples.
        self.examples = examples.read_examples(tokens_path)
        self.cfg = loop.resolve_epochs(self.cfg, len(self.examples), self.world_size)
        self.eval_examples = examples.read_eval(tokens_path)
        deepspeed_zero.ensure_process_group(
            "nccl" if self.cfg.scaling.use_gpu and torch.cuda.is_available() else "gloo"
        )
        self.base_model_dir = Path(base_model_dir)
        model = deepspeed_zero.load_model(base_model_dir, self.cfg)
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pad_id = model.config.pad_token_id or 0
        self.engine = deepspeed_zero.start_engine(model, self.cfg)
        self.n_params = forward_params(self.engine.module)

    def module(self):
        return self.engine

    def device(self):
        return self.engine.device

    def evaluate(self) -> float | None:
        return examples.evaluate(
            self.engine, self.eval_examples, self.cfg.optim.batch_size, self.pad_id, self.device()
        )

    def param_groups(self) -> list[dict]:
        return self.engine.optimizer.param_groups

    def forward_backward(self, inputs: dict, last: bool) -> float:
        loss = self.engine(**inputs).loss
        self.engine.backward(loss)  # scaled by 1/accum; reduced at the boundary
        self.engine.step()  # steps the optimizer only at the accumulation boundary
        return float(loss.detach()) / self.cfg.optim.grad_accum_steps

    def optimizer_step(self):
        return self.engine.get_global_grad_norm()  # the engine stepped in `forward_backward`

    def train(
        self,
        on_metrics: MetricsSink | None = None,
        log_every: int | None = None,
        on_checkpoint: CheckpointSink | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> dict[str, float]:
        """See `train.recipe.Recipe.train`."""
        self.engine.train()
        return loop.run(self, on_metrics, log_every, on_checkpoint, on_step)

    def save(self, out_dir: str | Path) -> Path:
        """Write merged full weights (sharded safetensors), config, tokenizer and chat
        template to `out_dir` on rank 0. Every rank must call it (ZeRO-3 gathers)."""
        from transformers import AutoTokenizer

        out = Path(out_dir)
        state = deepspeed_zero.full_state_dict(self.engine, self.cfg.deepspeed.zero_stage, self.rank)
        if self.rank == 0:
            self.engine.module.save_pretrained(
                str(out), state_dict=state, safe_serialization=True, max_shard_size=self.cfg.max_shard_size
            )
            AutoTokenizer.from_pretrained(str(self.base_model_dir)).save_pretrained(str(out))
        return out

    def save_checkpoint(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write DeepSpeed's sharded state (torch files: a job reads back only what it
        wrote itself; every rank its own shard), trainer_state.json, and at the last
        step the merged weights in `model/`."""
        out = Path(out_dir)
        self.engine.save_checkpoint(str(out / "deepspeed"), tag="state")
        if self.step == self.cfg.optim.steps:
            self.save(out / self.export_dir)
        if self.rank == 0:
            (out / "trainer_state.json").write_text(json.dumps(loop.trainer_state(self, extra), indent=1))
        return out

    def load_checkpoint(self, ckpt_dir: str | Path) -> dict:
        """Continue from a checkpoint written by `save_checkpoint` (after `setup`).

        Raises:
            ValueError: it was written by another number of workers.
        """
        state = json.loads(Path(ckpt_dir, "trainer_state.json").read_text())
        loop.check_resumable(state, ckpt_dir, self.world_size)
        self.engine.load_checkpoint(str(Path(ckpt_dir, "deepspeed")), tag="state")
        self.step = state["step"]
        return state

    def cleanup(self) -> None:
        self.engine = None
        self.examples = []
