"""Fine-tuning throughput, side by side, on a small random-init Llama and fixed-length
synthetic examples (every step trains batch_size x seq_len tokens):

(a) the LoRA recipe (`train.LoraRecipe`) standalone in one process, no Ray;
(b) the same recipe, config and data through Ray Train with one worker, as
    `sekisho train run` runs it (`train.build_trainer`, MLflow logging on rank 0);
(c) full fine-tuning (`sft_full`) with 2 Ray Train workers: DDP (DeepSpeed ZeRO
    stage 0: replicated state, all-reduced gradients) vs ZeRO-2 vs ZeRO-3.

For every arm it also prints, for the measured window, from samples of /proc taken
by this process: the training process's CPU and its run-queue wait (runnable, no
free core), the CPU of the arm's other processes (Ray's daemons and actors, the
driver; on a small machine that, not the worker, is where (b) loses to (a)), and
the CPU of processes outside the arm (other people's work: noise).

Tokens/s are steady-state: from the logged step after `--skip` warm-up steps to
the last step (timestamps of the logged metrics), so start-up, model loading and
the final checkpoint are not counted; the median of the logged windows (every
`--log-every` steps) is printed beside it. Each arm runs in a fresh process; (a)
and (b) alternate over rounds (which goes first alternates too) and the result is
the ratio of the medians over rounds. The machine is shared: a round in which
either arm had more than `--max-outside` ms/s of other work beside it is printed
but left out of the medians, unless every round was.

    flock /tmp/sekisho-heavy.lock unshare -n sh -c 'ip link set lo up && exec "$@"' x \\
        .venv/bin/python benchmarks/train_throughput.py [--rounds 3] [--steps 60] [--skip-full | --skip-lora]

Last line: result: train_ray_vs_standalone=(b)/(a), target >= 0.95.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from foundation import offline

offline.apply()

MODEL = {
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 6,
    "vocab_size": 2048,
}


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
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]  # the tokenizer's real size
    ids = torch.randint(10, vocab, (rows, seq_len), generator=g).tolist()
    (work / "data").mkdir()
    pq.write_table(pa.table({"input_ids": ids, "labels": ids}), work / "data" / "tokens.parquet")
    return {"base": str(base), "tokens": str(work / "data" / "tokens.parquet")}


def job_config(kind: str, args) -> dict:
    common = {
        "base_model": "bench@production",
        "dataset": "unused.yaml",
        "register_as": "bench",
        "log_every": args.log_every,
        "seed": 0,
    }
    if kind == "lora":
        return {
            **common,
            "name": "bench-lora",
            "recipe": "sft_lora",
            "optim": {"steps": args.steps, "batch_size": args.batch_size, "warmup_steps": 2},
            "scaling": {"num_workers": 1, "cpus_per_worker": args.cpus},
        }
    stage = {"ddp": 0, "zero2": 2, "zero3": 3}[kind]
    return {
        **common,
        "name": f"bench-{kind}",
        "recipe": "sft_full",
        "deepspeed": {"zero_stage": stage},
        "optim": {"steps": args.full_steps, "batch_size": args.batch_size // 2, "warmup_steps": 2},
        "scaling": {"num_workers": 2, "cpus_per_worker": max(1, args.cpus // 2)},
    }


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


def process_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, process title, CPU seconds used so far) for every process."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        # A Python script by its file name (python -u .../log_monitor.py -> log_monitor.py);
        # a Ray worker by the title it gives itself (ray::RayTrainWorker...).
        script = [a for a in argv[1:3] if a.endswith(".py")]
        title = (
            Path(script[0]).name
            if "python" in argv[0] and script
            else Path((argv[0].split() or [""])[0]).name
        ) or stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(pid)] = (int(fields[1]), title, (int(fields[11]) + int(fields[12])) / tick)
    return out


def training_threads(pid: int) -> dict:
    """What the training process's threads did so far: thread id -> (name, CPU s,
    run-queue wait s), and the process's user/system CPU seconds and minor page faults."""
    tick = os.sysconf("SC_CLK_TCK")
    threads = {}
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                c, w, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
                name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except (OSError, ValueError):
                continue
            threads[tid] = (name, int(c) / 1e9, int(w) / 1e9)
    except (OSError, ValueError):
        return {"threads": {}, "user": 0.0, "sys": 0.0, "minflt": 0}
    return {
        "threads": threads,
        "user": int(fields[11]) / tick,
        "sys": int(fields[12]) / tick,
        "minflt": int(fields[7]),
    }


def machine_cpu() -> tuple[float, float, float]:
    """(busy, idle, steal) CPU seconds of the whole machine so far (steal: time the
    hypervisor gave this machine's CPUs to someone else)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / tick, (f[3] + f[4]) / tick, f[7] / tick


def is_training(title: str, pid: int, root: int, standalone: bool) -> bool:
    return pid == root if standalone else "RayTrainWorker" in title


class CpuSampler:
    """Samples every process on the machine once a second from the benchmark's own
    process (the same for every arm), so that for an arm's measured window it can say:
    the training process's CPU and its run-queue wait (time it was runnable but every
    core was busy), the CPU of the arm's other processes (Ray's daemons and actors,
    the driver), and the CPU of processes outside the arm (other people's work on a
    shared machine: noise, not the arm's cost)."""

    def __init__(self, root: int, standalone: bool):
        import threading

        self.root, self.standalone = root, standalone
        self.samples: list[tuple[float, dict, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            table = process_table()
            train = {
                pid: training_threads(pid)
                for pid, (_, title, _) in table.items()
                if is_training(title, pid, self.root, self.standalone)
            }
            self.samples.append((time.time(), table, train, machine_cpu()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start: float, end: float) -> dict:
        """CPU figures (per wall second) between the samples nearest `start` and `end`."""
        (t0, a, ta, ma), (t1, b, tb, mb) = (
            min(self.samples, key=lambda smp: abs(smp[0] - t)) for t in (start, end)
        )
        wall = max(t1 - t0, 1e-9)
        tree, grew = {self.root}, True
        while grew:  # the arm's processes: its child process and everything under it
            new = {pid for pid, (ppid, _, _) in b.items() if ppid in tree and pid not in tree}
            tree, grew = tree | new, bool(new)
        ours, me = {}, 0.0
        for pid, (_, title, cpu) in b.items():
            if pid not in a:
                continue
            used = (cpu - a[pid][2]) / wall
            if pid == os.getpid():
                me = used
            elif pid in tree and not is_training(title, pid, self.root, self.standalone):
                ours[title] = ours.get(title, 0.0) + used
        # The training process: threads by name (CPU, wait), user/system CPU, page faults.
        names: dict[str, list[float]] = {}
        user = sys_ = faults = 0.0
        for pid in set(ta) & set(tb):
            x, y = ta[pid], tb[pid]
            user, sys_ = user + (y["user"] - x["user"]) / wall, sys_ + (y["sys"] - x["sys"]) / wall
            faults += (y["minflt"] - x["minflt"]) / wall
            for tid, (name, cpu, wait) in y["threads"].items():
                if tid in x["threads"]:
                    acc = names.setdefault(name, [0.0, 0.0, 0])
                    acc[0] += (cpu - x["threads"][tid][1]) / wall
                    acc[1] += (wait - x["threads"][tid][2]) / wall
                    acc[2] += 1
        train_cpu = user + sys_  # the process's own count keeps threads that have exited
        # Outside the arm: whatever the machine was busy with beyond the arm and this
        # sampler (from /proc/stat, so processes that came and went between samples count).
        busy = (mb[0] - ma[0]) / wall
        outside = max(0.0, busy - train_cpu - sum(ours.values()) - me)
        return {
            "train_cpu": train_cpu,
            "train_wait": sum(v[1] for v in names.values()),
            "train_user": user,
            "train_sys": sys_,
            "train_faults": faults,
            "threads": names,
            "others": ours,
            "outside": outside,
            "sampler": me,
            "wall": wall,
            "idle": (mb[1] - ma[1]) / wall,
            "steal": (mb[2] - ma[2]) / wall,
        }


def describe(w: dict) -> str:
    """Two indented lines: the training process, then everything else."""
    threads = sorted(w["threads"].items(), key=lambda kv: -kv[1][0])
    busy = [
        f"{name}{f' x{n}' if n > 1 else ''} {cpu * 1000:.0f}/{wait * 1000:.0f}"
        for name, (cpu, wait, n) in threads
        if cpu > 0.0005
    ][:6]
    others = {k: v for k, v in w["others"].items() if v > 0.0005}
    top = sorted(others.items(), key=lambda kv: -kv[1])[:6]
    return (
        f"      training process: cpu {w['train_cpu'] * 1000:.0f} ms/s (user {w['train_user'] * 1000:.0f}, "
        f"sys {w['train_sys'] * 1000:.0f}), run-queue wait {w['train_wait'] * 1000:.0f} ms/s, "
        f"{w['train_faults']:.0f} page faults/s; threads cpu/wait ms/s: {', '.join(busy)}\n"
        f"      arm's other processes {sum(others.values()) * 1000:.0f} ms/s"
        + (" (" + ", ".join(f"{k} {v * 1000:.0f}" for k, v in top) + ")" if top else "")
        + f"; outside the arm {w['outside'] * 1000:.0f} ms/s; this sampler {w['sampler'] * 1000:.0f} ms/s; "
        f"machine idle {w['idle'] * 1000:.0f} ms/s, stolen by the hypervisor {w['steal'] * 1000:.0f} ms/s"
    )


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
    try:
        result = build_trainer(cfg, inputs, home / "ray-runs", run_name=run_id).fit()
        times = {m.step: m.timestamp / 1000 for m in MlflowClient().get_metric_history(run_id, "loss")}
    finally:
        stop()
    if result.error is not None:
        raise RuntimeError(result.error)
    return times


def run_arm(arm: str, kind: str, args, work: Path, paths: dict) -> dict:
    """One arm in a fresh process, sampled from here; returns its steady-state tokens/s
    (`tps`: first counted step to last; `tps_median`: median of the logged windows)
    and what the processes did meanwhile (`cpu`)."""
    cfg = job_config(kind, args)
    spec = json.dumps({"arm": arm, "cfg": cfg, "paths": paths, "home": str(work / "home")})
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", spec],
            stdout=out,
            stderr=err,
            text=True,
            env={**os.environ, "SEKISHO_HOME": str(work / "home")},
        )
        sampler = CpuSampler(proc.pid, standalone=arm == "standalone")
        try:
            rc = proc.wait(timeout=600)
        finally:
            sampler.stop()
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if rc != 0:
        raise SystemExit(f"{arm}/{kind} failed:\n{stderr[-4000:]}")
    times = {int(k): v for k, v in json.loads(stdout.strip().splitlines()[-1]).items()}
    per_step = cfg["optim"]["batch_size"] * cfg["scaling"]["num_workers"] * args.seq_len
    steps = sorted(s for s in times if s >= args.skip)
    windows = [per_step * (b - a) / (times[b] - times[a]) for a, b in itertools.pairwise(steps)]
    return {
        "tps": steady_tokens_per_s(times, per_step, args.skip),
        "tps_median": statistics.median(windows),
        "cpu": sampler.window(times[steps[0]], times[steps[-1]]),
    }


def child(spec: dict) -> None:
    os.environ.setdefault("SEKISHO_HOME", spec["home"])
    if spec["arm"] == "standalone":
        times = arm_standalone(spec["cfg"], spec["paths"])
    else:
        times = arm_ray(spec["cfg"], spec["paths"], Path(spec["home"]))
    print(json.dumps(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="LoRA steps per arm")
    p.add_argument("--full-steps", type=int, default=20, help="full fine-tuning steps per arm")
    p.add_argument("--skip", type=int, default=10, help="warm-up steps not counted")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs (torch threads) per job")
    p.add_argument(
        "--max-outside",
        type=int,
        default=100,
        help="ms/s of CPU outside the arm above which a round is left out of the medians",
    )
    p.add_argument("--skip-full", action="store_true", help="only the LoRA standalone vs Ray arms")
    p.add_argument("--skip-lora", action="store_true", help="only the full fine-tuning arms (no result line)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))

    work = Path(tempfile.mkdtemp(prefix="sekisho-train-bench-"))
    paths = prepare(work, args.seq_len, rows=512)
    print(
        f"model {MODEL}; batch {args.batch_size} x seq {args.seq_len}; {args.cpus} CPUs; "
        f"LoRA {args.steps} steps, counted from step {args.skip}",
        flush=True,
    )
    results: dict[str, list[dict]] = {"standalone": [], "ray": []}
    for rnd in range(0 if args.skip_lora else args.rounds):
        # Alternate which arm goes first, so that neither always follows the other.
        for arm in ("standalone", "ray") if rnd % 2 == 0 else ("ray", "standalone"):
            r = run_arm(arm, "lora", args, work, paths)
            results[arm].append(r)
            print(
                f"  round {rnd + 1}: LoRA {arm:10} {r['tps']:6.0f} tokens/s (median window {r['tps_median']:.0f})\n"
                f"{describe(r['cpu'])}",
                flush=True,
            )
    if not args.skip_lora:
        # A round where either arm shared the machine with more than --max-outside of
        # other people's work measured them, not Ray: left out while any clean round remains.
        clean = [
            i
            for i in range(args.rounds)
            if max(results[k][i]["cpu"]["outside"] for k in results) <= args.max_outside / 1000
        ]
        used = clean or list(range(args.rounds))
        a, b = (statistics.median(results[k][i]["tps"] for i in used) for k in ("standalone", "ray"))
        am, bm = (statistics.median(results[k][i]["tps_median"] for i in used) for k in ("standalone", "ray"))
        print(
            f"LoRA (a) standalone: {a:.0f} tokens/s  (b) Ray Train, 1 worker: {b:.0f} tokens/s  "
            f"(b)/(a) = {b / a:.3f}  (medians of rounds {', '.join(str(i + 1) for i in used)}"
            + ("" if clean else f", every round disturbed by over {args.max_outside} ms/s outside the arm")
            + f"; of the median windows: {am:.0f} vs {bm:.0f}, {bm / am:.3f})",
            flush=True,
        )
    if not args.skip_full:
        full = {}
        for k in ("ddp", "zero2", "zero3"):
            full[k] = run_arm("ray", k, args, work, paths)
            print(
                f"  full fine-tuning {k.upper():5} {full[k]['tps']:6.0f} tokens/s\n{describe(full[k]['cpu'])}",
                flush=True,
            )
        print(
            "full fine-tuning, 2 workers: "
            + "  ".join(f"{k.upper()} {v['tps']:.0f} tokens/s" for k, v in full.items())
        )
    if args.skip_lora:
        return
    ratio = b / a
    print(f"result: train_ray_vs_standalone={ratio:.3f} target=>=0.95 {'pass' if ratio >= 0.95 else 'fail'}")


if __name__ == "__main__":
    main()
