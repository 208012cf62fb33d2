"""A real Ray head for `cluster status` and `cluster doctor`: started with the
very command `ray up` would run on the inventory's head (cluster/ray_up.py), after
doing what `ray up` does first (copy the token to the node, run the setup
command, place the bootstrap config). Token auth on, dashboard on loopback, two declared (not real) GPUs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config

from cluster import Inventory
from cluster.local import ensure_token
from cluster.ray_up import head_start_command, render_ray_up

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Head:
    inventory_file: Path
    inventory: Inventory
    token: str
    dashboard: str
    home: Path


def single_node_inventory(root: Path, cpus: int = 4) -> Path:
    doc = {
        "name": "sekisho-test",
        "shared_storage": {"path": str(root / "shared")},
        "ray": {
            "gcs_port": free_port(),
            "dashboard_port": free_port(),
            "auth_token_file": str(root / "launcher" / "auth_token"),
            "python_env": sys.prefix,
        },
        "nodes": [
            {
                "name": "test-head",
                "address": "127.0.0.1",
                "role": "head",
                "gpus": 2,
                "gpu_memory_gib": 80,
                "cpus": cpus,
                "nccl_socket_ifname": "lo",
            }
        ],
    }
    (root / "shared").mkdir(parents=True, exist_ok=True)
    path = root / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _wait_for(path: Path, proc: subprocess.Popen, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Ray head did not start (exit {proc.poll()})")
        time.sleep(0.2)


_STOP_HEADS: list = []  # how to stop the head, while it runs


def pytest_runtest_teardown(item, nextitem):
    """Stop the head after the last test of this folder. A `package` fixture in a
    folder without `__init__.py` lives for the whole session: the head (its Serve
    apps, dashboard and autoscaler) ran beside every later test, taking CPU from
    them and making Ray Train's placement-group cleaner in the families' jobs find
    two clusters ("Found multiple active Ray instances")."""
    if nextitem is None or Path(nextitem.path).parent != Path(item.path).parent:
        while _STOP_HEADS:
            _STOP_HEADS.pop()()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """The test head, from the first test of this folder that asks for it until the
    last test of this folder (pytest_runtest_teardown above)."""
    root = tmp_path_factory.mktemp("ray-head")
    inventory_file = single_node_inventory(root)
    inventory = Inventory.from_yaml(inventory_file)
    token = ensure_token(inventory.ray.auth_token_file).read_text()
    node_home = root / "node-home"  # the head's $HOME, as `ray up` leaves it
    (node_home / ".sekisho" / "ray").mkdir(parents=True)
    shutil.copy(inventory.ray.auth_token_file, node_home / ".sekisho" / "ray" / "auth_token")
    config = render_ray_up(inventory)
    # `ray up` leaves the filled-out config here for the head's autoscaler.
    (node_home / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(prepare_config(config)))
    # No PYTHONPATH: the rendered command puts the egress hook there itself.
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "HOME": str(node_home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    subprocess.run(["bash", "-c", config["setup_commands"][0]], env=env, check=True)
    # A short private temp dir: Unix socket paths must stay under 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="skr", dir="/tmp"))
    command = f"{head_start_command(inventory)} --temp-dir={temp_dir} --block"
    log = open(root / "ray-start.log", "w")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(["bash", "-c", command], env=env, stdout=log, stderr=log, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)

    _STOP_HEADS.append(stop)
    try:
        _wait_for(temp_dir / "ray_current_cluster", proc, 120)
        dashboard = f"127.0.0.1:{inventory.ray.dashboard_port}"
        yield Head(inventory_file, inventory, token, dashboard, root / "sekisho-home")
    finally:
        if stop in _STOP_HEADS:
            _STOP_HEADS.remove(stop)
            stop()


@pytest.fixture
def sekisho():
    """Run the real CLI in its own process (a Ray driver of the test head)."""

    def run(head: Head, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "sekisho.cli", "--home", str(head.home), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            check=False,
        )

    return run
