"""Evaluation throughput, side by side: the same questions, the same engine (a
tiny Llama served by Sekisho: Ray Serve, vLLM, the gateway with an `eval-` key)
asked (a) through Sekisho's evaluation runner (`experiments.evaluation.evaluate`:
an llm-jp-eval task file read, hashed, asked `concurrency` at a time with every
answer kept for resuming, scored) and (b) by a plain concurrent `openai` client
loop (a thread pool calling chat.completions.create). Greedy, the same
max_tokens and concurrency in both arms; the arms alternate, `--rounds` times each,
and the best round of each is compared (the shared machine's other load only
ever slows a round down).

    unshare -rn sh -c 'ip link set lo up && .venv/bin/python benchmarks/eval_throughput.py'

Last line: result: eval_vs_plain_client=(a)/(b) questions per second target=>=0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from foundation import offline  # noqa: E402

offline.apply()
os.environ["OMP_NUM_THREADS"] = "1"

TARGET = 0.9
ENGINE = {"max_model_len": 512, "max_num_seqs": 32, "dtype": "float32", "kv_cache_gb": 1}


def questions(n: int) -> list[str]:
    sample = Path(__file__).resolve().parent.parent / "data" / "samples" / "internal_faq_ja.jsonl"
    qs = [
        json.loads(x)["messages"][0]["content"]
        for x in sample.read_text(encoding="utf-8").splitlines()
        if x.strip()
    ]
    return [f"{qs[i % len(qs)]}（{i}）" for i in range(n)]


def plain_client(base_url: str, key: str, qs: list[str], concurrency: int, max_tokens: int) -> float:
    """Questions per second of a thread pool of `openai` calls."""
    import httpx
    from openai import OpenAI

    client = OpenAI(
        base_url=base_url,
        api_key=key,
        max_retries=0,
        http_client=httpx.Client(limits=httpx.Limits(max_connections=concurrency), timeout=300),
    )

    def ask(q: str) -> str:
        r = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": q}], temperature=0, max_tokens=max_tokens
        )
        return r.choices[0].message.content or ""

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(ask, qs))
    took = time.perf_counter() - start
    assert len(answers) == len(qs)
    return len(qs) / took


def runner(
    base_url: str, key: str, task: Path, concurrency: int, max_tokens: int, home: Path, rnd: int
) -> float:
    """Questions per second of Sekisho's evaluation runner on the task file."""
    from experiments.evaluation import AnswerCache, EvalConfig, evaluate

    cfg = EvalConfig.model_validate(
        {
            "name": "bench",
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "suites": [{"name": "bench", "format": "llm_jp_eval", "path": str(task)}],
        }
    )
    cache = AnswerCache(home / f"answers-{rnd}.jsonl")  # kept as they arrive, as in a real run
    start = time.perf_counter()
    r = evaluate(cfg, base_url, key, "tiny", f"bench/{rnd}", cache=cache)
    took = time.perf_counter() - start
    assert r.metrics["eval.questions"] == len(json.loads(task.read_text(encoding="utf-8"))["samples"])
    assert r.metrics["eval.answers_resumed"] == 0
    return r.metrics["eval.questions"] / took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 384 questions: a round of ~8 s, so that the runner's fixed costs (reading and
    # hashing the suite file, scoring) weigh as they do in a real evaluation's
    # thousands of questions, not as in a round of 2 s.
    p.add_argument("--questions", type=int, default=384)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="sekisho-evalbench-"))
    os.environ["SEKISHO_HOME"] = str(home)

    import ray
    from ray import serve

    from cluster.local import start_local
    from data import read_chat_jsonl
    from serve import ModelSpec, ServeAppConfig, deploy, resolve_app
    from serve.gateway import AuditLog, KeyStore
    from train import build_tiny_model

    sample = Path(__file__).resolve().parent.parent / "data" / "samples" / "internal_faq_ja.jsonl"
    conv = read_chat_jsonl(sample).conversations
    model_dir = build_tiny_model(home / "tiny", [m["content"] for c in conv for m in c])
    qs = questions(args.questions)
    task = home / "bench.json"
    task.write_text(
        json.dumps(
            {
                "instruction": "",
                "metrics": ["exact_match", "char_f1"],
                "samples": [{"input": q, "output": "x"} for q in qs],
            },
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    start_local(home, num_cpus=4)
    try:
        cfg = ServeAppConfig(
            name="evalbench",
            port=_free_port(),
            models=[ModelSpec(name="tiny", source=str(model_dir), engine=ENGINE)],
        )
        base_url = deploy(resolve_app(cfg, home / "cache"))
        key_name = f"eval-bench-{time.time_ns()}"
        key = KeyStore().create(key_name, ["tiny"])
        print(
            f"{len(qs)} questions, concurrency {args.concurrency}, max_tokens {args.max_tokens}, engine {json.dumps(ENGINE)}, "
            f"cores {os.cpu_count()}",
            flush=True,
        )
        plain_client(base_url, key, qs[:16], args.concurrency, args.max_tokens)  # warm-up
        plain, ours = [], []
        for rnd in range(args.rounds):
            plain.append(plain_client(base_url, key, qs, args.concurrency, args.max_tokens))
            ours.append(runner(base_url, key, task, args.concurrency, args.max_tokens, home, rnd))
            print(
                f"round {rnd + 1}: plain client {plain[-1]:.2f} q/s, evaluation runner {ours[-1]:.2f} q/s",
                flush=True,
            )
        records = [r for r in AuditLog("evalbench").records() if r.get("key") == key_name]
        print(f"audit: {len(records)} records under the evaluation key {key_name}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    ratio = max(ours) / max(plain)
    print(f"best: plain client {max(plain):.2f} q/s, evaluation runner {max(ours):.2f} q/s")
    print(
        f"result: eval_vs_plain_client={ratio:.3f} target=>={TARGET} {'pass' if ratio >= TARGET else 'fail'}"
    )
    return 0


def _free_port() -> int:
    from foundation.net import free_port

    return free_port()


if __name__ == "__main__":
    sys.exit(main())
