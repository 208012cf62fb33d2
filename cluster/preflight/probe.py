"""What one node reports about itself: a Ray task pinned to each node."""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def on_node(fn, node_id: str, **options):
    """`fn` as a zero-CPU Ray task that runs on the node `node_id` and nowhere else."""
    return ray.remote(fn).options(
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        max_retries=0,
        **options,
    )


def _nvidia() -> dict:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {"driver": None}
    query = subprocess.run(
        [smi, "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    header = subprocess.run([smi], capture_output=True, text=True, timeout=60).stdout
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    gpus = [[f.strip() for f in line.split(",")] for line in query.stdout.splitlines() if line]
    return {
        "driver": sorted({g[0] for g in gpus}) or ["?"],
        "cuda": cuda and cuda.group(1),
        "gpus": [{"name": g[1], "memory_mib": float(g[2])} for g in gpus],
        "error": query.stderr.strip() if query.returncode else None,
    }


def _infiniband() -> dict[str, str] | None:
    states = {}
    for path in glob.glob("/sys/class/infiniband/*/ports/*/state"):
        parts = Path(path).parts
        states[f"{parts[-4]}/{parts[-2]}"] = Path(path).read_text().strip()
    return states if os.path.isdir("/sys/class/infiniband") else None


def _free_gib(path: str) -> float | None:
    try:
        return shutil.disk_usage(path).free / 2**30
    except OSError:
        return None


def probe(shared: str | None, mark: str) -> dict:
    """Driver, GPUs, InfiniBand ports, free disk; writes `mark` to a file of its
    own on the shared storage (if the inventory has one) and reads it back."""
    ip = ray.util.get_node_ip_address()
    own, storage = None, None
    if shared is not None:
        own = Path(shared) / ".sekisho-doctor" / f"{ip}-{mark}"
        try:
            own.parent.mkdir(parents=True, exist_ok=True)
            own.write_text(mark)
            storage = None if own.read_text() == mark else "read back something else"
        except OSError as exc:
            storage = f"{type(exc).__name__}: {exc}"
    disks = [shared] if shared is not None else []
    return {
        "ip": ip,
        "host": socket.gethostname(),
        "nvidia": _nvidia(),
        "ib": _infiniband(),
        "storage_error": storage,
        "storage_file": own and str(own),
        "free_gib": {p: _free_gib(p) for p in [*disks, tempfile.gettempdir()]},
    }


def read_marks(files: list[str]) -> dict[str, str | None]:
    """The content of the other nodes' marks, as this node sees them (None: missing)."""
    out = {}
    for f in files:
        try:
            out[f] = Path(f).read_text()
        except OSError:
            out[f] = None
    return out


def clock() -> float:
    return time.time()


def forget(file: str) -> None:
    Path(file).unlink(missing_ok=True)
