"""Jobs end to end under Ray Train on CPU (real Ray, MLflow store, registry).

Kill-and-resume: SIGKILL the training worker mid-run; the job restores from its
last checkpoint and finishes, MLflow's step history has no gap and marks the
re-run steps with their attempt, and the data order equals the uninterrupted
order. A rerun of the finished job is a no-op.

Full fine-tuning with DeepSpeed ZeRO-3 on 2 workers (gloo): loss and held-out eval
loss fall, and the registered version is merged sharded safetensors with the tokenizer."""

import json
import os
import signal
import threading
import time

import pyarrow.parquet as pq
import pytest

from train import FullJobConfig, LoraJobConfig, LoraRecipe

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ray_cluster(sekisho_home, tmp_path_factory):
    """A Ray cluster (the session's, if one runs already) and the test-hook folder,
    which build_trainer forwards to the workers."""
    import ray

    from cluster.local import start_local, stop
    from train.fault_injection import ENV

    ours = not ray.is_initialized()
    start_local(sekisho_home, num_cpus=4)
    hooks = tmp_path_factory.mktemp("train-hooks")
    os.environ[ENV] = str(hooks)  # after the cluster started: workers get it from build_trainer
    yield hooks
    if ours:
        stop()
    os.environ.pop(ENV, None)


@pytest.fixture(scope="module")
def job_cfg(sekisho_home, tiny_model_dir, tmp_path_factory):
    from airlock import import_model
    from experiments import set_alias

    set_alias("resume-base", "production", import_model(tiny_model_dir, "resume-base").version)
    data = tmp_path_factory.mktemp("cfg") / "d.yaml"
    data.write_text(
        "name: d\npath: samples:internal_faq_ja.jsonl\nformat: chat\nsplit:\n  eval_fraction: 0.2\n"
    )
    return LoraJobConfig(
        name="kill-resume",
        base_model="resume-base@production",
        dataset=str(data),
        register_as="resume-adapter",
        seed=3,
        log_every=5,
        checkpoint_every=10,
        max_failures=1,
        optim={"steps": 30, "batch_size": 4, "warmup_steps": 2},
        scaling={"num_workers": 1, "cpus_per_worker": 1},
    )


def latest_checkpoint_step(job_dir) -> int:
    """The step of the latest checkpoint Ray Train's controller has registered."""
    for snapshot in job_dir.glob("ray/*/checkpoint_manager_snapshot.json"):
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        return latest.get("metrics", {}).get("step", 0)
    return 0


def kill_when_paused(pid_file, job_dir, timeout=300):
    """SIGKILL the worker once it is paused and the step-10 checkpoint is registered
    (a result still queued in a worker that dies is lost, as it would be in production)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (pid_file.is_file() and latest_checkpoint_step(job_dir) >= 10):
        time.sleep(0.2)
    if pid_file.is_file():
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_sigkilled_worker_resumes_with_the_same_data_order(
    ray_cluster, job_cfg, sekisho_home, tiny_model_dir
):
    from mlflow import MlflowClient

    from train.job import run_job

    hooks = ray_cluster
    (hooks / "pause-kill-resume").write_text("15")
    killer = threading.Thread(
        target=kill_when_paused, args=(hooks / "pid-kill-resume", sekisho_home / "jobs" / "kill-resume")
    )
    killer.start()
    started = time.perf_counter()
    result = run_job(job_cfg, home=sekisho_home)
    elapsed = time.perf_counter() - started
    killer.join()
    assert (hooks / "pid-kill-resume").is_file(), "the worker never reached the pause step"

    trace = [json.loads(line) for line in (hooks / "trace-kill-resume-rank0.jsonl").read_text().splitlines()]
    ran = [(t["attempt"], t["step"]) for t in trace]
    assert ran == [(1, s) for s in range(1, 16)] + [(2, s) for s in range(11, 31)]
    # Effective run: attempt 1 up to its last checkpoint (step 10), then attempt 2.
    seen = {t["step"]: t["ids"] for t in trace if t["attempt"] == 2 or t["step"] <= 10}
    plain = LoraRecipe(job_cfg)
    tokens = sekisho_home / "jobs" / "kill-resume" / "data" / "tokens.parquet"
    plain.examples = [None] * pq.read_table(str(tokens), columns=["input_ids"]).num_rows  # a folder of shards
    it = plain.batches()
    expected = {s: (next(it), list(plain.batch_ids))[1] for s in range(1, 31)}
    assert seen == expected
    rerun = {t["step"]: t["ids"] for t in trace if t["attempt"] == 2 and t["step"] <= 15}
    assert rerun == {s: ids for s, ids in expected.items() if 11 <= s <= 15}

    client = MlflowClient()
    loss_steps = sorted({m.step for m in client.get_metric_history(result.run_id, "loss")})
    assert loss_steps == list(range(5, 31, 5))  # no gap
    attempts = {m.step: m.value for m in client.get_metric_history(result.run_id, "attempt")}
    assert attempts[5] == attempts[10] == 1 and attempts[15] == attempts[30] == 2
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    first = [t for t in trace if t["attempt"] == 1]
    second = [t for t in trace if t["attempt"] == 2]
    print(
        f"\nkill-and-resume job: {elapsed:.1f} s wall for 30 steps + one restore; "
        f"{(first[-1]['step'] - 1) / (first[-1]['time'] - first[0]['time']):.1f} steps/s; "
        f"kill to first step after restore {second[0]['time'] - first[-1]['time']:.1f} s"
    )

    started = time.perf_counter()
    again = run_job(job_cfg, home=sekisho_home)
    assert (again.run_id, again.version) == (result.run_id, result.version)
    assert len((hooks / "trace-kill-resume-rank0.jsonl").read_text().splitlines()) == len(trace)
    print(f"rerun of the finished job: {time.perf_counter() - started:.1f} s (no training)")


def test_zero3_full_finetune_on_two_workers_registers_merged_weights(ray_cluster, job_cfg, sekisho_home):
    import torch
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from airlock import load, verify_all_bytes
    from train.job import run_job

    cfg = FullJobConfig(
        name="zero3-full",
        recipe="sft_full",
        base_model=job_cfg.base_model,
        dataset=job_cfg.dataset,
        register_as="zero3-full-model",
        log_every=2,
        checkpoint_every=6,
        eval_every=6,
        max_shard_size="300KB",
        deepspeed={"zero_stage": 3},
        optim={"steps": 12, "batch_size": 4, "warmup_steps": 2, "lr": 1e-3},
        scaling={"num_workers": 2, "cpus_per_worker": 1},
    )
    started = time.perf_counter()
    result = run_job(cfg, home=sekisho_home)
    print(f"\nZeRO-3 full fine-tuning, 2 workers, 12 steps: {time.perf_counter() - started:.1f} s wall")
    losses = [
        m.value
        for m in sorted(MlflowClient().get_metric_history(result.run_id, "loss"), key=lambda m: m.step)
    ]
    assert len(losses) == 6 and losses[-1] < losses[0]
    evals = sorted(MlflowClient().get_metric_history(result.run_id, "eval_loss"), key=lambda m: m.step)
    assert [m.step for m in evals] == [6, 12] and evals[-1].value < evals[0].value
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert "model.safetensors.index.json" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    version = MlflowClient().get_model_version("zero3-full-model", result.version)
    assert version.tags["base_model_version"] and version.tags["config_sha256"]
    # The merged weights went through the model store, with a record naming the run.
    stored = verify_all_bytes(f"zero3-full-model/{result.version}")
    assert stored.source == {"kind": "training", "run_id": result.run_id, "export": "merged"}
    assert version.tags["kind"] == "merged" and load(stored.ref).path == stored.path
    assert AutoTokenizer.from_pretrained(str(result.adapter_dir)).chat_template
    AutoModelForCausalLM.from_pretrained(str(result.adapter_dir), dtype=torch.float32)
