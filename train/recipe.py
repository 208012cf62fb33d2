"""The interface every training recipe implements (after torchtune's
`FTRecipeInterface`): a structural type, so a recipe is any class with these
members; none inherits an implementation. `train.registry` names the recipes,
`train.loop` holds the steps they share.

A recipe runs in one process without Ray, and under Ray Train as one rank of
`world_size`: `setup`, optionally `load_checkpoint`, `train` (which calls back for
checkpoints: the caller saves with `save_checkpoint`), `cleanup`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

MetricsSink = Callable[[dict[str, float], int], None]
CheckpointSink = Callable[[int, dict[str, float]], None]
ModelWrapper = Callable[[Any], Any]


class Recipe(Protocol):
    """A training recipe; `step`, `attempt` and `batch_ids` are read by the caller's hooks."""

    export_dir: ClassVar[str]  # the folder of a final checkpoint that holds the export
    export_kind: ClassVar[str]  # what the export registers as (airlock.register_trained)
    full_parameters: ClassVar[bool]  # trains every weight (False: an adapter on a frozen base)
    step: int
    attempt: int
    batch_ids: list[int]

    def __init__(self, cfg, rank: int = 0, world_size: int = 1) -> None: ...

    @classmethod
    def check(cls, cfg) -> None:
        """Raises:
        UserError: `cfg` asks for something this recipe does not do."""

    def setup(
        self, base_model_dir: str | Path, tokens_path: str | Path, wrap_model: ModelWrapper | None = None
    ) -> None:
        """Load the base model, the optimizer and the examples.

        Args:
            wrap_model: the caller's data-parallel wrapper (Ray Train's `prepare_model`);
                a recipe whose engine does data parallelism itself does not use it.
        """

    def train(
        self,
        on_metrics: MetricsSink | None = None,
        log_every: int | None = None,
        on_checkpoint: CheckpointSink | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> dict[str, float]:
        """Run from the current step to the configured number of steps.

        Args:
            on_metrics: called with (metrics, step) every `log_every` steps and at the end.
            on_checkpoint: called with (step, last metrics) every `cfg.checkpoint_every`
                steps and at the end.
            on_step: called with the step just finished.

        Returns:
            The last metrics logged.
        """

    def save_checkpoint(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write the resumable state, and (at least at the last step) the export in
        `out_dir / export_dir`; every rank calls it. Returns `out_dir`."""

    def load_checkpoint(self, ckpt_dir: str | Path) -> dict:
        """Continue from what `save_checkpoint` wrote (after `setup`); returns its state.

        Raises:
            ValueError: it was written by another number of workers or another model.
        """

    def save(self, out_dir: str | Path) -> Path:
        """Write the export (adapter or merged weights) to `out_dir`; every rank calls it."""

    def cleanup(self) -> None:
        """Drop the model, optimizer and examples."""
