"""Everything Sekisho asks of DeepSpeed, in one place: the config a job stands for,
loading the base model (partitioned as it is built under ZeRO-3), the engine, the
standalone process group DeepSpeed expects from a launcher, and the gathering of
ZeRO-3 shards into one state dict (a private DeepSpeed method: this module is the
only caller, so a DeepSpeed upgrade is checked here).
"""

from __future__ import annotations

import os

from foundation.net import free_port
from train.config import JobFields


def deepspeed_config(cfg: JobFields) -> dict:
    """The DeepSpeed config a job config with `deepspeed:` stands for (full or LoRA)."""
    ds, o = cfg.deepspeed, cfg.optim
    zero: dict = {"stage": ds.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    out = {
        "train_micro_batch_size_per_gpu": o.batch_size,
        "gradient_accumulation_steps": o.grad_accum_steps,
        "gradient_clipping": o.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.scaling.use_gpu},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:  # DeepSpeed's CPU Adam (a small op built with gcc on first use)
        out["optimizer"] = {"type": "AdamW", "params": {"lr": o.lr, "weight_decay": o.weight_decay}}
    return out


def ensure_process_group(backend: str = "gloo") -> None:
    """Start a group of one (with the variables DeepSpeed reads from a launcher)
    unless this process is in a group already (as under Ray Train). The group stays
    for the process: DeepSpeed keeps handles to it, and a later engine reuses it.

    Args:
        backend: "nccl" for a GPU job (gloo cannot reduce CUDA tensors), else "gloo".
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    for var in ("LOCAL_RANK", "RANK"):
        os.environ.setdefault(var, "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group(backend, rank=0, world_size=1)


def train_dtype(cfg: JobFields):
    """The dtype the weights are loaded and trained in: bf16 on GPUs (DeepSpeed's bf16
    mode; the fp32 master copy lives in the sharded optimizer state), fp32 on CPU."""
    import torch

    return torch.bfloat16 if cfg.scaling.use_gpu else torch.float32


def load_model(base_model_dir, cfg: JobFields):
    """The base model in `train_dtype(cfg)`. Under ZeRO-3 it is built inside
    `deepspeed.zero.Init`, so every parameter is partitioned as it is created and no
    rank ever holds the whole model: transformers then gathers one module at a time,
    rank 0 copies its weights in from the memory-mapped safetensors, and the module
    is partitioned again. Call it on every rank (after `ensure_process_group`).

    Returns:
        The model (a `PreTrainedModel`), its parameters partitioned under ZeRO-3.
    """
    from transformers import AutoModelForCausalLM

    dtype = train_dtype(cfg)
    if cfg.deepspeed.zero_stage != 3:
        return AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=dtype)
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    # transformers looks this object up through a weak reference, only while it lives:
    # that is what switches from_pretrained to zero.Init and the gathered loading.
    hf_ds_config = HfDeepSpeedConfig(deepspeed_config(cfg))
    try:
        return AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=dtype)
    finally:
        unset_hf_deepspeed_config()
        del hf_ds_config


def start_engine(model, cfg: JobFields):
    """Wrap `model` in a DeepSpeed engine for `cfg` that trains the parameters with
    requires_grad (AdamW: torch's, or DeepSpeed's CPU Adam when the optimizer is
    offloaded); frozen ones (a LoRA base) are only sharded. Returns the engine."""
    import deepspeed
    import torch

    ds_cfg = deepspeed_config(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if "optimizer" not in ds_cfg:
        optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_cfg, model_parameters=None if optimizer else trainable
    )
    return engine


def gathered_trainable(engine) -> dict:
    """name -> a CPU copy of each trainable parameter, whole (gathered from the ZeRO-3
    shards when partitioned). Every rank must call it; every rank gets the copy."""
    import deepspeed

    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        return {n: p.detach().to("cpu", copy=True) for n, p in named}


def full_state_dict(engine, zero_stage: int, rank: int) -> dict:
    """The whole model's weights on rank 0 (gathered from the ZeRO-3 shards); {}
    elsewhere. Every rank must call it."""
    if zero_stage == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()
        return sd if rank == 0 else {}
    return engine.module.state_dict() if rank == 0 else {}
