"""How well a training step uses its GPU: peak memory and model FLOPs utilisation
(MFU), logged with each step's metrics on GPU workers (not on CPU, where neither
means anything). The arithmetic is pure so tests check it without a GPU; only
`cuda_peak_memory` reads the device."""

from __future__ import annotations

H100_BF16_PEAK_FLOPS = 989e12
"""Dense bf16 tensor-core peak of one H100 SXM, FLOP/s (the default `peak_flops`)."""


def forward_params(model) -> int:
    """Parameters the forward pass multiplies by: all of the model's (ZeRO-3 partitions
    them, so a partitioned parameter is counted by its full size, `ds_numel`)."""
    return sum(getattr(p, "ds_numel", 0) or p.numel() for p in model.parameters())


def model_flops_utilisation(n_params: int, tokens_per_s: float, peak_flops: float) -> float:
    """MFU of one GPU: 6 x N x tokens/s / peak FLOP/s.

    Uses the standard 6N approximation of training FLOPs per token (2N forward, 4N
    backward; attention's sequence-length term left out). For LoRA it is applied to
    the full model's N, frozen base included: the base's backward still computes
    activation gradients, and it is the number other frameworks report, though it
    overstates the work by the weight gradients LoRA does not compute.

    Args:
        n_params: forward parameters of the whole model (`forward_params`).
        tokens_per_s: tokens this GPU trains per second.
        peak_flops: the GPU's peak FLOP/s in the training dtype.
    """
    return 6.0 * n_params * tokens_per_s / peak_flops


def gpu_step_metrics(
    tokens_per_s: float, world_size: int, n_params: int, peak_flops: float, memory: tuple[int, int] | None
) -> dict[str, float]:
    """The GPU metrics of one logged step ({} when the device reports no memory: CPU).

    Args:
        tokens_per_s: tokens/s of the whole job (all ranks); MFU is per GPU.
        memory: (max allocated, max reserved) bytes on this rank since the last
            logged step (`cuda_peak_memory`), or None.
    """
    if memory is None:
        return {}
    allocated, reserved = memory
    return {
        "gpu_mem_max_allocated_gb": allocated / 2**30,
        "gpu_mem_max_reserved_gb": reserved / 2**30,
        "mfu": model_flops_utilisation(n_params, tokens_per_s / max(world_size, 1), peak_flops),
    }


def cuda_peak_memory(device) -> tuple[int, int] | None:
    """(max allocated, max reserved) bytes on `device` since the last call, then reset
    the peaks; None unless `device` is a CUDA device."""
    import torch

    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    out = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    return out
