"""benchmarks/gpu_check.py --dry-run: on a CPU the GPU readiness check runs both
recipes on its tiny stand-in and prints the lines a GPU run prints, ending with the
result line (marked not meaningful on CPU)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_prints_every_line():
    # Not this process's group (a recipe test may have started one): the script starts its own.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"}
    }
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("device: cpu")
    for kind, path in (("lora", "peft-lora"), ("full", "(deepspeed-zero2|torch-adamw)")):
        line = next(line for line in lines if line.startswith(f"{kind}: "))
        assert re.match(
            rf"{kind}: path={path} params=\S+ tokens/s=\d+ peak_mem_gb=[\d.]+ .*estimate [\d.]+ per GPU\)"
            r" mfu=n/a$",
            line,
        ), line
    assert re.fullmatch(
        r"result: full_ft_mfu=n/a target=>=0\.40 fail \(CPU dry run: .*not meaningful\)", lines[-1]
    )


def test_peak_flops_by_device_name_or_environment(monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_check import peak_flops
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    monkeypatch.delenv("SEKISHO_PEAK_FLOPS", raising=False)
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L4") is None
    monkeypatch.setenv("SEKISHO_PEAK_FLOPS", "1.2e14")
    assert peak_flops("NVIDIA L4") == 1.2e14
