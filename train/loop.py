"""The training loop every recipe runs, and the trainer state its checkpoints
share. A recipe calls `run(self, ...)`; what differs between recipes (the forward
and backward of one micro-batch, the optimizer step) is two of its methods.

Loss is on the labels `data` prepared. One micro-batch is drawn at a time from a
seeded permutation per epoch, so the data position is a function of the step: a
run resumed from a checkpoint at step N continues with batch N + 1, exactly as
the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from train.recipe import CheckpointSink, MetricsSink


class Steps(Protocol):
    """What `run` needs of a recipe."""

    cfg: Any
    world_size: int
    step: int
    batch_ids: list[int]
    n_params: int

    def batches(self, start_step: int = 0): ...
    def collate(self, batch) -> tuple[dict, int]: ...
    def evaluate(self) -> float | None: ...
    def device(self): ...
    def param_groups(self) -> list[dict]: ...

    def forward_backward(self, inputs: dict, last: bool) -> float:
        """Forward and backward of one micro-batch (`last`: the step's last one);
        returns its share of the step's loss (loss / grad_accum_steps)."""

    def optimizer_step(self) -> Any:
        """Clip, step the optimizer, zero gradients; returns the gradient norm or None."""


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


def resolve_epochs(cfg, n_examples: int, world_size: int):
    """`cfg` with its `epochs` turned into `optim.steps`, for a training split of
    `n_examples` on `world_size` ranks; `cfg` itself when it gives steps.

    steps = epochs x micro-batches per epoch (`examples.micro_batches_per_epoch`) //
    grad_accum_steps, at least 1: rounded down, so no example is seen more than
    `epochs` times. A function of the data and the config only, so every rank, and a
    resumed run, derives the same number.

    Raises:
        ConfigError: the derived steps are fewer than optim.warmup_steps or checkpoint_every.
    """
    if cfg.epochs is None:
        return cfg
    from pydantic import ValidationError

    from foundation import ConfigError
    from train.examples import micro_batches_per_epoch

    micro = micro_batches_per_epoch(n_examples, cfg, world_size)
    steps = max(1, cfg.epochs * micro // cfg.optim.grad_accum_steps)
    body = cfg.model_dump()
    body["epochs"], body["optim"]["steps"] = None, steps
    try:
        return type(cfg).model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(
            f"job {cfg.name!r}: epochs: {cfg.epochs} epoch(s) of {n_examples} examples on "
            f"{world_size} worker(s) (optim.batch_size {cfg.optim.batch_size}, grad_accum_steps "
            f"{cfg.optim.grad_accum_steps}) is {steps} steps: {problems}."
        ) from None


def run(
    r: Steps,
    on_metrics: MetricsSink | None = None,
    log_every: int | None = None,
    on_checkpoint: CheckpointSink | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Train `r` from its current step to `cfg.optim.steps` (arguments as `Recipe.train`).

    Returns:
        The last metrics logged.
    """
    from train.utilisation import cuda_peak_memory, gpu_step_metrics

    cfg, accum, steps = r.cfg, r.cfg.optim.grad_accum_steps, r.cfg.optim.steps
    log_every, every = log_every or cfg.log_every, cfg.checkpoint_every
    batches = r.batches(r.step * accum)
    last: dict[str, float] = {}
    window_tokens, window_start = 0, time.perf_counter()
    while r.step < steps:
        lr = lr_at(r.step, cfg)
        for group in r.param_groups():
            group["lr"] = lr
        step_ids, step_loss, step_tokens = [], 0.0, 0
        for micro in range(accum):
            inputs, tokens = r.collate(next(batches))
            step_ids += list(r.batch_ids)
            step_loss += r.forward_backward(inputs, last=micro == accum - 1)
            step_tokens += tokens
        r.batch_ids = step_ids
        grad_norm = r.optimizer_step()
        r.step += 1
        window_tokens += step_tokens * r.world_size
        if r.step % log_every == 0 or r.step == steps:
            elapsed = time.perf_counter() - window_start
            tps = window_tokens / elapsed if elapsed > 0 else 0.0
            last = {
                "loss": step_loss,
                "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
                "tokens_per_s": tps,
                **gpu_step_metrics(
                    tps, r.world_size, r.n_params, cfg.peak_flops, cuda_peak_memory(r.device())
                ),
            }
            if on_metrics:
                on_metrics(last, r.step)
            window_tokens, window_start = 0, time.perf_counter()
        if on_metrics and cfg.eval_every and (r.step % cfg.eval_every == 0 or r.step == steps):
            eval_loss = r.evaluate()
            if eval_loss is not None:
                on_metrics({"eval_loss": eval_loss}, r.step)
        if on_step:
            on_step(r.step)
        if on_checkpoint and ((every and r.step % every == 0) or r.step == steps):
            on_checkpoint(r.step, last)
    return last


def trainer_state(r, extra: dict | None = None) -> dict:
    """What a checkpoint records beside the weights: step, attempt, world size, data position."""
    from train.examples import data_position

    epoch, batch = data_position(
        r.step * r.cfg.optim.grad_accum_steps, len(r.examples), r.cfg, r.rank, r.world_size
    )
    return {
        "step": r.step,
        "attempt": r.attempt,
        "world_size": r.world_size,
        "data_position": {"epoch": epoch, "batch": batch},
        **(extra or {}),
    }


def check_resumable(state: dict, ckpt_dir: str | Path, world_size: int) -> None:
    """Raises:
    ValueError: the checkpoint was written by another number of workers."""
    if state["world_size"] != world_size:
        raise ValueError(
            f"checkpoint {ckpt_dir} was written by {state['world_size']} workers, "
            f"this run has {world_size}; the data order would differ"
        )
