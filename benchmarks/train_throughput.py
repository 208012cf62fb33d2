"""Fine-tuning throughput, side by side, on a small random-init Llama and fixed-length
synthetic examples (every step trains batch_size x seq_len tokens):

(a) the LoRA recipe (`train.LoraRecipe`) standalone in one process, no Ray;
(b) the same recipe, config and data through Ray Train with one worker, as
    `sekisho train run` runs it (`train.build_trainer`, MLflow logging on rank 0);
(c) full fine-tuning (`sft_full`) with 2 Ray Train workers: DDP (DeepSpeed ZeRO
    stage 0: replicated state, all-reduced gradients) vs ZeRO-2 vs ZeRO-3.

For each Ray arm it also prints the CPU that processes other than the training
workers (Ray's daemons and actors, this driver) took during the measured window: on a
small machine that, not the worker, is where (b) loses to (a).

Tokens/s are steady-state: from the logged step after `--skip` warm-up steps to
the last step (timestamps of the logged metrics), so start-up, model loading and
the final checkpoint are not counted. Each arm runs in a fresh process; (a) and
(b) are interleaved over rounds and medians reported.

    flock /tmp/sekisho-heavy.lock unshare -n sh -c 'ip link set lo up && exec "$@"' x \\
        .venv/bin/python benchmarks/train_throughput.py [--rounds 2] [--steps 60] [--skip-full | --skip-lora]

Last line: result: train_ray_vs_standalone=(b)/(a), target >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cluster import offline

offline.apply()

MODEL = {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 6,
         "vocab_size": 2048}


def prepare(work: Path, seq_len: int, rows: int) -> dict:
    """The base model and a tokens.parquet of fixed-length examples (labels on every token)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from data import read_chat_jsonl
    from train import TinyModelConfig, build_tiny_model

    sample = Path(__file__).resolve().parent.parent / "data" / "samples" / "internal_faq_ja.jsonl"
    corpus = [m["content"] for c in read_chat_jsonl(sample).conversations for m in c]
    base = build_tiny_model(work / "base", corpus, TinyModelConfig(**MODEL))
    g = torch.Generator().manual_seed(0)
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]   # the tokenizer's real size
    ids = torch.randint(10, vocab, (rows, seq_len), generator=g).tolist()
    (work / "data").mkdir()
    pq.write_table(pa.table({"input_ids": ids, "labels": ids}), work / "data" / "tokens.parquet")
    return {"base": str(base), "tokens": str(work / "data" / "tokens.parquet")}


def job_config(kind: str, args) -> dict:
    common = {"base_model": "bench@production", "dataset": "unused.yaml", "register_as": "bench",
              "log_every": args.log_every, "seed": 0}
    if kind == "lora":
        return {**common, "name": "bench-lora", "recipe": "sft_lora",
                "optim": {"steps": args.steps, "batch_size": args.batch_size, "warmup_steps": 2},
                "scaling": {"num_workers": 1, "cpus_per_worker": args.cpus}}
    stage = {"ddp": 0, "zero2": 2, "zero3": 3}[kind]
    return {**common, "name": f"bench-{kind}", "recipe": "sft_full", "deepspeed": {"zero_stage": stage},
            "optim": {"steps": args.full_steps, "batch_size": args.batch_size // 2, "warmup_steps": 2},
            "scaling": {"num_workers": 2, "cpus_per_worker": max(1, args.cpus // 2)}}


def steady_tokens_per_s(times: dict[int, float], tokens_per_step: int, skip: int) -> float:
    """Tokens/s between the first logged step at or after `skip` and the last one."""
    steps = sorted(s for s in times if s >= skip)
    first, last = steps[0], steps[-1]
    return tokens_per_step * (last - first) / (times[last] - times[first])


def arm_standalone(cfg_dict: dict, paths: dict) -> dict[int, float]:
    from train import LoraJobConfig, LoraRecipe

    recipe = LoraRecipe(LoraJobConfig.model_validate(cfg_dict))
    recipe.setup(paths["base"], paths["tokens"])
    times: dict[int, float] = {}
    recipe.train(on_metrics=lambda m, step: times.setdefault(step, time.time()))
    return times


_TITLES: dict[str, str] = {}


def process_cpu() -> dict[str, tuple[str, float]]:
    """pid -> (process title, CPU seconds used so far) for every process on the machine."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            key = pid + stat[stat.index("("):stat.rindex(")")]    # a Ray worker renames itself
            if key not in _TITLES:
                argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
                # A Python script by its file name (python -u .../log_monitor.py -> log_monitor.py).
                script = [a for a in argv[1:3] if a.endswith(".py")]
                _TITLES[key] = (Path(script[0]).name if "python" in argv[0] and script
                                else Path((argv[0].split() or [""])[0]).name)
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[pid] = (_TITLES[key] or stat[stat.index("(") + 1:stat.rindex(")")],
                    (int(fields[11]) + int(fields[12])) / tick)
    return out


class CpuSampler:
    """Samples every process's CPU time every 2 s in a thread (a few ms each, counted in
    its own line), so the CPU the other processes took during the steady-state window
    can be read afterwards."""

    def __init__(self):
        import threading

        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            self.samples.append((time.time(), process_cpu()))

    def others(self, start: float, end: float) -> dict[str, float]:
        """Title -> CPU seconds per wall second between the samples nearest `start` and
        `end`, for every process but the training workers."""
        self._stop.set()
        self._thread.join()
        (t0, a), (t1, b) = (min(self.samples, key=lambda s: abs(s[0] - t)) for t in (start, end))
        used: dict[str, float] = {}
        for pid, (title, cpu) in b.items():
            if pid in a:
                used[title] = used.get(title, 0.0) + (cpu - a[pid][1]) / max(t1 - t0, 1e-9)
        return {k: v for k, v in used.items() if "RayTrainWorker" not in k and v > 0.001}


def arm_ray(cfg_dict: dict, paths: dict, home: Path) -> dict[int, float]:
    from mlflow import MlflowClient

    from cluster.local import start_local, stop
    from experiments import tracking_uri, use_store
    from train.config import RECIPE_CONFIGS
    from train.trainer import JobInputs, build_trainer

    cfg = RECIPE_CONFIGS[cfg_dict["recipe"]].model_validate(cfg_dict)
    start_local(home)
    use_store()
    run_id = MlflowClient().create_run(use_store(), run_name=cfg.name).info.run_id
    inputs = JobInputs(paths["base"], paths["tokens"], tracking_uri(), run_id)
    sampler = CpuSampler()
    try:
        result = build_trainer(cfg, inputs, home / "ray-runs", run_name=run_id).fit()
        times = {m.step: m.timestamp / 1000 for m in MlflowClient().get_metric_history(run_id, "loss")}
    finally:
        stop()
    if result.error is not None:
        raise RuntimeError(result.error)
    steady = sorted(times)[1:]          # the window the tokens/s are measured over (about)
    others = sampler.others(times[steady[0]], times[steady[-1]])
    top = sorted(others.items(), key=lambda kv: -kv[1])[:4]
    print(f"cpu of other processes: {sum(others.values()) * 1000:.0f} ms/s in {len(others)} processes; top: "
          + ", ".join(f"{k} {v * 1000:.0f}" for k, v in top), file=sys.stderr)
    return times


def run_arm(arm: str, kind: str, args, work: Path, paths: dict) -> float:
    """One arm in a fresh process; returns its steady-state tokens/s."""
    cfg = job_config(kind, args)
    spec = json.dumps({"arm": arm, "cfg": cfg, "paths": paths, "home": str(work / "home")})
    r = subprocess.run([sys.executable, __file__, "--child", spec], check=False, capture_output=True, text=True,
                       env={**os.environ, "SEKISHO_HOME": str(work / "home")}, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"{arm}/{kind} failed:\n{r.stderr[-4000:]}")
    for line in r.stderr.splitlines():
        if line.startswith("cpu of other processes"):
            print(f"    {arm}/{kind} {line}", flush=True)
    times = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    per_step = cfg["optim"]["batch_size"] * cfg["scaling"]["num_workers"] * args.seq_len
    return steady_tokens_per_s(times, per_step, args.skip)


def child(spec: dict) -> None:
    os.environ.setdefault("SEKISHO_HOME", spec["home"])
    if spec["arm"] == "standalone":
        times = arm_standalone(spec["cfg"], spec["paths"])
    else:
        times = arm_ray(spec["cfg"], spec["paths"], Path(spec["home"]))
    print(json.dumps(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=60, help="LoRA steps per arm")
    p.add_argument("--full-steps", type=int, default=20, help="full fine-tuning steps per arm")
    p.add_argument("--skip", type=int, default=10, help="warm-up steps not counted")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs (torch threads) per job")
    p.add_argument("--skip-full", action="store_true", help="only the LoRA standalone vs Ray arms")
    p.add_argument("--skip-lora", action="store_true", help="only the full fine-tuning arms (no result line)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))

    work = Path(tempfile.mkdtemp(prefix="sekisho-train-bench-"))
    paths = prepare(work, args.seq_len, rows=512)
    print(f"model {MODEL}; batch {args.batch_size} x seq {args.seq_len}; {args.cpus} CPUs; "
          f"LoRA {args.steps} steps, counted from step {args.skip}", flush=True)
    results: dict[str, list[float]] = {"standalone": [], "ray": []}
    for rnd in range(0 if args.skip_lora else args.rounds):
        for arm in ("standalone", "ray"):
            tps = run_arm(arm, "lora", args, work, paths)
            results[arm].append(tps)
            print(f"  round {rnd + 1}: LoRA {arm:10} {tps:8.0f} tokens/s", flush=True)
    if not args.skip_lora:
        a, b = (statistics.median(results[k]) for k in ("standalone", "ray"))
        print(f"LoRA (a) standalone: {a:.0f} tokens/s  (b) Ray Train, 1 worker: {b:.0f} tokens/s  "
              f"(b)/(a) = {b / a:.3f}  (medians of {args.rounds})", flush=True)
    if not args.skip_full:
        full = {k: run_arm("ray", k, args, work, paths) for k in ("ddp", "zero2", "zero3")}
        print("full fine-tuning, 2 workers: " + "  ".join(f"{k.upper()} {v:.0f} tokens/s" for k, v in full.items()))
    if args.skip_lora:
        return
    ratio = b / a
    print(f"result: train_ray_vs_standalone={ratio:.3f} target=>=0.95 {'pass' if ratio >= 0.95 else 'fail'}")


if __name__ == "__main__":
    main()
