"""`sekisho cluster status` against a real Ray head (token auth on): nodes with
GPUs used/total, a Serve app's replicas, a running job; and the Jobs API
refuses a request without the token."""

import json
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.e2e

DEPLOY = textwrap.dedent("""
    import sys
    from pathlib import Path
    from cluster import Inventory
    from cluster.connect import connect, target
    connect(target(Inventory.from_yaml(sys.argv[1]), None, None, Path(sys.argv[2])))
    from ray import serve

    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.1, "num_gpus": 1})
    class Echo:
        def __call__(self, request):
            return "ok"

    serve.start(proxy_location="Disabled")
    serve.run(Echo.bind(), name="echo", route_prefix=None)
""")


def _jobs(head, method="GET", body=None, token=True):
    req = urllib.request.Request(
        f"http://{head.dashboard}/api/jobs/",
        method=method,
        data=json.dumps(body).encode() if body else None,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {head.token}"} if token else {}),
        },
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_the_jobs_api_refuses_a_request_without_the_token(ray_head):
    with pytest.raises(urllib.error.HTTPError) as refused:
        _jobs(ray_head, "POST", {"entrypoint": "echo pwned"}, token=False)
    assert refused.value.code == 401
    assert isinstance(_jobs(ray_head), list)  # with the token: answered


def test_status_shows_nodes_gpus_serve_replicas_and_running_jobs(ray_head, sekisho):
    import subprocess

    deploy = subprocess.run(
        [sys.executable, "-c", DEPLOY, str(ray_head.inventory_file), str(ray_head.home)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    job = _jobs(ray_head, "POST", {"entrypoint": "sleep 600", "submission_id": "sleeper-1"})
    assert job["submission_id"] == "sleeper-1"
    deadline = time.monotonic() + 60
    while next(j for j in _jobs(ray_head) if j["submission_id"] == "sleeper-1")["status"] != "RUNNING":
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.5)

    r = sekisho(ray_head, "cluster", "status", str(ray_head.inventory_file))
    assert r.returncode == 0, r.stderr[-3000:]
    print(r.stdout)
    lines = r.stdout.splitlines()
    node = next(line for line in lines if "test-head (head)" in line)
    assert "127.0.0.1" in node and "yes" in node and "2/2" in node and "/4" in node
    assert "1/1 nodes alive" in r.stdout
    echo = next(line for line in lines if "Echo" in line)
    assert "echo" in echo and "RUNNING" in echo and "2 RUNNING" in echo
    sleeper = next(line for line in lines if "sleeper-1" in line)
    assert "submission" in sleeper and "RUNNING" in sleeper and "sleep 600" in sleeper
    assert "Running jobs: 1" in r.stdout  # not the status command's own driver
    urllib.request.urlopen(
        urllib.request.Request(
            f"http://{ray_head.dashboard}/api/jobs/sleeper-1/stop",
            method="POST",
            headers={"Authorization": f"Bearer {ray_head.token}"},
        ),
        timeout=30,
    ).close()


def test_status_without_the_token_is_a_one_paragraph_error(ray_head, sekisho, tmp_path):
    r = sekisho(
        ray_head,
        "cluster",
        "status",
        "--address",
        ray_head.dashboard,
        "--token-file",
        str(tmp_path / "missing"),
    )
    assert r.returncode == 2 and "no Ray token at" in r.stderr and "Traceback" not in r.stderr
