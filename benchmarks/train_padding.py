"""Steps per second of the LoRA recipe on data of widely different lengths, with
`optim.split_padding` on and off, side by side.

The data has the shape of the families' training set: short Q/A rows (40-80
tokens) and, one row in eleven, a tool-call conversation whose rendered tool
instructions make it ~600 tokens long. Without the split, every batch that draws a
long row pads all its rows to it; with it, the long rows run as a forward pass of
their own (same loss and gradients: tests/train/test_padding_split.py).

Both arms train the same model from the same seed on the same batches, in fresh
processes, alternating over rounds (which goes first alternates too); the result is
the ratio of the median steps/s.

    flock /tmp/sekisho-heavy.lock .venv/bin/python benchmarks/train_padding.py [--rounds 3] [--steps 40]

Last line: result: split_padding_speedup=(on)/(off), target >= 1.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from foundation import offline

offline.apply()

TARGET = 1.5


def prepare(work: Path, rows: int) -> dict:
    """A tiny Llama of the families' size and a tokens.parquet of mixed lengths."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from train import TinyModelConfig
    from train.tiny_model import build_tiny_model

    corpus = ["東京の天気を調べてください。", "申請書の提出期限はいつですか。"] * 50
    model = build_tiny_model(work / "model", corpus, TinyModelConfig(max_position_embeddings=1024))
    g = torch.Generator().manual_seed(0)
    ids, labels = [], []
    for i in range(rows):
        n = 600 if i % 11 == 5 else int(torch.randint(40, 80, (1,), generator=g))
        row = torch.randint(3, 200, (n,), generator=g).tolist()
        ids.append(row)
        labels.append([-100] * (n - 20) + row[n - 20 :])
    tokens = work / "tokens.parquet"
    pq.write_table(pa.table({"input_ids": ids, "labels": labels}), str(tokens))
    return {"model": str(model), "tokens": str(tokens)}


def child(spec: dict) -> None:
    """One arm in this process: steps/s over the steps after the warm-up."""
    import torch

    from train import LoraJobConfig, LoraRecipe

    torch.set_num_threads(1)
    cfg = LoraJobConfig(
        name="padding",
        base_model="b@production",
        dataset="d.yaml",
        register_as="a",
        log_every=1,
        lora={"dropout": 0.0},
        optim={"steps": spec["steps"], "warmup_steps": 0, "batch_size": 8, "split_padding": spec["split"]},
        scaling={"num_workers": 1, "cpus_per_worker": 1},
    )
    recipe = LoraRecipe(cfg)
    recipe.setup(spec["model"], spec["tokens"])
    times: dict[int, float] = {}
    losses: dict[int, float] = {}
    recipe.train(
        on_metrics=lambda m, s: losses.__setitem__(s, m["loss"]),
        on_step=lambda s: times.__setitem__(s, time.perf_counter()),
    )
    skip = spec["skip"]
    rate = (spec["steps"] - skip) / (times[spec["steps"]] - times[skip])
    print(json.dumps({"steps_per_s": rate, "last_loss": losses[spec["steps"]]}))


def run_arm(split: bool, paths: dict, args) -> dict:
    spec = {**paths, "split": split, "steps": args.steps, "skip": args.skip}
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"arm split_padding={split} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = prepare(Path(tmp), rows=8 * args.steps)
        on, off = [], []
        for r in range(args.rounds):
            order = [True, False] if r % 2 == 0 else [False, True]
            for split in order:
                res = run_arm(split, paths, args)
                (on if split else off).append(res)
                print(
                    f"round {r + 1} split_padding={'on ' if split else 'off'} "
                    f"{res['steps_per_s']:.2f} steps/s  last loss {res['last_loss']:.4f}",
                    flush=True,
                )
    med_on = statistics.median(x["steps_per_s"] for x in on)
    med_off = statistics.median(x["steps_per_s"] for x in off)
    ratio = med_on / med_off
    print(f"median steps/s: split on {med_on:.2f}, off {med_off:.2f}")
    print(
        f"result: split_padding_speedup={ratio:.2f} target=>={TARGET} {'pass' if ratio >= TARGET else 'fail'}"
    )


if __name__ == "__main__":
    main()
