"""Dataset preparation, side by side, on a synthetic Japanese + English chat corpus
(10% of rows carry a phone number, 2% repeat an earlier row):

(a) a plain Hugging Face `datasets.map(batched=True, num_proc=2)` that renders
    each row with the chat template and tokenises it with the same fast tokenizer;
(b) the whole Sekisho pipeline (read, validate, normalise, mask PII, exact and
    near dedup, split, tokenise with the loss mask, pack, write Parquet).

Tokens/s and peak memory (RSS summed over the arm's process tree, polled every
50 ms) at two input sizes; each arm runs in a fresh process, arms interleaved
over rounds, medians reported.

Tokens/s is the same for both arms: the input's tokens (as (a) tokenises the
rows) over the arm's wall time, so (b)/(a) is (a)'s time over (b)'s for the same
rows. The pipeline writes fewer tokens than it reads (it drops the corpus's 2%
repeated rows, the work it is there to do); its written tokens/s is printed too.

    .venv/bin/python benchmarks/data_prepare.py [--rows 100000,400000] [--rounds 2] [--workers 2]

Last line: result: pipeline_vs_hf_tokens_per_s=(b)/(a) at the larger size, target >= 1.0.
The line before it: the pipeline's peak-memory growth per input row between
the two sizes, target <= 100 bytes/row.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from foundation import offline

offline.apply()


def write_corpus(path: Path, rows: int, seed: int = 0) -> None:
    """Synthetic chat rows: half Japanese (kanji + kana), half English-like words."""
    rng = random.Random(seed)
    kanji = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]
    kana = [chr(c) for c in range(0x3041, 0x3094)]
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(5000)
    ]

    def ja(n):
        return "".join(rng.choice(kanji) if rng.random() < 0.4 else rng.choice(kana) for _ in range(n)) + "。"

    def en(n):
        return " ".join(rng.choice(words) for _ in range(n // 4)) + "."

    written: list[str] = []
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            if written and rng.random() < 0.02:
                line = rng.choice(written[-1000:])
            else:
                text = ja if i % 2 else en
                answer = text(rng.randint(40, 200)) + (" 連絡先は03-1234-5678です。" if i % 10 == 0 else "")
                line = json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": text(rng.randint(20, 80))},
                            {"role": "assistant", "content": answer},
                        ]
                    },
                    ensure_ascii=False,
                )
                written.append(line)
            f.write(line + "\n")


def build_tokenizer(folder: Path, corpus: Path) -> Path:
    """The tiny Llama's byte-level BPE (trained on the corpus start) with its chat template."""
    from train import build_tiny_model

    texts = []
    with corpus.open(encoding="utf-8") as f:
        for _, line in zip(range(2000), f):
            texts += [m["content"] for m in json.loads(line)["messages"]]
    return build_tiny_model(folder, texts)


def arm_hf(corpus: str, tokenizer_dir: str) -> dict:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_caching()
    datasets.logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)

    def tokenize(batch):
        return tok(tok.apply_chat_template(batch["messages"], tokenize=False), add_special_tokens=False)

    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=corpus, split="train")
    out = ds.map(tokenize, batched=True, num_proc=2, remove_columns=ds.column_names)
    tokens = sum(len(ids) for batch in out.iter(batch_size=10_000) for ids in batch["input_ids"])
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def arm_sekisho(corpus: str, tokenizer_dir: str, workers: int) -> dict:
    from transformers import AutoTokenizer  # noqa: F401  (import time is outside the timing, as in (a))

    from data import DatasetConfig, prepare

    cfg = DatasetConfig(
        name="bench",
        path=corpus,
        max_length=2048,
        on_error="skip",
        workers=workers,
        split={"eval_fraction": 0.01},
        packing={"enabled": True, "length": 4096},
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        m = prepare(cfg, tokenizer_dir, out)
    return {
        "seconds": time.perf_counter() - start,
        "tokens": m["tokens"],
        "dropped": m["rows"]["dropped"],
        "pii": sum(m["pii"].values()),
        "index_mb": m["dedup_index_bytes"] / 2**20,
    }


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run_arm(arm: str, corpus: Path, tokenizer_dir: Path, workers: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--arm",
        arm,
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(tokenizer_dir),
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mb"] = peak / 2**20
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="100000,400000", help="two corpus sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="the pipeline's `workers` setting (2: the same cores as num_proc=2)",
    )
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:  # one measurement, in its own process
        fn = arm_hf if args.arm == "hf" else arm_sekisho
        extra = () if args.arm == "hf" else (args.workers,)
        print(json.dumps(fn(args.corpus, args.tokenizer, *extra)))
        return 0

    sizes = [int(n) for n in args.rows.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpora = {}
        for n in sizes:
            corpora[n] = tmp / f"corpus-{n}.jsonl"
            write_corpus(corpora[n], n)
            print(f"corpus {n} rows: {corpora[n].stat().st_size / 2**20:.1f} MiB", flush=True)
        tokenizer_dir = build_tokenizer(tmp / "tiny", corpora[sizes[0]])
        runs: dict[tuple[str, int], list[dict]] = {}
        for r in range(args.rounds):
            for n in sizes:
                for arm in ("hf", "sekisho") if r % 2 == 0 else ("sekisho", "hf"):
                    res = run_arm(arm, corpora[n], tokenizer_dir, args.workers)
                    runs.setdefault((arm, n), []).append(res)
                    res["tok_s"] = runs[("hf", n)][0]["tokens"] / res["seconds"]  # round 0 runs (a) first
                    print(
                        f"round {r} rows={n} {arm}: {res['tok_s']:,.0f} tokens/s, {res['seconds']:.1f} s, "
                        f"peak {res['peak_mb']:.0f} MiB"
                        + (
                            f", written {res['tokens'] / res['seconds']:,.0f} tokens/s, dedup index "
                            f"{res['index_mb']:.1f} MiB, dropped {res['dropped']}, pii {res['pii']}"
                            if arm == "sekisho"
                            else ""
                        ),
                        flush=True,
                    )
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("tok_s", "peak_mb")} for k, v in runs.items()}
    for n in sizes:
        a, b = med[("hf", n)], med[("sekisho", n)]
        print(
            f"rows={n}: (a) hf {a['tok_s']:,.0f} tokens/s peak {a['peak_mb']:.0f} MiB | (b) sekisho "
            f"{b['tok_s']:,.0f} tokens/s peak {b['peak_mb']:.0f} MiB | (b)/(a) {b['tok_s'] / a['tok_s']:.2f}"
        )
    small, large = sizes[0], sizes[-1]
    growth = (
        (med[("sekisho", large)]["peak_mb"] - med[("sekisho", small)]["peak_mb"]) * 2**20 / (large - small)
    )
    print(
        f"pipeline_peak_growth_bytes_per_row={growth:.0f} target=<=100 {'pass' if growth <= 100 else 'fail'}"
    )
    ratio = med[("sekisho", large)]["tok_s"] / med[("hf", large)]["tok_s"]
    print(
        f"result: pipeline_vs_hf_tokens_per_s={ratio:.2f} target=>=1.0 {'pass' if ratio >= 1.0 else 'fail'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
