"""`train run --inventory`: the job's host-memory estimate is checked against the
inventory's GPU nodes (memory_gb) before Ray starts, and the refusal is a user
error naming the memory, not a traceback."""

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "train" / "llama70b_full_zero3_offload_dgx4.yaml"


def _inventory(tmp_path: Path, memory_gb: float) -> Path:
    inv = yaml.safe_load((REPO / "configs" / "cluster" / "reference.yaml").read_text())
    for node in inv["nodes"]:
        node["memory_gb"] = memory_gb
    out = tmp_path / "inventory.yaml"
    out.write_text("# Used by: sekisho train run --inventory (test)\n" + yaml.safe_dump(inv))
    return out


def _train_run(tmp_path: Path, inventory: Path):
    return subprocess.run(
        [sys.executable, "-m", "sekisho", "train", "run", str(CONFIG), "--inventory", str(inventory)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"SEKISHO_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )


def test_nodes_with_too_little_host_memory_refuse_the_job_before_ray_starts(tmp_path):
    r = _train_run(tmp_path, _inventory(tmp_path, memory_gb=256))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "host" in r.stderr and "256" in r.stderr, r.stderr
    assert not (tmp_path / "home" / "ray").exists()  # refused before a local Ray cluster started
