"""Per-request routing against real engines: one app of the tiny model with two
engine replicas behind one port (each with the gateway inside, SO_REUSEPORT),
deployed once for this module.

Every answer names the replica that answered (X-Sekisho-Replica) and the
process whose gateway took the connection (X-Sekisho-Gateway), so each test
sees where its requests went: a keep-alive client's concurrent requests are
spread over both replicas by load whatever process its connections reached; a
repeated prompt prefix, and an adapter, go back to the replica that has it; a
new adapter alias is served without a redeploy; a replica that leaves is
routed around with no failed request."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections import Counter
from types import SimpleNamespace

import httpx
import pytest

pytestmark = pytest.mark.e2e
APP, MODEL, ADAPTER = "routed", "tiny-r", "tiny-r-ja"
CATALOG_ALIAS = "routing-catalog"
DOCUMENT = "第七倉庫の記録。" * 30 + "以上の記録をもとに答えてください。"  # a shared context of many blocks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(port: int, replicas: int):
    from serve import ServeAppConfig

    return ServeAppConfig.model_validate(
        {
            "name": APP,
            "port": port,
            "follow_aliases_every_s": 1,
            "models": [
                {
                    "name": MODEL,
                    "source": "registry:sekisho-tiny-base@production",
                    "adapters": [{"name": ADAPTER, "source": "registry:demo-ja-adapter@production"}],
                    "adapter_alias": CATALOG_ALIAS,
                    # Eager engines: no compile warm-up on 2 busy cores.
                    "engine": {
                        "max_model_len": 512,
                        "max_num_seqs": 8,
                        "dtype": "float32",
                        "enforce_eager": True,
                    },
                    "num_replicas": replicas,
                    "cpus_per_replica": 0.5,
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def routed(main_job, sekisho_home, tmp_path_factory):
    """The app, deployed as an operator does: `sekisho serve up APP.yaml --address`
    to the session's running cluster (its output kept for the phase test)."""
    import contextlib
    import io

    import ray
    import yaml
    from ray import serve

    from sekisho.cli import main
    from serve.gateway import KeyStore

    port = _free_port()
    config = tmp_path_factory.mktemp("routed") / f"{APP}.yaml"
    config.write_text(yaml.safe_dump(_config(port, 2).model_dump(exclude_unset=True), allow_unicode=True))
    out = io.StringIO()
    address = ray.get_runtime_context().gcs_address
    with contextlib.redirect_stdout(out):
        code = main(["--home", str(sekisho_home), "serve", "up", str(config), "--address", address])
    printed = out.getvalue()
    assert code == 0, printed
    base_url = printed.rsplit("serving at ", 1)[1].split()[0]
    key = KeyStore().create(f"routed-{time.time_ns()}", ["*"])
    yield SimpleNamespace(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, port=port, serve_up_output=printed
    )
    serve.delete(APP)


def test_serve_up_shows_each_engine_replicas_log_and_phases(routed):
    """`serve up` names each replica's engine log and follows its start to ready."""
    from serve.vllm_process import PHASES

    lines = routed.serve_up_output.splitlines()
    logs = [line for line in lines if line.startswith(f"  {MODEL} [replica ") and ": log " in line]
    assert len(logs) == 2, routed.serve_up_output  # one per replica
    for log_line in logs:
        who, path = log_line.split(": log ")
        assert path.endswith(".log") and f"/logs/serve/{APP}/" in path
        phases = [line.split(": ", 1)[1] for line in lines if line.startswith(who + ": ")][1:]
        # Polled once a second, so a short phase may pass unseen; what is seen is in order.
        order = [PHASES.index(p) for p in phases]
        assert order == sorted(set(order)) and len(phases) >= 2, routed.serve_up_output
        assert phases[-1] == "ready", routed.serve_up_output
    assert lines[0] == f"  {MODEL}: placing" and f"{APP}: serving at " in lines[-1]


def _ask(
    client: httpx.Client, routed, content: str, model: str = MODEL, max_tokens: int = 4
) -> tuple[str, str]:
    """(gateway, replica) that took and answered one chat request."""
    r = client.post(
        routed.base_url + "/chat/completions",
        headers=routed.headers,
        json={
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )
    assert r.status_code == 200, r.text
    return r.headers["x-sekisho-gateway"], r.headers["x-sekisho-replica"]


def _fresh(routed, content: str, model: str = MODEL) -> str:
    """The replica that answers `content` sent over a new connection."""
    with httpx.Client(timeout=120) as c:
        return _ask(c, routed, content, model)[1]


def _published(predicate, within_s: float = 30) -> None:
    """Wait until every gateway has the others' routing state that `predicate` looks for."""
    from serve.gateway import routing

    deadline = time.monotonic() + within_s
    while not predicate([e for entries in routing.read_table(APP).values() for e in entries]):
        assert time.monotonic() < deadline, "the routing state was not published"
        time.sleep(0.2)
    time.sleep(2.5)  # engine -> Ray's KV -> every engine's route file -> its gateway (1 s each)


def test_a_pinned_keep_alive_clients_requests_spread_over_both_replicas(routed):
    landed: list[tuple[str, str]] = []
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    with httpx.Client(timeout=120, limits=limits) as c, concurrent.futures.ThreadPoolExecutor(4) as pool:
        for burst in range(4):
            asks = [
                pool.submit(_ask, c, routed, f"質問{burst}-{i}: 倉庫は何番ですか。", MODEL, 24)
                for i in range(4)
            ]
            landed += [f.result() for f in asks]
    by_gateway: dict[str, Counter] = {}
    for gateway, replica in landed:
        by_gateway.setdefault(gateway, Counter())[replica] += 1
    replicas = Counter(replica for _, replica in landed)
    print(f"gateway -> replicas: { {g: dict(c) for g, c in by_gateway.items()} }")
    assert len(replicas) == 2 and min(replicas.values()) >= 4, replicas
    # Whichever process a connection reached, its gateway sent requests to both replicas.
    busiest = max(by_gateway.values(), key=lambda c: sum(c.values()))
    assert len(busiest) == 2, by_gateway


def test_a_repeated_prefix_goes_back_to_the_replica_that_served_it(routed):
    from serve.gateway.prefix_index import block_hashes, prompt_text, unpack_blocks

    question = DOCUMENT + "最初の質問です。"
    first = _fresh(routed, question)
    last = block_hashes(MODEL, prompt_text({"messages": [{"role": "user", "content": question}]}))[-1]
    _published(
        lambda es: any(
            last in unpack_blocks(p) for e in es for p in (e.get("state") or {}).get("prefix", {}).values()
        )
    )
    went = Counter(_fresh(routed, DOCUMENT + f"質問その{i}。") for i in range(6))
    assert went == Counter({first: 6}), (first, went)


def test_each_replica_publishes_its_kv_cache_size_as_its_engine_reports_it(routed, sekisho_home):
    """What bounds the prefixes the gateways take a replica to hold (serve.gateway.router)."""
    import re

    from serve.gateway import routing

    entries = [e for es in routing.read_table(APP).values() for e in es]
    logs = (sekisho_home / "logs" / "serve" / APP).glob(f"{MODEL}--*.log")
    reported = {
        int(m.group(1).replace(",", ""))
        for log in logs
        if (m := re.search(r"KV cache size: ([\d,]+) tokens", log.read_text(errors="replace")))
    }
    assert len(entries) == 2 and len(reported) == 1, (entries, reported)
    assert {e.get("cache_tokens") for e in entries} == reported

    # ... and `serve status` shows it with each replica's routing state.
    import contextlib
    import io

    import ray

    from sekisho.cli import main

    out = io.StringIO()
    address = ray.get_runtime_context().gcs_address
    with contextlib.redirect_stdout(out):
        assert main(["--home", str(sekisho_home), "serve", "status", "--address", address]) == 0
    (size,) = reported
    shown = [line.split() for line in out.getvalue().splitlines() if line.strip().startswith("replica ")]
    replicas = [line for line in shown if line[line.index("KV") + 2] == f"{size:,}"]
    assert len(replicas) >= 2 and all("hits" in line for line in replicas), out.getvalue()


def test_an_adapter_request_goes_to_a_replica_holding_it(routed):
    holder = _fresh(routed, "アダプターの最初の質問。", ADAPTER)
    _published(
        lambda es: any(
            ADAPTER in names for e in es for names in (e.get("state") or {}).get("adapters", {}).values()
        )
    )
    went = Counter(_fresh(routed, f"{i}番目の別の質問ですか。", ADAPTER) for i in range(6))
    assert went == Counter({holder: 6}), (holder, went)


def test_a_newly_aliased_adapter_is_served_without_a_redeploy(routed):
    from ray import serve

    from airlock import load, register_trained
    from experiments import get_version, set_alias

    demo = load(f"demo-ja-adapter/{get_version('demo-ja-adapter@production').version}")
    name = f"routing-new-{time.time_ns()}"
    base = load(f"sekisho-tiny-base/{get_version('sekisho-tiny-base@production').version}")
    stored = register_trained(name, demo.path, kind="adapter", tags={"base_model_version": base.ref})
    replicas_before = dict(serve.status().applications[APP].deployments[f"engine-{MODEL}"].replica_states)
    aliased = time.monotonic()
    set_alias(name, CATALOG_ALIAS, stored.version)
    deadline = aliased + 60
    with httpx.Client(timeout=60) as c:
        while True:
            r = c.post(
                routed.base_url + "/chat/completions",
                headers=routed.headers,
                json={"model": name, "messages": [{"role": "user", "content": "合言葉は?"}], "max_tokens": 4},
            )
            if r.status_code == 200:
                break
            assert r.status_code == 404 and time.monotonic() < deadline, r.text
            time.sleep(0.25)
        served_s = time.monotonic() - aliased
        listed = {m["id"] for m in c.get(routed.base_url + "/models", headers=routed.headers).json()["data"]}
    print(f"new adapter alias served after {served_s:.1f}s")
    assert r.json()["model"] == name and name in listed
    assert (
        dict(serve.status().applications[APP].deployments[f"engine-{MODEL}"].replica_states)
        == replicas_before
    )


def test_a_replica_that_leaves_is_routed_around_with_no_failed_request(routed):
    """One replica leaves as Serve makes it leave on a scale-down (VLLMEngine.shutdown:
    withdraw from the route table, drain its gateway, finish what it has, stop vLLM),
    while clients keep asking over fresh and kept-alive connections."""
    from ray import serve

    errors: list[str] = []
    answered: list[tuple[float, str]] = []
    stop = threading.Event()

    def keep_asking(fresh: bool) -> None:
        client = httpx.Client(timeout=120)
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if fresh:
                    client.close()
                    client = httpx.Client(timeout=120)
                answered.append(
                    (time.monotonic(), _ask(client, routed, f"{i}番目の質問 ({fresh}): 倉庫は?")[1])
                )
            except Exception as exc:  # any failure while the replica leaves is a defect
                errors.append(repr(exc))
        client.close()

    askers = [threading.Thread(target=keep_asking, args=(fresh,)) for fresh in (True, False, False)]
    for t in askers:
        t.start()
    try:
        time.sleep(2)
        handle = serve.get_deployment_handle(f"engine-{MODEL}", app_name=APP)
        # `shutdown` is also a handle method: name the replica method explicitly.
        handle.options(method_name="shutdown").remote().result(timeout_s=180)  # once its vLLM has stopped
        left = time.monotonic()
        time.sleep(3)
    finally:
        stop.set()
        for t in askers:
            t.join(120)
    assert errors == []
    after = {replica for at, replica in answered if at > left}
    before = {replica for at, replica in answered if at <= left}
    assert len(before) == 2 and len(after) == 1, (before, after)
    # It drained (its clients moved to the other replica's listener on this node).
    from serve.vllm_process import engine_logs_dir

    logs = "".join(log.read_text() for log in engine_logs_dir(APP).glob("*.log"))
    assert "gateway draining for 5.0s" in logs and "gateway draining for 0.0s" not in logs
    print(f"{len(answered)} requests while a replica left, 0 failed")
