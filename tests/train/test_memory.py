"""train.estimate_memory: the shipped cluster configs fit 80 GB H100s, the figures
match DeepSpeed's own ZeRO estimators and worked numbers, and a job that cannot
fit is refused with what would make it fit."""

from pathlib import Path

import pytest

from foundation import UserError
from train.config import TrainJobConfig
from train.memory import GB, MODEL_SHAPES, check_fits, estimate_memory

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
SHIPPED = ["llama8b_lora_dgx1.yaml", "llama70b_lora_zero3_dgx2.yaml", "llama70b_full_zero3_offload_dgx4.yaml"]
L70 = MODEL_SHAPES["llama-3.1-70b"]


def load(name, **update):
    cfg = TrainJobConfig.from_yaml(CONFIGS / name)
    return cfg.model_copy(update=update) if update else cfg


@pytest.mark.parametrize(
    "name,workers,gb",
    [
        # Worked figures (GB per GPU), written out:
        # 8B LoRA, DDP: base 2 x 8.03e9 = 16.06; adapter r=16 on all 7 linears, 42M params
        #   x 16 B = 0.67; activations 4 x 4096 tokens x (32 x 2 x 4096 + 168,000 + 10 x 128,256)
        #   = 28.1; runtime 4 -> 48.8
        ("llama8b_lora_dgx1.yaml", 8, 48.8),
        # 70B LoRA, ZeRO-3 over 16: base 2 x 70.6e9 / 16 = 8.83, embedding gathered
        #   4 x 1.05e9 = 4.20; adapter 0.3; activations 4096 x 2,925,056 = 11.98; runtime 4 -> 29.3
        ("llama70b_lora_zero3_dgx2.yaml", 16, 29.2),
        # 70B full, ZeRO-3 + offload of params and optimizer: gathered layer 4.20,
        #   activations 11.98, runtime 4 -> 20.2; host 70.6e9 x 18 / 4 nodes x 1.5 = 477 GB
        ("llama70b_full_zero3_offload_dgx4.yaml", 32, 20.2),
    ],
)
def test_shipped_cluster_configs_fit_80gb_h100s(name, workers, gb):
    cfg = load(name)
    assert cfg.scaling.num_workers == workers and cfg.scaling.use_gpu
    est = check_fits(cfg)
    assert est.per_gpu / GB == pytest.approx(gb, abs=0.15)
    assert est.per_gpu < 80 * GB and est.fits


def test_model_states_match_deepspeed_estimators():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    full = load("llama70b_full_zero3_offload_dgx4.yaml")
    for offload_opt, offload_params in [(True, True), (True, False), (False, False)]:
        cfg = full.model_copy(
            update={
                "deepspeed": full.deepspeed.model_copy(
                    update={"offload_optimizer": offload_opt, "offload_params": offload_params}
                )
            }
        )
        est = estimate_memory(cfg)
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            L70.params,
            L70.largest_layer_params,
            num_gpus_per_node=8,
            num_nodes=4,
            cpu_offload=offload_opt,
            cpu_offload_params=offload_params,
        )
        assert est.weights + est.gradients + est.optimizer == pytest.approx(gpu, rel=1e-6)
        if offload_opt:
            assert est.cpu_per_node == pytest.approx(cpu, rel=1e-6)
    for offload in (False, True):
        cfg = type(full).model_validate(
            {**full.model_dump(), "deepspeed": {"zero_stage": 2, "offload_optimizer": offload}}
        )
        est = estimate_memory(cfg)
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            L70.params, num_gpus_per_node=8, num_nodes=4, cpu_offload=offload
        )
        assert est.weights + est.gradients + est.optimizer == pytest.approx(gpu, rel=1e-6)


def test_a_job_that_cannot_fit_is_refused_with_what_would():
    full = load("llama70b_full_zero3_offload_dgx4.yaml")
    cfg = type(full).model_validate(
        {**full.model_dump(), "deepspeed": {"zero_stage": 2}, "gradient_checkpointing": False}
    )
    with pytest.raises(
        UserError,
        match=r"does not fit: .* GB per GPU .*gradient_checkpointing: true"
        r".*deepspeed.zero_stage: 3",
    ):
        check_fits(cfg)
    assert estimate_memory(cfg).activations > estimate_memory(full).activations * 5


def test_estimate_needs_a_plan():
    cfg = load("demo_lora.yaml")
    with pytest.raises(UserError, match="plan"):
        estimate_memory(cfg)
