"""Routing across replicas, side by side: the same model, engines and load served
by (a) Sekisho with the kernel's spreading (`gateway.routing.by: connection`:
the engine in the process a connection reached answers), (b) plain
`ray.serve.llm` with its PrefixCacheAffinityRouter, (c) Sekisho's per-request
routing (prefix, adapter, load). Two engine replicas on one host, each its
share of the cores (OMP_NUM_THREADS=1, threads not pinned).

    .venv/bin/python benchmarks/serve_routing.py [--seconds 90] [--budget-s 900] [--arms cab]

Workloads, the same for every arm:
- shared context (as llm-d publishes it, scaled to a CPU): GROUPS groups, each a
  long context of most of the model's window; users ask short questions after
  it, arriving at random (Poisson, one rate for every arm: --load arrivals per
  cold prefill's time, more than two replicas keep up with unless nearly all
  prompts hit their prefix cache), over a small pool of keep-alive connections per client
  process. Each engine's KV cache holds about half the groups' contexts
  (--num-gpu-blocks-override), as a GPU's would under a real model's load.
- no shared prefix: the same arrivals with unrelated short prompts (what
  routing costs where it cannot help).
- multi-LoRA: 64 adapters (local folders) on the base, 4 LoRA slots and 16 kept
  in host memory per engine; closed-loop clients pick an adapter uniformly or by
  Zipf popularity; (c) with adapter affinity against (a), and (c) with every
  request on one adapter (the same load).

Prints TTFT p50/p90, output tokens/s, the engines' prefix-cache hit rate and
each replica's share of the requests per arm and workload, then the result
lines; the last: result: multilora_vs_single_adapter_tokens_per_s=...

Sizes are small so that the three arms fit in about 25 minutes on a 2-core
machine (starting two engines there takes 1-4 minutes per arm); a phase that
would end past --budget-s is skipped and its results print as nan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from foundation import offline  # noqa: E402

offline.apply()
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"  # two engines on two cores: let the OS place them

MODEL = "bench-base"
SHAPE = {"hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8}
CONTEXT_LEN = 2048
GROUPS, CONTEXT_TOKENS = 4, 1300  # 4 contexts of ~11 KV blocks (128 tokens) each
CALIBRATION = 3  # more contexts, never in the workloads: the median of their cold prefills sets the rate
KV_BLOCKS = 30  # per engine: two groups' contexts and the requests running on them
CLIENTS, CONNECTIONS = 2, 2  # client processes (event loops), keep-alive connections each
OUTPUT_TOKENS = 16
ADAPTERS, LORA_SLOTS, CPU_LORAS = 64, 4, 16
ENGINE = {
    "max_model_len": CONTEXT_LEN,
    "max_num_seqs": 8,
    "dtype": "float32",
    "enforce_eager": True,
    "max_loras": LORA_SLOTS,
    "max_cpu_loras": CPU_LORAS,
    "max_lora_rank": 8,
    "kv_cache_gb": 1,
    "enable_prefix_caching": True,
    "extra_args": ["--num-gpu-blocks-override", str(KV_BLOCKS)],
}
DEPLOY_S = 240  # two engines starting on a busy 2-core machine: an arm starts only if this much is left
# Arrivals per cold prefill's time (--load): above what two replicas serve when a third of the prompts
# miss their prefix cache (kernel spreading: about 68% hit), so throughput measures capacity. At 4.0
# kernel spreading served 114.5 tok/s of 131.5 offered (p90 TTFT 13 s) and Sekisho's routing all of it.
ARRIVALS_PER_COLD_PREFILL = 6.0
TARGETS = {"ttft_p90": 0.5, "vs_kernel": 1.2, "vs_ray": 1.0, "no_prefix": 0.97, "multilora": 0.9}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the model, its adapters, the prompts -------------------------------------
def build(home: Path):
    """The base model, 64 LoRA adapters on it, the group contexts, the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data import read_chat_jsonl
    from train import TinyModelConfig, build_tiny_model

    sample = Path(__file__).resolve().parent.parent / "data" / "samples" / "internal_faq_ja.jsonl"
    texts = [m["content"] for c in read_chat_jsonl(sample).conversations for m in c]
    cfg = TinyModelConfig(**SHAPE, max_position_embeddings=CONTEXT_LEN)
    model_dir = build_tiny_model(home / "base", texts, cfg)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)
    contexts = []
    for g in range(GROUPS + CALIBRATION):  # the groups' contexts, then the ones only the rate is measured on
        words, ids = [f"資料{g}:"], []
        while len(ids) < CONTEXT_TOKENS:
            words.append(rng.choice(texts))
            ids = tok(" ".join(words))["input_ids"]
        contexts.append(tok.decode(ids[:CONTEXT_TOKENS]))
    adapters = home / "adapters"
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    for i in range(ADAPTERS):
        torch.manual_seed(i)
        peft = get_peft_model(
            base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
        peft.save_pretrained(adapters / f"lora-{i:02d}")
        base = peft.unload()
    return model_dir, contexts[:GROUPS], sorted(adapters.iterdir()), texts, contexts[GROUPS:]


# ---- load ----------------------------------------------------------------------
async def one(session, url, headers, body, log: list) -> None:
    start, ttft, tokens = time.perf_counter(), None, 0
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        replica = resp.headers.get("X-Sekisho-Replica", "-")
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"content":"' in line:
                tokens += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
    log.append(
        {
            "ttft": ttft if ttft is not None else float("nan"),
            "tokens": tokens,
            "replica": replica,
            "model": body["model"],
        }
    )


def chat(model: str, content: str) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": OUTPUT_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }


async def open_loop(url, headers, bodies: list[dict], rate: float, seed: int) -> tuple[list, float]:
    """Send `bodies` at Poisson arrivals of `rate`/s from CLIENTS clients of CONNECTIONS keep-alive connections."""
    import aiohttp

    rng, log = random.Random(seed), []
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) for _ in range(CLIENTS)
    ]
    tasks, start = [], time.perf_counter()
    try:
        for i, body in enumerate(bodies):
            tasks.append(asyncio.create_task(one(sessions[i % CLIENTS], url, headers, body, log)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    finally:
        for s in sessions:
            await s.close()
    return log, time.perf_counter() - start


async def closed_loop(url, headers, pick, seconds: float, concurrency: int = 8) -> tuple[list, float]:
    """`concurrency` users, each sending the next request when its answer ends, for `seconds`."""
    import aiohttp

    log, rng = [], random.Random(1)
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) for _ in range(CLIENTS)
    ]
    start = time.perf_counter()

    async def user(k: int) -> None:
        n = 0
        while time.perf_counter() - start < seconds:
            n += 1
            await one(
                sessions[k % CLIENTS], url, headers, chat(pick(rng), f"利用者{k}の質問{n}: 手続きは?"), log
            )

    try:
        await asyncio.gather(*(user(k) for k in range(concurrency)))
    finally:
        for s in sessions:
            await s.close()
    return log, time.perf_counter() - start


def summary(log: list, wall: float) -> dict:
    ttfts = sorted(r["ttft"] for r in log)
    q = statistics.quantiles(ttfts, n=10) if len(ttfts) > 1 else ttfts * 9
    return {
        "n": len(log),
        "ttft_p50": statistics.median(ttfts),
        "ttft_p90": q[8],
        "tok_s": sum(r["tokens"] for r in log) / wall,
        "share": dict(Counter(r["replica"] for r in log)),
    }


# ---- engines' own counters -------------------------------------------------------
def prefix_counters(app: str) -> tuple[float, float]:
    """(hits, queries) of every engine's prefix cache, in tokens (vLLM's counters)."""
    import httpx

    from serve import ray_state
    from serve.gateway import routing

    key = ray_state.engine_secret(app)
    hits = queries = 0.0
    for entries in routing.read_table(app).values():
        for e in entries:
            text = httpx.get(
                e["url"] + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10
            ).text
            for line in text.splitlines():
                if line.startswith("vllm:prefix_cache_hits_total"):
                    hits += float(line.rsplit(" ", 1)[1])
                elif line.startswith("vllm:prefix_cache_queries_total"):
                    queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


def lora_loads(log: list, slots: int = CPU_LORAS) -> int:
    """Adapter loads from disk: each replica's request order replayed through an
    LRU of its host-memory slots (vLLM's policy; vLLM does not count them)."""
    loads, lru = 0, {}
    for r in log:
        held = lru.setdefault(r["replica"], [])
        if r["model"] in held:
            held.remove(r["model"])
        else:
            loads += 1
            if len(held) >= slots:
                held.pop(0)
        held.append(r["model"])
    return loads


# ---- arms ------------------------------------------------------------------------
class Run:
    def __init__(self, args, model_dir, contexts, adapters, texts, home, calibration):
        self.args, self.model_dir, self.contexts, self.adapters, self.texts = (
            args,
            model_dir,
            contexts,
            adapters,
            texts,
        )
        self.home, self.began, self.rate, self.calibration = home, time.monotonic(), None, calibration
        self.out: dict = {}

    def left(self, need_s: float = 0.0) -> bool:
        """Whether a phase that takes about `need_s` still fits in the time budget."""
        return time.monotonic() - self.began + need_s < self.args.budget_s

    def bodies(self, shared: bool, seed: int) -> list[dict]:
        rng, n = random.Random(seed), int(self.args.seconds * self.rate)
        if shared:
            return [
                chat(MODEL, rng.choice(self.contexts) + f"\n質問{i}: これは何番ですか。") for i in range(n)
            ]
        return [chat(MODEL, f"{i}: " + rng.choice(self.texts)) for i in range(n)]

    def workloads(self, arm: str, url: str, headers: dict, app: str | None) -> None:
        if self.rate is None:  # one rate for every arm: from the first arm's cold prefills
            import httpx

            colds = []
            for context in self.calibration:  # contexts no workload sends: each prefill is cold
                start = time.perf_counter()
                body = {**chat(MODEL, context + "準備"), "stream": False}
                httpx.post(url, json=body, headers=headers, timeout=600).raise_for_status()
                colds.append(time.perf_counter() - start)
            cold = statistics.median(colds)
            self.rate = self.args.load / cold
            print(
                f"  cold prefills of one context: {' '.join(f'{c:.2f}' for c in colds)}s (median {cold:.2f}s); "
                f"{self.args.load} per cold prefill: arrivals at {self.rate:.2f}/s",
                flush=True,
            )
        for name, shared in (("shared", True), ("no-prefix", False)):
            if not self.left(self.args.seconds + 30):
                print(f"  {arm} {name}: skipped (over the time budget)", flush=True)
                continue
            before = prefix_counters(app) if app else None
            log, wall = asyncio.run(open_loop(url, headers, self.bodies(shared, seed=7), self.rate, seed=3))
            s = summary(log, wall)
            if app:
                hits, queries = (a - b for a, b in zip(prefix_counters(app), before, strict=True))
                s["hit_rate"] = hits / queries if queries else float("nan")
            self.report(arm, name, s)

    def multilora(self, arm: str, url: str, headers: dict) -> None:
        names = [p.name for p in self.adapters]
        weights = [1 / (k + 1) ** 1.1 for k in range(len(names))]
        pickers = {
            "lora-uniform": lambda rng: rng.choice(names),
            "lora-zipf": lambda rng: rng.choices(names, weights)[0],
        }
        if arm.startswith("c"):
            pickers["lora-single"] = lambda rng: names[0]
        for name, pick in pickers.items():
            if not self.left(self.args.lora_seconds + 10):
                print(f"  {arm} {name}: skipped (over the time budget)", flush=True)
                continue
            log, wall = asyncio.run(closed_loop(url, headers, pick, self.args.lora_seconds))
            s = summary(log, wall)
            s["lora_loads_per_min"] = lora_loads(log) * 60 / wall
            self.report(arm, name, s)

    def report(self, arm: str, workload: str, s: dict) -> None:
        self.out[(arm, workload)] = s
        extra = f"  prefix-cache hit rate {s['hit_rate']:.0%}" if "hit_rate" in s else ""
        if "lora_loads_per_min" in s:
            extra += f"  adapter loads/min {s['lora_loads_per_min']:.0f}"
        share = " ".join(f"{k[:6]}:{v}" for k, v in sorted(s["share"].items()))
        print(
            f"  {arm:22} {workload:12} n={s['n']:<4} TTFT p50 {s['ttft_p50']:6.2f}s p90 {s['ttft_p90']:6.2f}s  "
            f"{s['tok_s']:7.1f} tok/s{extra}  per replica {share}",
            flush=True,
        )


def arm_sekisho(run: Run, by: str) -> None:
    import ray
    from ray import serve

    from cluster.local import start_local
    from serve import ServeAppConfig, deploy, resolve_app
    from serve.gateway import KeyStore

    start_local(run.home, num_cpus=4)
    app, arm = f"route-{by}", "a:kernel-spreading" if by == "connection" else "c:sekisho-routing"
    cfg = ServeAppConfig.model_validate(
        {
            "name": app,
            "port": free_port(),
            "gateway": {"routing": {"by": by}},
            "models": [
                {
                    "name": MODEL,
                    "source": str(run.model_dir),
                    "adapters": [{"name": p.name, "source": str(p)} for p in run.adapters],
                    "engine": ENGINE,
                    "num_replicas": 2,
                    "cpus_per_replica": 1,
                }
            ],
        }
    )
    started = time.monotonic()
    base_url = deploy(resolve_app(cfg, run.home / "cache"))
    print(f"  {arm}: 2 replicas up in {time.monotonic() - started:.0f}s", flush=True)
    key = KeyStore().create(f"{app}-{time.time_ns()}", ["*"])
    headers = {"Authorization": f"Bearer {key}"}
    try:
        run.workloads(arm, base_url + "/chat/completions", headers, app)
        run.multilora(arm, base_url + "/chat/completions", headers)
    finally:
        serve.shutdown()
        ray.shutdown()


def arm_ray_serve_llm(run: Run) -> None:
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    from cluster.local import start_local

    # Logical CPUs only (the same two cores): each LLMServer replica holds 2 (its actor and its engine's
    # bundle) and the OpenAiIngress 1; with 4 the ingress is never scheduled and the app never starts.
    start_local(run.home, num_cpus=6)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = LLMConfig(
        model_loading_config={"model_id": MODEL, "model_source": str(run.model_dir)},
        engine_kwargs={
            "max_model_len": ENGINE["max_model_len"],
            "max_num_seqs": ENGINE["max_num_seqs"],
            "dtype": ENGINE["dtype"],
            "enforce_eager": True,
            "enable_prefix_caching": True,
            "num_gpu_blocks_override": KV_BLOCKS,
        },
        deployment_config={
            "num_replicas": 2,
            "request_router_config": {
                "request_router_class": "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
            },
        },
        placement_group_config={"bundles": [{"CPU": 1}]},
        runtime_env={
            "env_vars": {
                "VLLM_CPU_KVCACHE_SPACE": str(ENGINE["kv_cache_gb"]),
                "OMP_NUM_THREADS": "1",
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            }
        },
    )
    started = time.monotonic()
    serve.run(build_openai_app({"llm_configs": [cfg]}), name="route-ray", route_prefix="/")
    print(f"  b:ray-serve-llm: 2 replicas up in {time.monotonic() - started:.0f}s", flush=True)
    try:
        run.workloads("b:ray-serve-llm", f"http://127.0.0.1:{port}/v1/chat/completions", {}, None)
    finally:
        serve.shutdown()
        ray.shutdown()


def verdict(name: str, value: float, op: str, target: float) -> str:
    ok = value <= target if op == "<=" else value >= target
    return f"{name}={value:.2f} target={op}{target} {'pass' if ok and value == value else 'fail'}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--seconds",
        type=float,
        default=90,
        help="arrivals per open-loop workload, in seconds (long enough that the groups' first, cold "
        "prefills are under a tenth of the requests, so p90 measures the steady state)",
    )
    p.add_argument(
        "--load",
        type=float,
        default=ARRIVALS_PER_COLD_PREFILL,
        help="arrivals per cold prefill's time, the same for every arm (at 2.0 both (a) and (c) keep up and "
        "their tokens/s equal the arrivals; the throughput ratio needs a load (a) cannot serve)",
    )
    p.add_argument("--lora-seconds", type=float, default=15, help="length of each multi-LoRA load")
    p.add_argument(
        "--budget-s", type=float, default=900, help="start no phase that would end past this many seconds"
    )
    p.add_argument("--arms", default="cab", help="a kernel spreading, b ray.serve.llm, c Sekisho routing")
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="sekisho-bench-routing-"))
    os.environ["SEKISHO_HOME"] = str(home)
    model_dir, contexts, adapters, texts, calibration = build(home)
    print(
        f"model {json.dumps(SHAPE)}; {GROUPS} groups x {CONTEXT_TOKENS}-token contexts; KV cache {KV_BLOCKS} "
        f"blocks of 128 tokens per engine; {CLIENTS} clients x {CONNECTIONS} keep-alive connections; "
        f"{ADAPTERS} adapters, {LORA_SLOTS} LoRA slots, {CPU_LORAS} in host memory; cores {os.cpu_count()}",
        flush=True,
    )
    run = Run(args, model_dir, contexts, adapters, texts, home, calibration)
    arms = {"a": lambda: arm_sekisho(run, "connection"), "b": lambda: arm_ray_serve_llm(run)}
    arms["c"] = lambda: arm_sekisho(run, "affinity")
    try:
        for arm in args.arms:
            if not run.left(DEPLOY_S):
                print(f"arm {arm}: skipped (it would not fit in the time budget)", flush=True)
                continue
            try:
                arms[arm]()
            except Exception as exc:  # the other arms still run and the results still print
                print(f"arm {arm} failed: {type(exc).__name__}: {exc}", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    nan = {"ttft_p90": float("nan"), "tok_s": float("nan")}
    a, b, c = (
        run.out.get((arm, "shared"), nan)
        for arm in ("a:kernel-spreading", "b:ray-serve-llm", "c:sekisho-routing")
    )
    a0, c0 = (run.out.get((arm, "no-prefix"), nan) for arm in ("a:kernel-spreading", "c:sekisho-routing"))
    print(f"\nelapsed {time.monotonic() - run.began:.0f}s")
    print(
        "result: "
        + verdict("routed_vs_kernel_ttft_p90", c["ttft_p90"] / a["ttft_p90"], "<=", TARGETS["ttft_p90"])
    )
    print(
        "result: "
        + verdict("routed_vs_kernel_tokens_per_s", c["tok_s"] / a["tok_s"], ">=", TARGETS["vs_kernel"])
    )
    print(
        "result: "
        + verdict(
            "routed_vs_ray_prefix_router_tokens_per_s", c["tok_s"] / b["tok_s"], ">=", TARGETS["vs_ray"]
        )
    )
    print(
        "result: "
        + verdict(
            "no_prefix_routed_vs_kernel_tokens_per_s", c0["tok_s"] / a0["tok_s"], ">=", TARGETS["no_prefix"]
        )
    )
    for skew in ("uniform", "zipf"):
        la, lc = (
            run.out.get((arm, f"lora-{skew}"), nan) for arm in ("a:kernel-spreading", "c:sekisho-routing")
        )
        print(f"multi-LoRA {skew}: (c)/(a) tokens/s {lc['tok_s'] / la['tok_s']:.2f}")
    single = run.out.get(("c:sekisho-routing", "lora-single"), nan)
    many = run.out.get(("c:sekisho-routing", "lora-uniform"), nan)
    print(
        "result: "
        + verdict(
            "multilora_vs_single_adapter_tokens_per_s",
            many["tok_s"] / single["tok_s"],
            ">=",
            TARGETS["multilora"],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
