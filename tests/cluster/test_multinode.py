"""Multi-node for real on one machine: a Ray head and two worker hosts, each in
its own network namespace (veth pairs on a bridge, addresses 10.77.0.x), started
with the very commands `ray up` runs (cluster/ray_up.py: the worker command picks
its node by the host's own addresses), token auth on, GPUs declared where none
exist. A 2-worker Ray Train job placed by the planner spans both worker hosts,
each rank on the node the plan gave it. Needs root (CI runs as root)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from cluster import Inventory
from cluster.local import ensure_token
from cluster.ray_up import head_start_command, worker_start_command

pytestmark = pytest.mark.e2e

SUBNET = "10.77.0"
DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from cluster import GpuRequests, Inventory, plan_placement
    from cluster.connect import connect, target

    inventory = Inventory.from_yaml(sys.argv[1])
    out = Path(sys.argv[2])
    connect(target(inventory, None, None, out))
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    requests = GpuRequests.model_validate({"requests": [{
        "name": "tiny-train", "kind": "train", "params_billions": 0.001, "data_parallel": 2}]})
    plan = plan_placement(inventory, requests.requests)
    kwargs = plan.scaling_config_kwargs("tiny-train")
    (out / "plan.json").write_text(json.dumps(kwargs))

    def loop(config):
        import json, os
        from pathlib import Path
        import ray, torch
        import torch.distributed as dist
        from ray import train

        rank = train.get_context().get_world_rank()
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps({
            "ip": ray.util.get_node_ip_address(), "sum": total.item(),
            "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
            "auth": os.environ.get("RAY_AUTH_MODE")}))

    trainer = TorchTrainer(loop, train_loop_config={"out": str(out)},
                           torch_config=TorchConfig(backend="gloo"),  # no real GPU here
                           scaling_config=ScalingConfig(**kwargs),
                           run_config=RunConfig(name="span", storage_path=str(out / "runs")))
    trainer.fit()
    print("TRAINED")
""")


def ip(*args: str, ns: str | None = None) -> None:
    subprocess.run(["ip", *(["-n", ns] if ns else []), *args], check=True, capture_output=True)


@pytest.fixture
def three_hosts(tmp_path):
    """Namespaces head, w1, w2 on a bridge; yields (inventory file, namespaces)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.fail("the multi-node test needs root and iproute2 (ip netns)")
    tag = f"{os.getpid() % 100000}"
    bridge, names = f"skbr{tag}", [f"sk{tag}{n}" for n in ("h", "a", "b")]
    created: list[str] = []
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{SUBNET}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for i, ns in enumerate(names):
            ip("netns", "add", ns)
            created.append(ns)
            ip("link", "add", f"skv{tag}{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", f"skv{tag}{i}", "master", bridge, "up")
            ip("addr", "add", f"{SUBNET}.{10 + i}/24", "dev", "eth0", ns=ns)
            ip("link", "set", "eth0", "up", ns=ns)
            ip("link", "set", "lo", "up", ns=ns)
        yield names
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def inventory_file(root: Path) -> Path:
    def node(name, i, role, gpus):
        return {"name": name, "address": f"{SUBNET}.{10 + i}", "role": role, "gpus": gpus,
                "gpu_memory_gib": 80, "cpus": 2, "nccl_socket_ifname": "eth0"}
    doc = {"name": "sekisho-netns", "shared_storage": str(root / "shared"),
           "ray": {"auth_token_file": str(root / "launcher" / "auth_token"),
                   "python_env": sys.prefix},
           "nodes": [node("head", 0, "head", 0), node("w1", 1, "worker", 1),
                     node("w2", 2, "worker", 1)]}
    (root / "shared").mkdir()
    path = root / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_train_job_spans_both_worker_hosts_as_planned(three_hosts, tmp_path):
    inv_file = inventory_file(tmp_path)
    inventory = Inventory.from_yaml(inv_file)
    ensure_token(inventory.ray.auth_token_file)
    home = tmp_path / "node-home"  # what `ray up` leaves on each host: the token, 0600
    (home / ".sekisho" / "ray").mkdir(parents=True)
    shutil.copy(inventory.ray.auth_token_file, home / ".sekisho" / "ray" / "auth_token")
    os.chmod(home / ".sekisho" / "ray" / "auth_token", 0o600)
    env = {**os.environ, "HOME": str(home), "RAY_HEAD_IP": inventory.head.address,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    temp_dir = Path(tempfile.mkdtemp(prefix="skn", dir="/tmp"))
    head_cmd = head_start_command(inventory).replace(
        "--autoscaling-config=~/ray_bootstrap_config.yaml", "")
    commands = [head_cmd, worker_start_command(inventory), worker_start_command(inventory)]
    procs = []

    def start(ns, command):
        log_path = tmp_path / f"{ns}.log"
        with log_path.open("a") as log:
            return subprocess.Popen(
                ["ip", "netns", "exec", ns, "bash", "-c",
                 command.replace(" ;;", f" --temp-dir={temp_dir} --block ;;")
                 if "case" in command else f"{command} --temp-dir={temp_dir} --block"],
                env=env, stdout=log, stderr=log, start_new_session=True)

    try:
        for ns, command in zip(three_hosts, commands):
            # `ray start` gives a node 30 s (fixed in Ray) to register; on a loaded
            # 2-core machine that can pass. A host that gave up is started again, as
            # an operator would; a host that never comes up fails the test.
            for attempt in range(3):
                proc = start(ns, command)
                log_path = tmp_path / f"{ns}.log"
                deadline = time.monotonic() + 150
                while proc.poll() is None and time.monotonic() < deadline:
                    if "This command will now block forever" in log_path.read_text():
                        break
                    time.sleep(0.2)
                if proc.poll() is None and time.monotonic() < deadline:
                    break
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # its raylet and GCS too
                except ProcessLookupError:
                    pass
                proc.wait()
                assert attempt < 2, log_path.read_text()[-3000:]
            procs.append(proc)
        out = tmp_path / "shared"
        run = subprocess.run(["ip", "netns", "exec", three_hosts[0], sys.executable, "-c",
                              DRIVER, str(inv_file), str(out)], env=env, capture_output=True,
                             text=True, timeout=400)
        assert "TRAINED" in run.stdout, run.stderr[-4000:]
        plan = json.loads((out / "plan.json").read_text())
        assert plan["label_selector"] == [{"sekisho/node": "w1"}, {"sekisho/node": "w2"}]
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
        assert [r["ip"] for r in ranks] == [f"{SUBNET}.11", f"{SUBNET}.12"]  # as planned
        assert all(r["sum"] == 3.0 and r["gloo_ifname"] == "eth0" and r["auth"] == "token"
                   for r in ranks)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
