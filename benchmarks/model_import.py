"""Airlock hashing throughput: import a 2 GB synthetic safetensors model and compare
the importer's SHA-256 pass with `sha256sum` on the same files.

    .venv/bin/python benchmarks/model_import.py [--gb 2] [--rounds 3]

The model is the tiny Llama's config and tokenizer plus two safetensors shards of
random F16 data (2 GB in all). Arms are interleaved and repeated; medians are
compared. Files are read from the page cache after the first round, so this
measures the hashing loop, not the disk. The last line is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_RATIO = 0.9  # the importer hashes at >= 90% of sha256sum's speed


def write_shard(path: Path, nbytes: int) -> None:
    """One safetensors file holding a single F16 tensor of random data."""
    rows = nbytes // (2 * 4096)
    header = json.dumps(
        {"w": {"dtype": "F16", "shape": [rows, 4096], "data_offsets": [0, rows * 4096 * 2]}}
    ).encode()
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        block = os.urandom(64 << 20)
        left = rows * 4096 * 2
        while left:
            fh.write(block[: min(left, len(block))])
            left -= min(left, len(block))


def build_model(out: Path, gb: float) -> Path:
    from data import read_chat_jsonl
    from train import build_tiny_model

    repo = Path(__file__).resolve().parent.parent
    convs = read_chat_jsonl(repo / "data/samples/internal_faq_ja.jsonl").conversations
    model = build_tiny_model(out / "model", [m["content"] for c in convs for m in c])
    (model / "model.safetensors").unlink()
    half = int(gb * 1e9 / 2)
    for i in (1, 2):
        write_shard(model / f"model-0000{i}-of-00002.safetensors", half)
    return model


def time_sha256sum(files: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, files)], check=True, capture_output=True)
    return time.perf_counter() - start


def time_importer_hash(root: Path, files: list[Path]) -> float:
    from airlock.file_hashes import hash_tree

    return hash_tree(root, files, progress=False).seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sekisho-bench-import-"))
    os.environ["SEKISHO_HOME"] = str(work / "home")
    try:
        model = build_model(work, args.gb)
        files = sorted(model.rglob("*"))
        total = sum(f.stat().st_size for f in files)
        arms = {"sha256sum": [], "importer": []}
        for _ in range(args.rounds):
            arms["sha256sum"].append(time_sha256sum(files))
            arms["importer"].append(time_importer_hash(model, files))
        med = {k: statistics.median(v) for k, v in arms.items()}
        for k, v in arms.items():
            print(
                f"{k:10} {total / 1e6 / med[k]:8.0f} MB/s  (runs: " + ", ".join(f"{t:.2f}s" for t in v) + ")"
            )

        from airlock import import_model, verify_all_bytes, verify_store_copy

        start = time.perf_counter()
        m = import_model(model, "bench-2gb", progress=False)
        full = time.perf_counter() - start
        print(
            f"import     {full:8.2f} s end to end ({total / 1e6 / full:.0f} MB/s; copy+hash pass "
            f"{m.hashes.seconds:.2f} s, {m.hashes.mb_per_s:.0f} MB/s)"
        )
        start = time.perf_counter()
        verify_store_copy(f"bench-2gb/{m.version}")
        print(f"load check {time.perf_counter() - start:8.3f} s (sizes, headers, sampled chunks)")
        start = time.perf_counter()
        verify_all_bytes(f"bench-2gb/{m.version}", progress=False)
        print(f"verify     {time.perf_counter() - start:8.2f} s (every byte)")
        ratio = med["sha256sum"] / med["importer"]
        verdict = "pass" if ratio >= TARGET_RATIO else "fail"
        print(f"result: hash_throughput_vs_sha256sum={ratio:.2f} target=>= {TARGET_RATIO} {verdict}")
    finally:
        for p in [work, *work.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
