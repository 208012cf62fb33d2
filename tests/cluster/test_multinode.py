"""Multi-node for real on one machine: a Ray head and two worker hosts, each in
its own network namespace (veth pairs on a bridge, addresses 10.77.0.x), started
with the very commands `ray up` runs (cluster/ray_up.py: the worker command picks
its node by the host's own addresses), token auth on, GPUs declared where none
exist. Needs root (CI runs as root); run it like the rest of the suite, in a
loopback-only namespace (`make test`, or `unshare -n`), from which it makes its own.

1. A 2-worker Ray Train job placed by the planner spans both worker hosts, each
   rank on the node the plan gave it.
2. A fine-tuning job (train.job.run_job, FailureConfig max_failures=1, checkpoints
   on the shared storage) loses a whole worker host mid-run: every process in that
   host's namespace is SIGKILLed, the host is started again with the same command,
   and the job resumes from its last checkpoint and finishes, its ranks again on
   both hosts.
3. A serve replica of pipeline_parallel_size=2, planned on the inventory: one
   placement-group bundle per stage, pinned by label to the node the plan chose
   (stage 0 with the replica on w1, stage 1 on w2, as Ray's placement-group table
   shows), stage 1 a headless vLLM on w2 (vLLM's multi-node mp mode), and the app
   answers a chat request through its gateway on w1 (keys and audit in PostgreSQL:
   an app across nodes on SQLite is refused at config load)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cluster import Inventory
from cluster.egress import LOG_ENV
from cluster.local import ensure_token
from cluster.ray_up import head_start_command, worker_start_command

pytestmark = pytest.mark.e2e

SUBNET = "10.77.0"
WORKER_IPS = {f"{SUBNET}.11", f"{SUBNET}.12"}
CONNECT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from cluster import Inventory
    from cluster.connect import connect, target

    inventory = Inventory.from_yaml(sys.argv[1])
    out = Path(sys.argv[2])
    connect(target(inventory, None, None, out))
""")
DRIVER = CONNECT + textwrap.dedent("""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from cluster import GpuRequests, plan_placement

    requests = GpuRequests.model_validate({"requests": [{
        "name": "tiny-train", "kind": "train", "params_billions": 0.001, "data_parallel": 2}]})
    plan = plan_placement(inventory, requests.requests)
    kwargs = plan.scaling_config_kwargs("tiny-train")
    (out / "plan.json").write_text(json.dumps(kwargs))

    def loop(config):
        import json, os, sys
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
            "auth": os.environ.get("RAY_AUTH_MODE"),
            "hook": getattr(sys.modules.get("sitecustomize"), "SEKISHO_EGRESS_HOOK", False)}))

    trainer = TorchTrainer(loop, train_loop_config={"out": str(out)},
                           torch_config=TorchConfig(backend="gloo"),  # no real GPU here
                           scaling_config=ScalingConfig(**kwargs),
                           run_config=RunConfig(name="span", storage_path=str(out / "runs")))
    trainer.fit()
    print("TRAINED")
""")
# run_job as `sekisho train run` calls it; then Ray's own record of where each of
# the job's Ray Train workers ran (the node, and whether that node is still alive).
JOB_DRIVER = CONNECT + textwrap.dedent("""
    import ray
    from ray.util.state import list_actors
    from train import LoraJobConfig
    from train.job import run_job

    result = run_job(LoraJobConfig.model_validate_json(sys.argv[3]))
    nodes = {n["NodeID"]: {"ip": n["NodeManagerAddress"], "alive": n["Alive"]} for n in ray.nodes()}
    job_id = ray.get_runtime_context().get_job_id()
    workers = [{"node_id": a.node_id, **nodes[a.node_id]}
               for a in list_actors(address=ray.get_runtime_context().gcs_address,  # not another local cluster
                                    filters=[("class_name", "=", "RayTrainWorker")], limit=1000,
                                    raise_on_missing_output=False) if a.job_id == job_id]
    (out / "job.json").write_text(json.dumps({"run_id": result.run_id, "version": result.version,
                                              "workers": workers}))
    print("JOB DONE")
""")


# A serve app of one tiny model in two pipeline stages, planned on the inventory
# (sekisho serve up --inventory), then where Ray put everything and a chat answer.
SERVE_DRIVER = CONNECT + textwrap.dedent("""
    import uuid
    import httpx, ray
    from ray import serve
    from ray.util import placement_group_table
    from ray.util.state import list_actors
    from sekisho.gpu_plan import check_against_running_cluster, plan_serve_app
    from serve import ServeAppConfig, deploy, resolve_app
    from foundation import UserError
    from serve.gateway import KeyStore

    cfg = ServeAppConfig.model_validate_json(sys.argv[3])
    # The same model in one stage on SQLite: refused on this cluster of three nodes.
    one_stage = cfg.models[0].model_copy(
        update={"engine": cfg.models[0].engine.model_copy(update={"pipeline_parallel_size": 1})})
    on_sqlite = cfg.model_copy(update={
        "name": "on-sqlite", "models": [one_stage], "gateway": cfg.gateway.model_copy(update={"db_url": None})})
    try:
        deploy(resolve_app(on_sqlite, out / "serve-cache"))
        refused = None
    except UserError as exc:
        refused = str(exc)
    app = resolve_app(cfg, out / "serve-cache")
    plan = plan_serve_app(app, sys.argv[1])
    check_against_running_cluster(cfg, [n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]])
    deploy(app)
    ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    pgs = [{"bundles": t["bundles"], "strategy": t["strategy"],
            "nodes": [ips[t["bundles_to_node_id"][i]] for i in sorted(t["bundles_to_node_id"])],
            "name": t["name"]}
           for t in placement_group_table().values() if t["state"] == "CREATED"]
    actors = [{"class": a.class_name, "ip": ips[a.node_id]}
              for a in list_actors(address=ray.get_runtime_context().gcs_address, limit=1000,
                                   filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
              if a.class_name == "PipelineStage" or a.class_name.startswith("ServeReplica:pp:engine-")]
    (stage0,) = {p["nodes"][0] for p in pgs}
    # The session's PostgreSQL outlives this cluster: a key name of this run only.
    key = KeyStore(cfg.gateway.db_url).create(f"pp-test-{uuid.uuid4().hex[:8]}", ["*"])
    r = httpx.post(f"http://{stage0}:{cfg.port}/v1/chat/completions", timeout=120,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"model": "tiny", "max_tokens": 8, "temperature": 0,
                         "messages": [{"role": "user", "content": "hello"}]})
    (out / "serve.json").write_text(json.dumps({
        "stage_nodes": app.stage_nodes, "pgs": pgs, "actors": actors, "status": r.status_code,
        "answer": r.json(), "sqlite_refused": refused, "apps": sorted(serve.status().applications)}))
    print("SERVED")
""")


def ip(*args: str, ns: str | None = None) -> None:
    subprocess.run(["ip", *(["-n", ns] if ns else []), *args], check=True, capture_output=True)


def netns_pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()]


@pytest.fixture(scope="module")
def three_hosts():
    """Namespaces head, w1, w2 on a bridge; yields their names."""
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
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def inventory_file(root: Path, sekisho_home: Path) -> Path:
    # The head offers 1 CPU and each worker host 2: a training rank that asks for 2
    # CPUs fits on a worker host only, one rank per host. The hosts share this
    # machine's disk: the "shared storage" is the folder holding the session's
    # Sekisho home, which the rendered commands make every host's SEKISHO_HOME.
    def node(name, i, role, gpus, cpus):
        return {
            "name": name,
            "address": f"{SUBNET}.{10 + i}",
            "role": role,
            "gpus": gpus,
            "gpu_memory_gib": 80,
            "cpus": cpus,
            "nccl_socket_ifname": "eth0",
        }

    doc = {
        "name": "sekisho-netns",
        "shared_storage": {
            "path": os.path.commonpath([root, sekisho_home]),
            "home": os.path.relpath(sekisho_home, os.path.commonpath([root, sekisho_home])),
        },
        "ray": {"auth_token_file": str(root / "launcher" / "auth_token"), "python_env": sys.prefix},
        "nodes": [
            node("head", 0, "head", 0, 1),
            node("w1", 1, "worker", 1, 2),
            node("w2", 2, "worker", 1, 2),
        ],
    }
    (root / "shared").mkdir()
    path = root / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Hosts:
    """The three hosts' Ray nodes, started with the rendered `ray up` commands."""

    def __init__(self, namespaces: list[str], root: Path, sekisho_home: Path):
        self.root, self.head = root, namespaces[0]
        self.inv_file = inventory_file(root, sekisho_home)
        self.inventory = Inventory.from_yaml(self.inv_file)
        ensure_token(self.inventory.ray.auth_token_file)
        home = root / "node-home"  # what `ray up` leaves on each host: the token, 0600
        (home / ".sekisho" / "ray").mkdir(parents=True)
        shutil.copy(self.inventory.ray.auth_token_file, home / ".sekisho" / "ray" / "auth_token")
        os.chmod(home / ".sekisho" / "ray" / "auth_token", 0o600)
        # Not the session's egress log (main_job records to it; these hosts talk over
        # 10.77.0.x, which the recorder would count) nor the session's own cluster.
        inherited = {k: v for k, v in os.environ.items() if k not in (LOG_ENV, "RAY_ADDRESS")}
        self.env = {
            **inherited,
            "HOME": str(home),
            "RAY_HEAD_IP": self.inventory.head.address,
            "SEKISHO_HOME": str(sekisho_home),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            # The GCS declares a node dead after 3 failed checks 1 s apart
            # (Ray's defaults: 5, 3 s apart), so a lost host shows in seconds.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.temp_dir = Path(tempfile.mkdtemp(prefix="skn", dir="/tmp"))
        head_cmd = head_start_command(self.inventory).replace(
            "--autoscaling-config=~/ray_bootstrap_config.yaml", ""
        )
        self.commands = dict(
            zip(
                namespaces,
                [head_cmd, worker_start_command(self.inventory), worker_start_command(self.inventory)],
            )
        )
        self.procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, ns: str) -> subprocess.Popen:
        command = self.commands[ns]
        with (self.root / f"{ns}.log").open("a") as log:
            return subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "bash",
                    "-c",
                    command.replace(" ;;", f" --temp-dir={self.temp_dir} --block ;;")
                    if "case" in command
                    else f"{command} --temp-dir={self.temp_dir} --block",
                ],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def start(self, ns: str) -> None:
        """Start the host's node and wait until `ray start` says it is up.

        `ray start` gives a node 30 s (fixed in Ray) to register; on a loaded 2-core
        machine that can pass. A host that gave up is started again, as an operator
        would; a host that never comes up fails the test."""
        log_path = self.root / f"{ns}.log"
        for attempt in range(3):
            seen = log_path.read_text().count("block forever") if log_path.exists() else 0
            proc = self._spawn(ns)
            deadline = time.monotonic() + 150
            while proc.poll() is None and time.monotonic() < deadline:
                if log_path.read_text().count("block forever") > seen:
                    self.procs[ns] = proc
                    return
                time.sleep(0.2)
            self.kill(ns, proc)
            assert attempt < 2, log_path.read_text()[-3000:]

    def kill(self, ns: str, proc: subprocess.Popen | None = None) -> None:
        """SIGKILL every process of the host (its raylet, object store, workers), as
        a power cut would, and wait until none is left."""
        proc = proc or self.procs.pop(ns, None)
        deadline = time.monotonic() + 60
        while pids := netns_pids(ns):
            assert time.monotonic() < deadline, f"processes of {ns} survive SIGKILL: {pids}"
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        if proc is not None:
            proc.wait()

    def stop(self) -> None:
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for ns, p in self.procs.items():
            try:
                p.wait(timeout=10)  # a test cluster: nothing to save past that
            except subprocess.TimeoutExpired:
                self.kill(ns, p)
        for ns in self.commands:  # whatever outlived its host's `ray start`
            if netns_pids(ns):
                self.kill(ns)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(three_hosts, tmp_path_factory, sekisho_home):
    hosts = Hosts(three_hosts, tmp_path_factory.mktemp("netns-cluster"), sekisho_home)
    try:
        for ns in three_hosts:
            hosts.start(ns)
        yield hosts
    finally:
        hosts.stop()


def test_train_job_spans_both_worker_hosts_as_planned(cluster):
    out = cluster.root / "shared"
    run = subprocess.run(
        ["ip", "netns", "exec", cluster.head, sys.executable, "-c", DRIVER, str(cluster.inv_file), str(out)],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert "TRAINED" in run.stdout, run.stderr[-4000:]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["label_selector"] == [{"sekisho/node": "w1"}, {"sekisho/node": "w2"}]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["ip"] for r in ranks] == [f"{SUBNET}.11", f"{SUBNET}.12"]  # as planned
    assert all(r["sum"] == 3.0 and r["gloo_ifname"] == "eth0" and r["auth"] == "token" for r in ranks)
    assert all(r["hook"] for r in ranks)  # the rendered PYTHONPATH reached the workers


def latest_checkpoint_step(job_dir: Path) -> int:
    """The step of the latest checkpoint Ray Train's controller has registered."""
    for snapshot in job_dir.glob("ray/*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except json.JSONDecodeError:  # being rewritten
            return 0
        return latest.get("metrics", {}).get("step", 0)
    return 0


def test_a_killed_worker_host_comes_back_and_the_job_resumes(cluster, sekisho_home, tiny_model_dir):
    from mlflow import MlflowClient

    from airlock import import_model
    from experiments import set_alias, use_store
    from train import LoraJobConfig
    from train.fault_injection import ENV

    name = "netns-resume"
    set_alias("netns-base", "production", import_model(tiny_model_dir, "netns-base").version)
    data = cluster.root / "data.yaml"
    data.write_text(
        "name: d\npath: samples:internal_faq_ja.jsonl\nformat: chat\nsplit:\n  eval_fraction: 0.2\n"
    )
    cfg = LoraJobConfig(
        name=name,
        base_model="netns-base@production",
        dataset=str(data),
        register_as="netns-adapter",
        seed=3,
        log_every=5,
        checkpoint_every=5,
        max_failures=1,
        optim={"steps": 20, "batch_size": 4, "warmup_steps": 2},
        scaling={"num_workers": 2, "cpus_per_worker": 2},
    )
    hooks = cluster.root / "hooks"
    hooks.mkdir()
    (hooks / f"pause-{name}").write_text("7")  # rank 0 holds at step 7, after the step-5 checkpoint
    out, head = cluster.root / "shared", cluster.head
    log_path = cluster.root / "job-driver.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        driver = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                head,
                sys.executable,
                "-c",
                JOB_DRIVER,
                str(cluster.inv_file),
                str(out),
                cfg.model_dump_json(),
            ],
            env={**cluster.env, ENV: str(hooks)},
            stdout=log,
            stderr=log,
        )
    try:
        pid_file, job_dir = hooks / f"pid-{name}", sekisho_home / "jobs" / name
        deadline = time.monotonic() + 400
        while not (pid_file.is_file() and latest_checkpoint_step(job_dir) >= 5):
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "no rank reached step 7 after a checkpoint"
            time.sleep(0.2)
        victim = subprocess.run(
            ["ip", "netns", "identify", pid_file.read_text()], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert victim in cluster.commands and victim != head, victim
        killed_at = time.monotonic()
        cluster.kill(victim)
        cluster.start(victim)  # the same rendered command, again
        restarted_at = time.monotonic()
        driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0 and (out / "job.json").is_file(), log_path.read_text()[-4000:]
    job = json.loads((out / "job.json").read_text())

    # Resumed from the step-5 checkpoint: steps 6-7 ran again, in attempt 2.
    trace = [json.loads(line) for line in (hooks / f"trace-{name}-rank0.jsonl").read_text().splitlines()]
    assert [(t["attempt"], t["step"]) for t in trace] == [(1, s) for s in range(1, 8)] + [
        (2, s) for s in range(6, 21)
    ]
    use_store()
    client = MlflowClient()
    assert client.get_run(job["run_id"]).info.status == "FINISHED" and job["version"]
    assert sorted({m.step for m in client.get_metric_history(job["run_id"], "loss")}) == [5, 10, 15, 20]
    attempts = {m.step: m.value for m in client.get_metric_history(job["run_id"], "attempt")}
    assert attempts == {5: 1, 10: 2, 15: 2, 20: 2}

    # Ray's record of the job's workers: attempt 1 had a rank on each host, the one
    # on the lost host died with its node; attempt 2 (a rank needs a whole worker
    # host) ran on the survivor again and on the restarted host's new node.
    lost = f"{SUBNET}.{10 + list(cluster.commands).index(victim)}"
    (survivor,) = WORKER_IPS - {lost}
    on_dead = [w["ip"] for w in job["workers"] if not w["alive"]]
    on_alive = Counter(w["ip"] for w in job["workers"] if w["alive"])
    assert on_dead == [lost] and on_alive == {survivor: 2, lost: 1}, job["workers"]

    # `sekisho cluster status` from the head: the lost node is listed dead, the
    # restarted host alive as a new node under the same name.
    status = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            head,
            str(Path(sys.executable).parent / "sekisho"),
            "cluster",
            "status",
            str(cluster.inv_file),
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert status.returncode == 0, status.stderr[-3000:]
    assert "3/4 nodes alive" in status.stdout, status.stdout
    rows = [re.split("[│|]", line) for line in status.stdout.splitlines() if f"{lost} " in line]
    assert sorted(r[3].strip() for r in rows) == ["NO", "yes"], status.stdout
    print(status.stdout)
    print(
        f"\nlost host {victim}: job {time.monotonic() - started:.0f} s wall; host killed and "
        f"started again in {restarted_at - killed_at:.1f} s; 20 steps, 2 resumed"
    )


def test_a_two_stage_replica_spans_both_worker_hosts_and_answers(cluster, tiny_model_dir, postgres_url):
    out = cluster.root / "shared"
    app = {
        "name": "pp",
        # Its engines span two hosts: SQLite is refused, their gateways share PostgreSQL
        # (on a Unix socket, which every host's namespace reaches).
        "gateway": {"db_url": postgres_url},
        "host": "0.0.0.0",  # the client is on the head host
        "port": 18777,
        "models": [
            {
                "name": "tiny",
                "source": str(tiny_model_dir),
                "engine": {
                    "max_model_len": 256,
                    "max_num_seqs": 4,
                    "dtype": "float32",
                    "pipeline_parallel_size": 2,
                    "tool_call_parser": None,
                },
                "cpus_per_replica": 1,
            }
        ],
    }
    log_path = cluster.root / "serve-driver.log"
    with log_path.open("w") as log:
        run = subprocess.run(
            ["ip", "netns", "exec", cluster.head, sys.executable, "-c", SERVE_DRIVER]
            + [str(cluster.inv_file), str(out), json.dumps(app)],
            env=cluster.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    assert run.returncode == 0 and (out / "serve.json").is_file(), log_path.read_text()[-6000:]
    got = json.loads((out / "serve.json").read_text())
    w1, w2 = f"{SUBNET}.11", f"{SUBNET}.12"
    # The plan: stage 0 on w1, stage 1 on w2; the replica's placement group as deployed.
    assert got["stage_nodes"] == {"tiny": [["w1"], ["w2"]]}
    (pg,) = got["pgs"]
    assert pg["strategy"] == "PACK" and pg["nodes"] == [w1, w2]
    assert [{k: v for k, v in b.items() if k in ("CPU", "GPU")} for b in pg["bundles"].values()] == [
        {"CPU": 1.0, "GPU": 1.0}
    ] * 2
    # The replica (stage 0) on w1, the headless stage 1 on w2.
    assert sorted((a["class"], a["ip"]) for a in got["actors"]) == sorted(
        [("ServeReplica:pp:engine-tiny", w1), ("PipelineStage", w2)]
    ), got["actors"]
    assert got["status"] == 200, got["answer"]
    assert (
        got["answer"]["choices"][0]["message"]["content"] and got["answer"]["usage"]["completion_tokens"] > 0
    )
    assert "-pp2-" in got["answer"]["system_fingerprint"]  # vLLM says: two pipeline stages
    # On SQLite the same model, one stage, was refused by the running 3-node cluster, before
    # anything was deployed.
    refused = got["sqlite_refused"] or ""
    assert "app on-sqlite: the Ray cluster has 3 nodes" in refused and "PostgreSQL is required" in refused
    assert "gateway.db_url is unset" in refused and got["apps"] == ["pp"]
