"""`sekisho train submit / status / stop` against a real Ray cluster started with
`ray start --head` (token auth on, dashboard and Jobs API on 127.0.0.1), as the
head of the reference cluster is.

The demo LoRA config, cut to a few steps, is submitted and followed to SUCCEEDED;
a second, long job is stopped; `status` lists both. The project shipped as the
job's working directory holds `data/` and `train/` packages of its own. The Jobs API refuses a request
without the token (401) or with a wrong one (403): anyone who reaches it could
otherwise run code on the cluster."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def jobs_cluster(sekisho_home, tiny_model_dir, tmp_path_factory):
    """A `ray start --head` cluster whose nodes share the test's Sekisho home;
    yields the Jobs API address."""
    from airlock import import_model
    from cluster.egress import HOOK_DIR
    from cluster.local import ensure_token
    from experiments import set_alias

    set_alias("submit-base", "production", import_model(tiny_model_dir, "submit-base").version)
    token = ensure_token(sekisho_home / "ray" / "auth_token")
    temp = tempfile.mkdtemp(prefix="sekisho-ray-", dir="/tmp")  # short: Ray's socket paths
    port, dash = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "SEKISHO_HOME": str(sekisho_home),
        "PYTHONPATH": str(HOOK_DIR),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path_factory.mktemp("ray-head") / "ray-start.log", "w")
    ports = [
        f"--{flag}={free_port()}"
        for flag in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
            "metrics-export-port",
        )
    ]
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=4",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            *ports,
        ],
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{dash}"
    auth = {"Authorization": f"Bearer {token.read_text().strip()}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, f"ray start --head exited; see {log.name}"
            try:
                if requests.get(f"{url}/api/jobs/", headers=auth, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the Jobs API did not come up in 120 s"
            time.sleep(1)
        yield url
    finally:
        head.send_signal(signal.SIGTERM)  # --block: Ray stops its own processes
        try:
            head.wait(10)  # nothing on it needs a graceful end; the rest is killed below
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of its session is left
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)
        log.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with the demo configs, the LoRA job cut to a few steps, and
    a long variant of it to stop. It also holds the user's own `data` and `train`
    packages, which must not shadow Sekisho's on the cluster."""
    root = tmp_path_factory.mktemp("project")
    for own in ("data", "train"):
        (root / own).mkdir()
        (root / own / "__init__.py").write_text(f"raise ImportError('the user's own {own} package')\n")
    (root / "configs" / "train").mkdir(parents=True)
    shutil.copytree(REPO / "configs" / "data", root / "configs" / "data")
    demo = yaml.safe_load((REPO / "configs" / "train" / "demo_lora.yaml").read_text())
    demo.update(
        name="submit-lora",
        base_model="submit-base@production",
        register_as="submit-adapter",
        log_every=2,
        optim={**demo["optim"], "steps": 6, "warmup_steps": 2},
        scaling={"num_workers": 1, "cpus_per_worker": 1},
    )
    (root / "configs" / "train" / "tiny.yaml").write_text(yaml.safe_dump(demo))
    demo.update(name="submit-long", optim={**demo["optim"], "steps": 100000})
    (root / "configs" / "train" / "long.yaml").write_text(yaml.safe_dump(demo))
    return root


def sekisho(*args, cwd=None, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "sekisho", *args],
        cwd=cwd,
        env=env or os.environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Follower:
    """A CLI process whose output is read as it comes (`train logs` following a job)."""

    def __init__(self, *args: str):
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sekisho", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"no {text!r} within {timeout} s: " + "".join(self.lines)[-3000:])
            time.sleep(0.2)

    def finish(self, timeout: float) -> tuple[int, str]:
        self.proc.wait(timeout)
        self.reader.join(timeout)
        return self.proc.returncode, "".join(self.lines)


def test_submit_follows_to_succeeded_then_status_lists_it_and_stop_stops(jobs_cluster, project):
    r = sekisho("train", "submit", "configs/train/tiny.yaml", "--address", jobs_cluster, cwd=project)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    done = r.stdout.split("submitted ", 1)[1].split()[0]
    assert "registered submit-adapter version" in r.stdout  # the job's own output, streamed
    assert r.stdout.rstrip().endswith(f"{done}: SUCCEEDED")

    r = sekisho(
        "train", "submit", "configs/train/long.yaml", "--no-follow", "--address", jobs_cluster, cwd=project
    )
    assert r.returncode == 0, r.stderr[-3000:]
    long = r.stdout.split("submitted ", 1)[1].split()[0]
    deadline = time.monotonic() + 120
    while "RUNNING" not in (s := sekisho("train", "status", long, "--address", jobs_cluster)).stdout:
        assert time.monotonic() < deadline, s.stdout + s.stderr
        time.sleep(1)
    # `train logs` re-attaches to the running job: its progress lines, then its end.
    follower = Follower("train", "logs", long, "--address", jobs_cluster)
    follower.wait_for("step 2/100000", timeout=180)
    r = sekisho("train", "stop", long, "--address", jobs_cluster)
    assert r.returncode == 0 and r.stdout.strip() == f"{long}: STOPPED", r.stdout + r.stderr
    code, out = follower.finish(timeout=120)
    assert code == 1 and out.rstrip().endswith(f"{long}: STOPPED"), out[-3000:]
    r = sekisho("train", "logs", done, "--address", jobs_cluster)  # a finished job: its whole log
    assert r.returncode == 0 and r.stdout.rstrip().endswith(f"{done}: SUCCEEDED"), r.stdout + r.stderr
    assert "step 6/6" in r.stdout and "registered submit-adapter version" in r.stdout
    r = sekisho("train", "logs", "no-such-job", "--address", jobs_cluster)
    assert r.returncode == 2 and "no job 'no-such-job'" in r.stderr

    r = sekisho("train", "status", "--address", jobs_cluster)
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert rows[done][1] == "SUCCEEDED" and rows[done][-1] == "configs/train/tiny.yaml"
    assert rows[long][1] == "STOPPED" and rows[long][-1] == "configs/train/long.yaml"

    r = sekisho("train", "stop", "no-such-job", "--address", jobs_cluster)
    assert r.returncode == 2 and "no job 'no-such-job'" in r.stderr


def test_jobs_api_refuses_requests_without_the_right_token(jobs_cluster, sekisho_home, tmp_path):
    """Issue 7 wants this too: the Jobs API (remote code execution) is behind Ray's token."""
    assert requests.get(f"{jobs_cluster}/api/jobs/", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + "0" * 64}
    assert requests.get(f"{jobs_cluster}/api/jobs/", headers=wrong, timeout=10).status_code == 403
    assert (
        requests.post(
            f"{jobs_cluster}/api/jobs/", json={"entrypoint": "echo pwned"}, headers=wrong, timeout=10
        ).status_code
        == 403
    )
    right = {"Authorization": "Bearer " + (sekisho_home / "ray" / "auth_token").read_text().strip()}
    assert requests.get(f"{jobs_cluster}/api/jobs/", headers=right, timeout=10).status_code == 200

    bad = tmp_path / "wrong_token"
    bad.write_text("0" * 64)
    r = sekisho(
        "train", "status", "--address", jobs_cluster, env={**os.environ, "RAY_AUTH_TOKEN_PATH": str(bad)}
    )
    assert r.returncode == 2 and "refused this client's token" in r.stderr, r.stderr[-2000:]
    r = sekisho(
        "--home",
        str(tmp_path / "empty-home"),
        "train",
        "status",
        "--address",
        jobs_cluster,
        env={k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")},
    )
    assert r.returncode == 2 and "no Ray token at" in r.stderr, r.stderr[-2000:]
