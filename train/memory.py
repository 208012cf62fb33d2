"""Per-GPU memory of a training job, before any worker starts.

Model states follow DeepSpeed's own ZeRO estimators (bytes per parameter: bf16
weights 2, bf16 + fp32 gradients 6, fp32 master weights + Adam moments 12; under
ZeRO-3 the largest layer is gathered whole, 4 bytes per parameter), so
`estimate_zero2/3_model_states_mem_needs` and this module agree. Activations are
those of a Llama block with flash attention, saved in bf16:

    per token per layer: norm inputs/outputs and residual 6h, k and v 4 kv_dim,
    MLP gate, up, activation and product 8 i
    logits: 10 V per token (bf16 logits, fp32 upcast and its gradient)

With gradient checkpointing only each layer's input (2h per token) stays, and one
layer is recomputed at a time. A fixed allowance covers the CUDA context, NCCL
buffers and allocator fragmentation.

Host memory of one node is the larger of what loading and what training keep there,
plus a fixed allowance per worker process (torch, CUDA and DeepSpeed libraries, the
examples). Both as DeepSpeed's estimators count them (1.5 buffer factor), loading in
the recipes' dtype (bf16 on GPUs, where DeepSpeed assumes fp32): without ZeRO-3 every
worker of the node materialises the whole model before moving it to its GPU; under
ZeRO-3 it is built partitioned (`deepspeed.zero.Init`) and only the largest layer is
whole at a time. Training keeps the offloaded state there.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundation import UserError
from train.config import JobFields, LoraJobConfig
from train.registry import recipe_class

GB = 1e9
RUNTIME_OVERHEAD_GB = 4.0
HOST_OVERHEAD_PER_WORKER_GB = 8.0


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that memory depends on."""

    params: float
    hidden: int
    layers: int
    intermediate: int
    kv_dim: int
    vocab: int

    @property
    def largest_layer_params(self) -> float:
        """The embedding (vocab x hidden) or one block, whichever is larger."""
        block = (
            2 * self.hidden * self.hidden
            + 2 * self.hidden * self.kv_dim
            + 3 * self.hidden * self.intermediate
        )
        return max(self.vocab * self.hidden, block)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one block, by PEFT module name."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


MODEL_SHAPES = {
    "llama-3.1-8b": ModelShape(8.03e9, 4096, 32, 14336, 1024, 128256),
    "llama-3.1-70b": ModelShape(70.6e9, 8192, 80, 28672, 1024, 128256),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, and per node of host memory (CPU RAM)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    runtime: float
    cpu_per_node: float  # offloaded model state of one node (DeepSpeed's figure)
    gpu_memory: float
    cpu_memory: float
    host_loading: float = 0.0  # one node's copies of the model while it loads
    host_runtime: float = 0.0  # one node's worker processes themselves

    @property
    def per_gpu(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime

    @property
    def host_per_node(self) -> float:
        """Peak host memory of the busiest node: loading and training do not overlap."""
        return max(self.host_loading, self.cpu_per_node) + self.host_runtime

    @property
    def fits_gpu(self) -> bool:
        return self.per_gpu <= self.gpu_memory

    @property
    def fits_host(self) -> bool:
        return self.host_per_node <= self.cpu_memory

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_host

    def describe(self) -> str:
        parts = ", ".join(
            f"{k} {getattr(self, k) / GB:.1f}"
            for k in ("weights", "gradients", "optimizer", "activations", "runtime")
        )
        host = ", ".join(
            f"{k} {v / GB:.0f}"
            for k, v in (
                ("loading", self.host_loading),
                ("offloaded", self.cpu_per_node),
                ("processes", self.host_runtime),
            )
        )
        return (
            f"{self.per_gpu / GB:.1f} GB per GPU ({parts}) of {self.gpu_memory / GB:.0f} GB; "
            f"host {self.host_per_node / GB:.0f} GB per node ({host}) of {self.cpu_memory / GB:.0f} GB"
        )


def lora_trainable_params(cfg: LoraJobConfig, shape: ModelShape) -> float:
    shapes = shape.linear_shapes()
    per_block = sum(
        cfg.lora.r * (shapes[m][0] + shapes[m][1]) for m in cfg.lora.target_modules if m in shapes
    )
    return per_block * shape.layers


def activation_bytes(cfg: JobFields, shape: ModelShape) -> float:
    """Activations of one micro-batch on one GPU (bf16; see module doc)."""
    tokens = cfg.optim.batch_size * cfg.plan.seq_len
    per_layer = 6 * 2 * shape.hidden + 2 * 2 * shape.kv_dim + 4 * 2 * shape.intermediate
    logits = 10 * shape.vocab
    if cfg.gradient_checkpointing:
        return tokens * (shape.layers * 2 * shape.hidden + per_layer + logits)
    return tokens * (shape.layers * per_layer + logits)


def model_state_bytes(
    params: float, stage: int | None, offload_opt: bool, offload_params: bool, gpus: int, largest_layer: float
) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) per GPU for `params` trained with mixed-precision
    Adam: DDP keeps fp32 weights, grads and moments (16 B); ZeRO as DeepSpeed counts it."""
    if not stage:  # DDP, or ZeRO stage 0 (replicated state)
        return 4 * params, 4 * params, 8 * params
    if stage == 2:
        if offload_opt:
            return 2 * params, 0.0, 0.0
        return 2 * params, 6 * params / gpus, 12 * params / gpus
    gathered = 4 * largest_layer
    if offload_params:
        return gathered, 0.0, 0.0
    if offload_opt:
        return gathered + 2 * params / gpus, 0.0, 0.0
    return gathered + 2 * params / gpus, 4 * params / gpus, 12 * params / gpus


def estimate_memory(cfg: JobFields, shape: ModelShape | None = None) -> MemoryEstimate:
    """Per-GPU memory of a job: weights, gradients, optimizer states, activations.

    Args:
        shape: the model's sizes; by default `MODEL_SHAPES[cfg.plan.model_shape]`.

    Raises:
        UserError: the config has no `plan`, or names an unknown model shape.
    """
    if cfg.plan is None:
        raise UserError(f"job {cfg.name!r}: estimate_memory needs a `plan:` block (model_shape, seq_len)")
    if shape is None:
        if cfg.plan.model_shape not in MODEL_SHAPES:
            raise UserError(
                f"plan.model_shape: {cfg.plan.model_shape!r} is not one of {sorted(MODEL_SHAPES)}"
            )
        shape = MODEL_SHAPES[cfg.plan.model_shape]
    gpus = cfg.scaling.num_workers
    ds = cfg.deepspeed
    stage = ds.zero_stage if ds else None
    offload_opt, offload_params = (ds.offload_optimizer, ds.offload_params) if ds else (False, False)
    host_per_param = 18 if offload_params else 16
    nodes = max(1, -(-gpus // cfg.plan.gpus_per_node))
    if recipe_class(cfg).full_parameters:
        weights, grads, optim = model_state_bytes(
            shape.params, stage, offload_opt, offload_params, gpus, shape.largest_layer_params
        )
        offloaded = shape.params if offload_opt or offload_params else 0.0
    else:  # frozen bf16 base (sharded under ZeRO-3) + the adapter's fp32 training state
        base = 2 * shape.params / gpus + 4 * shape.largest_layer_params if stage == 3 else 2 * shape.params
        trainable = lora_trainable_params(cfg, shape)
        weights, grads, optim = model_state_bytes(trainable, stage, offload_opt, offload_params, gpus, 0.0)
        weights += base
        offloaded = trainable if offload_opt else 0.0
    # Host memory as DeepSpeed counts it (with its 1.5 buffer factor).
    host = offloaded * host_per_param / nodes * 1.5
    if stage == 2 and offload_opt:
        host = offloaded * max(4 * gpus, 16) * 1.5
    workers_per_node = min(gpus, cfg.plan.gpus_per_node)
    dtype_bytes = 2 if cfg.scaling.use_gpu else 4
    whole_at_load = shape.largest_layer_params if stage == 3 else shape.params
    loading = whole_at_load * dtype_bytes * workers_per_node * 1.5
    return MemoryEstimate(
        weights,
        grads,
        optim,
        activation_bytes(cfg, shape),
        RUNTIME_OVERHEAD_GB * GB,
        host,
        cfg.plan.gpu_memory_gb * GB,
        cfg.plan.cpu_memory_gb * GB,
        host_loading=loading,
        host_runtime=workers_per_node * HOST_OVERHEAD_PER_WORKER_GB * GB,
    )


def check_fits(cfg: JobFields, shape: ModelShape | None = None) -> MemoryEstimate:
    """`estimate_memory`, refusing a job that cannot fit with what would make it fit.

    Raises:
        UserError: the job needs more GPU or host memory than the plan gives it.
    """
    est = estimate_memory(cfg, shape)
    if est.fits:
        return est
    if est.fits_gpu:
        raise UserError(
            f"job {cfg.name!r} does not fit in host memory: {est.describe()}. Try {_host_hints(cfg, est)}."
        )
    hints = []
    if not cfg.gradient_checkpointing:
        hints.append("gradient_checkpointing: true")
    if cfg.optim.batch_size > 1:
        hints.append("a smaller optim.batch_size")
    ds = cfg.deepspeed
    if ds is None or ds.zero_stage in (0, 2):
        hints.append("deepspeed.zero_stage: 3")
    elif not ds.offload_optimizer:
        hints.append("deepspeed.offload_optimizer: true")
    elif not ds.offload_params:
        hints.append("deepspeed.offload_params: true")
    hints.append("more scaling.num_workers")
    raise UserError(f"job {cfg.name!r} does not fit: {est.describe()}. Try {', or '.join(hints)}.")


def _host_hints(cfg: JobFields, est: MemoryEstimate) -> str:
    """What would shrink the host memory of a job whose GPUs have room."""
    ds = cfg.deepspeed
    if est.host_loading >= est.cpu_per_node and (ds is None or ds.zero_stage != 3):
        return (
            "deepspeed.zero_stage: 3 (the model loads partitioned), or fewer workers per node "
            "(plan.gpus_per_node)"
        )
    hints = []
    if ds is not None and ds.offload_params:
        hints.append("deepspeed.offload_params: false")
    if ds is not None and ds.offload_optimizer:
        hints.append("deepspeed.offload_optimizer: false")
    return ", or ".join(hints + ["more scaling.num_workers (the offloaded state spreads over more nodes)"])
