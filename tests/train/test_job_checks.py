"""run_job refuses, before any worker starts: a rerun whose config, base or data
differs from the unfinished run of the same name; a dataset that doesn't suit the
recipe; LoRA under a ZeRO that would shard nothing of the base (below stage 3, or
one worker). No Ray needed."""

import pytest

from foundation import UserError
from train import FullJobConfig, LoraJobConfig


@pytest.fixture(scope="module")
def registered_base(sekisho_home, tiny_model_dir):
    from airlock import import_model
    from experiments import set_alias

    set_alias("checks-base", "production", import_model(tiny_model_dir, "checks-base").version)
    return "checks-base@production"


def data_yaml(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("name: d\npath: samples:internal_faq_ja.jsonl\nformat: chat\n")
    return str(p)


def test_rerun_with_a_different_config_is_refused(tmp_path, sekisho_home, registered_base):
    from train.job import run_job, write_job_state

    cfg = LoraJobConfig(
        name="changed",
        base_model=registered_base,
        dataset=data_yaml(tmp_path),
        register_as="a",
        optim={"steps": 5, "warmup_steps": 1},
    )
    write_job_state(sekisho_home / "jobs" / "changed", run_id="r1", fingerprint="another", version=None)
    with pytest.raises(UserError, match="different config, base model or dataset.*resume: never"):
        run_job(cfg, home=sekisho_home)


def test_dataset_must_suit_the_recipe(tmp_path):
    from data import DatasetConfig
    from train.job import check_job

    chat = DatasetConfig.from_yaml(data_yaml(tmp_path))
    cpt = FullJobConfig(name="c", recipe="cpt", base_model="b@p", dataset="d.yaml", register_as="m")
    with pytest.raises(UserError, match="recipe 'cpt' needs a dataset with format: text"):
        check_job(cpt, chat)
    lora_zero = LoraJobConfig(
        name="l", base_model="b@p", dataset="d.yaml", register_as="a", deepspeed={"zero_stage": 3}
    )
    with pytest.raises(UserError, match="LoRA under DeepSpeed ZeRO"):
        check_job(lora_zero, chat)


def test_a_planned_job_that_cannot_fit_is_refused_before_workers_start(tmp_path):
    from data import DatasetConfig
    from train.job import check_job

    chat = DatasetConfig.from_yaml(data_yaml(tmp_path))
    cfg = FullJobConfig(
        name="big",
        recipe="sft_full",
        base_model="b@p",
        dataset="d.yaml",
        register_as="m",
        deepspeed={"zero_stage": 2},
        scaling={"num_workers": 8, "use_gpu": True},
        plan={"model_shape": "llama-3.1-70b", "seq_len": 4096},
    )
    with pytest.raises(UserError, match="does not fit"):
        check_job(cfg, chat)
