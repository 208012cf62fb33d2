"""ZeRO-3 loads the base partitioned (`deepspeed.zero.Init`): on two gloo ranks each
rank holds only its half of the weights from the moment the model exists, and the
training is the same as when every rank loaded the whole model first. LoRA under
ZeRO-3 (the frozen base sharded) trains as LoRA under DDP does, resumes exactly and
exports the same adapter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foundation.net import free_port
from train import FullJobConfig, LoraJobConfig

REPO = Path(__file__).resolve().parents[2]

RANK = """
import json, os, resource, sys
from foundation import offline
offline.apply()
import torch
import torch.distributed as dist
from train import FullJobConfig, deepspeed_zero
from train.full_recipe import FullRecipe

dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=2)
cfg = FullJobConfig.model_validate_json(sys.argv[1])
if sys.argv[4] == "whole":     # what setup did before: every rank loads every weight in fp32
    from transformers import AutoModelForCausalLM
    deepspeed_zero.load_model = lambda d, c: AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
loaded, start = {}, deepspeed_zero.start_engine

def counting_start(model, c):
    params = list(model.parameters())
    loaded.update(local=sum(p.numel() for p in params),
                  partition=sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params),
                  full=sum(getattr(p, "ds_numel", 0) or p.numel() for p in params),
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  anon_rss_mb=[int(line.split()[1]) / 1024 for line in open("/proc/self/status")
                               if line.startswith("RssAnon:")][0])
    return start(model, c)

deepspeed_zero.start_engine = counting_start
recipe = FullRecipe(cfg, rank=dist.get_rank(), world_size=2)
recipe.setup(sys.argv[2], sys.argv[3])
after = sum(p.ds_tensor.numel() for p in recipe.engine.module.parameters())
losses = {}
recipe.train(on_metrics=lambda m, s: losses.__setitem__(s, m["loss"]))
print("RESULT " + json.dumps({"loaded": loaded, "after_setup": after, "losses": losses,
                              "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def two_ranks(cfg, model_dir: Path, tokens: Path, mode: str, script: str = RANK, *extra: str) -> list[dict]:
    """Run `script` as ranks 0 and 1 of a gloo group; each rank's RESULT."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, cfg.model_dump_json(), str(model_dir), str(tokens), mode, *extra],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert p.returncode == 0 and lines, err[-3000:]
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    return results


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, tiny_model_dir):
    from data import DatasetConfig, prepare

    work = tmp_path_factory.mktemp("zero3-two-ranks")
    prepare(DatasetConfig(name="d", path="samples:internal_faq_ja.jsonl"), tiny_model_dir, work)
    return work / "tokens.parquet"


def test_zero3_ranks_hold_only_their_partition_and_train_as_before(tiny_model_dir, tokens):
    cfg = FullJobConfig(
        name="z",
        recipe="sft_full",
        base_model="b@production",
        dataset="d.yaml",
        register_as="m",
        log_every=2,
        deepspeed={"zero_stage": 3},
        scaling={"num_workers": 2, "cpus_per_worker": 1},
        optim={"steps": 6, "batch_size": 2, "warmup_steps": 1, "lr": 1e-3},
    )
    partitioned = two_ranks(cfg, tiny_model_dir, tokens, "partitioned")
    whole = two_ranks(cfg, tiny_model_dir, tokens, "whole")
    full = partitioned[0]["loaded"]["full"]
    for rank in partitioned:
        # Loaded under zero.Init: no parameter has local data, each rank has ~half.
        assert rank["loaded"]["full"] == full and rank["loaded"]["local"] == 0
        assert rank["loaded"]["partition"] == pytest.approx(full / 2, rel=0.01)
        assert rank["after_setup"] == rank["loaded"]["partition"]
    for rank in whole:
        assert rank["loaded"]["local"] == full  # the old way: all of it on every rank
    assert partitioned[0]["after_setup"] == whole[0]["after_setup"]
    for new, old in zip(partitioned, whole):  # each rank logs the loss of its own batches
        assert new["losses"] == pytest.approx(old["losses"], rel=1e-5)


LORA_RANK = """
import json, os, sys
from pathlib import Path
from foundation import offline
offline.apply()
import torch.distributed as dist
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from train import LoraJobConfig, LoraRecipe

dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=2)
rank, mode, out = dist.get_rank(), sys.argv[4], Path(sys.argv[5])
cfg = LoraJobConfig.model_validate_json(sys.argv[1])
if mode == "ddp":
    cfg = cfg.model_copy(update={"deepspeed": None})

def trained(ckpt=None):
    r = LoraRecipe(cfg, rank=rank, world_size=2)
    r.setup(sys.argv[2], sys.argv[3], wrap_model=DistributedDataParallel if mode == "ddp" else None)
    frozen = [p for p in r.peft_model.parameters() if not p.requires_grad]
    local = sum(p.numel() for p in frozen)
    if ckpt:
        r.load_checkpoint(ckpt)
    losses = {}
    r.train(on_metrics=lambda m, s: losses.__setitem__(s, m["loss"]),
            on_checkpoint=lambda s, _: r.save_checkpoint(out / f"{mode}-step{s}"))
    r.cleanup()
    return losses, local

losses, local = trained()
resumed, _ = trained(out / f"{mode}-step3")
adapter = load_file(str(out / f"{mode}-step6" / "adapter" / "adapter_model.safetensors")) if rank == 0 else {}
print("RESULT " + json.dumps({"losses": losses, "resumed": resumed, "frozen_local": local,
                              "adapter": {k: v.flatten()[:8].tolist() for k, v in adapter.items()}}))
"""


def test_lora_under_zero3_trains_like_ddp_resumes_and_exports(tiny_model_dir, tokens, tmp_path):
    cfg = LoraJobConfig(
        name="lz",
        base_model="b@production",
        dataset="d.yaml",
        register_as="a",
        log_every=1,
        checkpoint_every=3,
        deepspeed={"zero_stage": 3},
        scaling={"num_workers": 2, "cpus_per_worker": 1},
        optim={"steps": 6, "batch_size": 2, "warmup_steps": 1, "lr": 1e-3},
    )
    zero3, ddp = (
        two_ranks(cfg, tiny_model_dir, tokens, mode, LORA_RANK, str(tmp_path)) for mode in ("zero3", "ddp")
    )
    assert zero3[0]["frozen_local"] == 0 and ddp[0]["frozen_local"] > 0  # the base is sharded
    for z, d in zip(zero3, ddp):
        assert sorted(z["losses"], key=int) == ["1", "2", "3", "4", "5", "6"]
        assert z["losses"] == pytest.approx(d["losses"], rel=1e-4)
        assert z["resumed"] == pytest.approx({s: v for s, v in z["losses"].items() if int(s) > 3}, rel=1e-5)
    assert zero3[0]["adapter"].keys() == ddp[0]["adapter"].keys() and zero3[0]["adapter"]
    for name, values in zero3[0]["adapter"].items():
        assert values == pytest.approx(ddp[0]["adapter"][name], abs=1e-5), name
