"""Host memory (CPU RAM) of a training job, per node: loading and offloaded state as
DeepSpeed's estimators count them, with the recipes' dtype; a job whose host memory
does not fit the plan's node is refused before any worker starts; and every shipped
cluster config the estimator says fits also passes `check_job`."""

from pathlib import Path

import pytest

from foundation import UserError
from train.config import TrainJobConfig
from train.memory import GB, HOST_OVERHEAD_PER_WORKER_GB, MODEL_SHAPES, estimate_memory

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
L70, L8 = MODEL_SHAPES["llama-3.1-70b"], MODEL_SHAPES["llama-3.1-8b"]


def load(name, **update):
    cfg = TrainJobConfig.from_yaml(CONFIGS / name)
    return type(cfg).model_validate({**cfg.model_dump(), **update}) if update else cfg


def test_loading_is_counted_as_deepspeed_counts_it_in_bf16():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    full = load("llama70b_full_zero3_offload_dgx4.yaml", deepspeed={"zero_stage": 3})
    cpu, _, _ = estimate_zero3_model_states_mem_needs(
        L70.params,
        L70.largest_layer_params,
        num_gpus_per_node=8,
        num_nodes=4,
        cpu_offload=False,
        zero_init=True,
    )
    assert estimate_memory(full).host_loading == pytest.approx(cpu / 2, rel=1e-6)  # bf16, DeepSpeed: fp32
    zero2 = load("llama70b_full_zero3_offload_dgx4.yaml", deepspeed={"zero_stage": 2})
    cpu, _ = estimate_zero2_model_states_mem_needs(
        L70.params, num_gpus_per_node=8, num_nodes=4, cpu_offload=False
    )
    assert estimate_memory(zero2).host_loading == pytest.approx(cpu / 2, rel=1e-6)
    # Every worker loading the whole model is what a node would hold without zero.Init:
    # 8 x 70.6e9 x 2 B x 1.5 = 1694 GB, against 25 GB with it.
    assert estimate_memory(zero2).host_loading / GB == pytest.approx(1694, abs=1)
    assert estimate_memory(full).host_loading / GB == pytest.approx(25.2, abs=0.1)


@pytest.mark.parametrize(
    "name,host_gb",
    [
        # 8 workers x 8.03e9 x 2 B x 1.5 loading the bf16 base, + 8 x 8 GB for the processes
        ("llama8b_lora_dgx1.yaml", 192.7 + 64),
        # the largest layer (the embedding, 1.05e9) x 2 B x 1.5 on 8 workers, + 64
        ("llama70b_lora_zero3_dgx2.yaml", 25.2 + 64),
        # offloaded parameters and Adam state, 70.6e9 x 18 B / 4 nodes x 1.5 = 477 GB, + 64
        ("llama70b_full_zero3_offload_dgx4.yaml", 476.6 + 64),
    ],
)
def test_shipped_configs_report_host_memory_per_node(name, host_gb):
    est = estimate_memory(load(name))
    assert est.host_per_node / GB == pytest.approx(host_gb, abs=0.2)
    assert est.host_runtime == 8 * HOST_OVERHEAD_PER_WORKER_GB * GB
    assert f"host {est.host_per_node / GB:.0f} GB per node (loading" in est.describe()


def test_a_job_whose_host_memory_does_not_fit_is_refused(tmp_path):
    from data import DatasetConfig
    from train.job import check_job

    data = tmp_path / "d.yaml"
    data.write_text("name: d\npath: samples:internal_faq_ja.jsonl\nformat: chat\n")
    chat = DatasetConfig.from_yaml(data)
    small_host = load(
        "llama8b_lora_dgx1.yaml", plan={"model_shape": "llama-3.1-8b", "seq_len": 4096, "cpu_memory_gb": 256}
    )
    assert estimate_memory(small_host).fits_gpu
    with pytest.raises(
        UserError,
        match=r"does not fit in host memory: .* host 257 GB per node \(loading 193, "
        r"offloaded 0, processes 64\) of 256 GB\. Try deepspeed.zero_stage: 3",
    ):
        check_job(small_host, chat)
    check_job(
        load(
            "llama8b_lora_dgx1.yaml",
            plan={"model_shape": "llama-3.1-8b", "seq_len": 4096, "cpu_memory_gb": 512},
        ),
        chat,
    )


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_the_estimator_fits_passes_check_job(name):
    from data import DatasetConfig
    from train.job import check_job

    cfg = TrainJobConfig.from_yaml(CONFIGS / name)
    assert (CONFIGS / name).read_text().startswith(f"# Used by: sekisho train run configs/train/{name}")
    if cfg.plan is not None:
        assert estimate_memory(cfg).fits
    check_job(cfg, DatasetConfig.from_yaml(cfg.dataset))
