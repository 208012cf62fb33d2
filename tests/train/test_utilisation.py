"""GPU memory and model FLOPs utilisation metrics: the arithmetic, and which keys a
logged step carries when the device reports memory (CPU: none)."""

import pytest

from train.utilisation import (
    H100_BF16_PEAK_FLOPS,
    cuda_peak_memory,
    forward_params,
    gpu_step_metrics,
    model_flops_utilisation,
)


def test_mfu_is_six_n_tokens_over_peak():
    # 8B parameters at 8,000 tokens/s on one H100: 6 * 8e9 * 8e3 / 989e12 = 0.3883
    assert model_flops_utilisation(8_000_000_000, 8_000, H100_BF16_PEAK_FLOPS) == pytest.approx(
        0.38827, rel=1e-4
    )
    assert model_flops_utilisation(1_000_000_000, 10_000, 1e14) == pytest.approx(0.6)


def test_step_metrics_keys_when_the_device_reports_memory():
    metrics = gpu_step_metrics(
        tokens_per_s=64_000,
        world_size=8,
        n_params=1_000_000_000,
        peak_flops=1e14,
        memory=(3 * 2**30, 4 * 2**30),
    )
    assert set(metrics) == {"gpu_mem_max_allocated_gb", "gpu_mem_max_reserved_gb", "mfu"}
    assert metrics["gpu_mem_max_allocated_gb"] == 3.0 and metrics["gpu_mem_max_reserved_gb"] == 4.0
    assert metrics["mfu"] == pytest.approx(0.48)  # per GPU: 8,000 tokens/s each


def test_no_gpu_metrics_on_cpu():
    import torch

    assert cuda_peak_memory(torch.device("cpu")) is None and cuda_peak_memory(None) is None
    assert gpu_step_metrics(1000.0, 1, 10, 1e12, memory=None) == {}


def test_forward_params_counts_the_whole_lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    n_base = sum(p.numel() for p in base.parameters())
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    n_lora = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert forward_params(lora) == n_base + n_lora
