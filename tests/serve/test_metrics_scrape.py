"""A real Prometheus (Debian's package) on the scrape config `cluster up`
renders, against the demo's running app: every engine replica is its own
target (its own port, labelled with its Serve replica id) that publishes the
gateway's and vLLM's metrics of that replica, and every query of the shipped
Grafana dashboard returns series.

Prometheus runs in the suite's loopback-only namespace, its web API on a
loopback port; the config has no remote write (Prometheus has no telemetry).
Under CI a missing prometheus fails the test (.ci/run installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml

from cluster import Inventory
from cluster.scrape_config import scrape_key_file, targets_dir, write_scrape_config

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "configs" / "grafana" / "sekisho.json"
DEADLINE_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prometheus() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus (Debian package) is not installed; .ci/run installs it")
        pytest.skip("prometheus (Debian package prometheus) is not installed")
    return found


def _wait(what: str, probe, deadline_s: float = DEADLINE_S):
    """probe() until it returns something truthy; fail naming `what` after the deadline."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"{what} within {deadline_s}s (last: {last!r})")


@pytest.fixture(scope="module")
def prom(main_job, sekisho_home, tmp_path_factory):
    from serve.gateway import KeyStore
    from serve.gateway.db import default_url

    binary = _prometheus()
    work = tmp_path_factory.mktemp("prometheus")
    # The admin key the rendered config sends to replicas on other hosts.
    key_file = scrape_key_file(sekisho_home)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(KeyStore(default_url()).create(f"prometheus-{time.time_ns()}", ["*"], admin=True))
    key_file.chmod(0o600)
    inventory = Inventory.from_yaml(REPO / "configs" / "cluster" / "reference.yaml")
    config = write_scrape_config(inventory, sekisho_home, out=work / "prometheus.yml", interval_s=1)
    port = _free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        _wait("prometheus answering", lambda: _get(f"{api}/status/buildinfo") or proc.poll() is not None)
        assert proc.poll() is None, (work / "prometheus.log").read_text()[-3000:]
        yield SimpleNamespace(api=api, config=yaml.safe_load(config.read_text()), home=sekisho_home)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _get(url: str, **params):
    try:
        r = httpx.get(url, params=params, timeout=5)
    except httpx.HTTPError:
        return None
    return r.json()["data"] if r.status_code == 200 else None


def _replica_ids() -> set[str]:
    from ray import serve

    handle = serve.get_deployment_handle("engine-tiny-base", "demo")
    return {handle.load_report.remote().result()["replica"] for _ in range(4)}


def test_each_replica_is_its_own_target_with_gateway_and_engine_metrics(prom, main_job):
    assert "remote_write" not in prom.config and "remote_read" not in prom.config

    def sekisho_targets():
        data = _get(f"{prom.api}/targets", state="active")
        up = [t for t in (data or {}).get("activeTargets", []) if t["labels"]["job"] == "sekisho"]
        return up if up and all(t["health"] == "up" for t in up) else None

    targets = _wait("the demo's replicas scraped", sekisho_targets)
    replicas = _replica_ids()
    demo = [t for t in targets if t["labels"]["app"] == "demo"]
    assert {t["labels"]["replica"] for t in demo} == replicas, demo
    public = main_job.base_url.split("//")[1].split("/")[0]
    instances = [t["labels"]["instance"] for t in demo]
    assert len(set(instances)) == len(demo) and public not in instances  # a port of its own each
    for t in demo:
        assert t["labels"]["model"] == "tiny-base" and t["labels"]["deployment"] == "engine-tiny-base"
        # the target file of that replica, in the folder the rendered config reads
        entry = json.loads((targets_dir(prom.home) / f"demo--{t['labels']['replica']}.json").read_text())
        assert entry[0]["targets"] == [t["labels"]["instance"]]
        own = httpx.get(t["scrapeUrl"], timeout=10).text
        assert "sekisho_requests_total" in own and "vllm:num_requests_running" in own


def _query(prom, expr: str) -> list:
    data = _get(f"{prom.api}/query", query=expr)
    return data["result"] if data else []


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            queries.append((f"variable {v['name']}", v["query"]["query"]))
    return queries


def _as_promql(expr: str) -> str:
    """A Grafana query as Prometheus runs it with every replica selected."""
    if expr.startswith("label_values("):  # Grafana's variable query: the series it reads
        expr = re.match(r"label_values\((.*),\s*\w+\)$", expr).group(1)
    return expr.replace("$__rate_interval", "30s").replace('"$app"', '".+"').replace('"$replica"', '".+"')


def test_every_dashboard_query_returns_series(prom, main_job):
    url, auth = main_job.base_url, {"Authorization": f"Bearer {main_job.api_key}"}
    _wait("the replicas scraped once", lambda: _query(prom, 'up{job="sekisho"} == 1'))
    body = {"model": "tiny-base", "messages": [{"role": "user", "content": "こんにちは"}], "max_tokens": 4}
    assert httpx.post(f"{url}/chat/completions", json=body, headers=auth, timeout=60).status_code == 200
    with httpx.stream(
        "POST", f"{url}/chat/completions", json={**body, "stream": True}, headers=auth, timeout=60
    ) as r:
        assert r.status_code == 200 and "[DONE]" in r.read().decode()
    bad = httpx.post(f"{url}/chat/completions", json=body, headers={"Authorization": "Bearer no"}, timeout=30)
    assert bad.status_code == 401  # one rejection, by reason

    queries = _panel_queries()
    assert len(queries) >= 12
    end = time.monotonic() + DEADLINE_S
    pending = {f"{title} #{i}": expr for i, (title, expr) in enumerate(queries)}
    while pending and time.monotonic() < end:
        for name, expr in list(pending.items()):
            if _query(prom, _as_promql(expr)):
                del pending[name]
        time.sleep(1)
    missing = {name: _as_promql(expr) for name, expr in pending.items()}
    assert not missing, f"dashboard queries without series: {json.dumps(missing, indent=1)}"
