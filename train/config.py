"""The fine-tuning job config (`configs/train/*.yaml`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from foundation import StrictConfig

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(StrictConfig):
    """PEFT LoRA settings."""

    r: int = Field(16, ge=1, le=512, description="Rank of the low-rank update.")
    alpha: int = Field(32, ge=1, description="Scaling numerator (update scaled by alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(ALL_LINEAR),
        min_length=1,
        description="Names of the linear layers to adapt.",
    )


class OptimSettings(StrictConfig):
    """Optimiser and schedule."""

    lr: float = Field(1e-3, gt=0, lt=1, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    steps: int = Field(
        1000, ge=1, description="Optimizer steps to run (leave out when the job gives `epochs`)."
    )
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch per worker.")
    grad_accum_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Micro-batches whose gradients are summed before each optimizer step: an effective "
            "batch of batch_size x grad_accum_steps x workers examples at one micro-batch's memory."
        ),
    )
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps.")
    schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="Decay after warmup.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    group_by_length: bool = Field(
        False,
        description=(
            "Batch examples of similar length together: the same examples each epoch, less "
            "padding when lengths vary widely; the order still follows the seed (exact resume)."
        ),
    )

    split_padding: bool = Field(
        True,
        description=(
            "Run a batch whose lengths differ widely as a few forward passes of similar "
            "lengths, each padded on its own; the loss and gradients are the whole batch's."
        ),
    )

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed steps ({self.steps})")
        return self


class ScalingSettings(StrictConfig):
    """How many Ray Train workers, and what each gets."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker when true.")
    cpus_per_worker: int = Field(2, ge=1, description="CPUs (and torch threads) per worker.")


class MemoryPlan(StrictConfig):
    """What `train.estimate_memory` needs before the base model is resolved."""

    model_shape: str = Field(
        description="Architecture preset (train.memory.MODEL_SHAPES), e.g. llama-3.1-70b."
    )
    seq_len: int = Field(2048, ge=1, description="Tokens per example (packed length).")
    gpu_memory_gb: float = Field(80.0, gt=0, description="Memory of one GPU, GB (H100: 80).")
    cpu_memory_gb: float = Field(2000.0, gt=0, description="Host memory of one node, GB (DGX H100: 2000).")
    gpus_per_node: int = Field(8, ge=1, description="GPUs per node (offloaded state shares one host).")


class JobFields(StrictConfig):
    """Fields every fine-tuning job has, whatever its recipe."""

    name: str = Field(
        description="Job name (Ray Train run name and MLflow run name).", pattern=r"^[A-Za-z0-9_.-]+$"
    )
    base_model: str = Field(description="Registry reference NAME@ALIAS or NAME/VERSION of the base model.")
    dataset: str = Field(
        description="Path of the dataset config (configs/data/*.yaml), relative to this file."
    )
    register_as: str = Field(description="Registered model name the trained output becomes a version of.")
    experiment: str = Field(
        "sekisho",
        min_length=1,
        max_length=500,
        pattern=r"^\S(.*\S)?$",
        description=(
            "MLflow experiment the run is recorded in (one per team or project, e.g. "
            "team-a/faq-bot); created on first use. A resumed run stays where it started."
        ),
    )
    seed: int = Field(0, description="Seed for initialisation and data order.")
    optim: OptimSettings = Field(default_factory=OptimSettings, description="Optimiser settings.")
    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Ray Train scaling.")
    epochs: int | None = Field(
        None,
        ge=1,
        description=(
            "Passes over the training split, instead of optim.steps (give at most one): the steps "
            "follow from its size, batch size, grad_accum_steps and workers."
        ),
    )
    log_every: int = Field(10, ge=1, description="Log metrics to MLflow every N steps.")
    checkpoint_every: int = Field(
        0,
        ge=0,
        description=(
            "Save a resumable checkpoint every N steps (0: only at the end). Each one is also "
            "the point a restarted worker group or a rerun of this job name continues from."
        ),
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Checkpoints kept in the job's storage (newest first)."
    )
    max_failures: int = Field(
        0,
        ge=-1,
        description=("Worker-group restarts Ray Train may make after a worker dies (-1: unlimited)."),
    )
    resume: Literal["auto", "never"] = Field(
        "auto",
        description=(
            "auto: a rerun of this job name continues the unfinished run from its latest "
            "checkpoint (and is a no-op when that run finished); never: always start a new run."
        ),
    )
    eval_every: int = Field(
        0,
        ge=0,
        description=(
            "Log eval_loss on the dataset's held-out split (split.eval_fraction) every N steps "
            "and at the end (0: never)."
        ),
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (less memory, ~30% slower)."
    )
    peak_flops: float = Field(
        989e12,
        gt=0,
        description=(
            "Peak FLOP/s of one GPU in the training dtype, the denominator of the logged mfu "
            "(default: H100 dense bf16). GPU jobs only."
        ),
    )
    plan: MemoryPlan | None = Field(
        None, description="Sizes for train.estimate_memory (shipped cluster configs)."
    )

    @field_validator("epochs")
    @classmethod
    def _epochs_or_steps(cls, value: int | None, info) -> int | None:
        optim = info.data.get("optim")
        if value is not None and optim is not None and "steps" in optim.model_fields_set:
            raise ValueError("give either epochs or optim.steps, not both (epochs derives the steps)")
        return value

    @model_validator(mode="after")
    def _checkpoint_fits(self):
        # With epochs the steps are known once the data is (train.loop.resolve_epochs checks then).
        if self.epochs is None and self.checkpoint_every > self.optim.steps:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) exceeds optim.steps "
                f"({self.optim.steps}); use 0 to checkpoint only at the end"
            )
        return self

    @field_validator("dataset")
    @classmethod
    def _resolve(cls, value: str, info) -> str:
        base = (info.context or {}).get("config_dir")
        return str(Path(base, value)) if base and not Path(value).is_absolute() else value

    @field_validator("base_model")
    @classmethod
    def _is_ref(cls, value: str) -> str:
        if "@" not in value and "/" not in value:
            raise ValueError(f"{value!r} is not a registry reference; expected NAME@ALIAS or NAME/VERSION")
        return value


class LoraJobConfig(JobFields):
    """A LoRA fine-tuning job: base model + dataset -> a registered adapter version."""

    recipe: Literal["sft_lora"] = Field("sft_lora", description="Training recipe.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings.")
    deepspeed: DeepSpeedSettings | None = Field(
        None,
        description=(
            "ZeRO sharding of the frozen base and the adapter (large bases across nodes); none: DDP."
        ),
    )


class DeepSpeedSettings(StrictConfig):
    """DeepSpeed ZeRO: how optimizer state, gradients and parameters are sharded."""

    zero_stage: Literal[0, 2, 3] = Field(
        3,
        description=(
            "0: no sharding (plain data parallelism, as DDP: every rank holds all state, gradients "
            "all-reduced); 2: shard optimizer state and gradients; 3: also parameters."
        ),
    )
    offload_optimizer: bool = Field(False, description="Keep optimizer state in host memory (CPU Adam).")
    offload_params: bool = Field(
        False, description="Keep parameters in host memory between uses (stage 3 only)."
    )

    @model_validator(mode="after")
    def _offload_params_needs_stage3(self):
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3 (stage 2 does not partition parameters)")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 2 or 3 (stage 0 keeps all state on the GPU)")
        return self


class FullJobConfig(JobFields):
    """Full fine-tuning (`sft_full`) or continued pre-training on raw text (`cpt`)
    with DeepSpeed ZeRO: base model + dataset -> merged full weights as a version."""

    recipe: Literal["sft_full", "cpt"] = Field(
        description="sft_full: chat data, loss on assistant tokens; cpt: raw text, loss on every token."
    )
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings, description="ZeRO settings.")
    max_shard_size: str = Field(
        "5GB", pattern=r"^[0-9]+(KB|MB|GB)$", description="Largest safetensors shard of the exported weights."
    )


LoraJobConfig.model_rebuild()
RECIPE_CONFIGS: dict[str, type[JobFields]] = {
    "sft_lora": LoraJobConfig,
    "sft_full": FullJobConfig,
    "cpt": FullJobConfig,
}


class TrainJobConfig:
    """Any job config under configs/train/, its class chosen by the `recipe` key
    (sft_lora when absent): what `sekisho config check` loads."""

    @classmethod
    def from_yaml(cls, path: str | Path) -> JobFields:
        """Load with the config class of the file's recipe.

        Raises:
            ConfigError: unknown recipe, or the file does not validate.
        """
        import yaml

        from foundation import ConfigError

        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            raw = None  # the class's own loader reports it with file and line
        recipe = raw.get("recipe", "sft_lora") if isinstance(raw, dict) else "sft_lora"
        if recipe not in RECIPE_CONFIGS:
            raise ConfigError(f"{path}: recipe: {recipe!r} is not one of {sorted(RECIPE_CONFIGS)}.")
        return RECIPE_CONFIGS[recipe].from_yaml(path)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {**FullJobConfig.field_help(), **LoraJobConfig.field_help()}

    @classmethod
    def variants(cls) -> dict[str, type[JobFields]]:
        """The config class of each recipe (what `sekisho config explain train` shows)."""
        return dict(RECIPE_CONFIGS)
