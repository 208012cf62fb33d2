"""The app `multi`: a chat engine with autoscaling bounds (1-2 replicas) and an
embedding engine behind one port, deployed once for this module.

Autoscaling: the chat engine follows the load its engines report; concurrent
streamed requests through the gateway add a replica, which takes connections on
the app's port at once; when the load stops it goes back to one, draining
first. No request fails meanwhile.

Routing: every engine replica runs the gateway on the app's port (SO_REUSEPORT),
so a request may land in the process that holds its model (answered in-process)
or in the other one (forwarded over HTTP to the right replica). Clients can't
tell: each request on a fresh connection must get the right answer, with one
audit record, whichever process took it."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from serve.gateway import AuditLog

pytestmark = pytest.mark.e2e
ROUNDS = 12  # fresh connections per model: the kernel spreads them over both processes
APP, MODEL = "multi", "tiny-chat"
DEPLOYMENT = f"engine-{MODEL}"
HEAVY_CLIENTS = 3  # with the light one ~4 running requests against a target of 2 per replica: wants 2
MIGRATE = Path("/proc/sys/net/ipv4/tcp_migrate_req")
EMBED = "tiny-embed"
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 2,
    "downscale_delay_s": 10,
    "look_back_s": 5,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def multi_app(main_job, sekisho_home):
    """(base_url, key for both models) of the app `multi`, deleted when this module ends
    (two more engines would slow every later test on a small machine)."""
    from ray import serve

    from serve import ServeAppConfig, deploy, resolve_app
    from serve.gateway import KeyStore

    if MIGRATE.exists() and MIGRATE.read_text().strip() != "1":
        MIGRATE.write_text("1\n")  # queued connections of a leaving replica move to the other (this netns)
    # Eager engines: no compile warm-up, which on 2 busy cores takes over a minute per
    # engine (the scaled-up replica's included); the load is counted in requests, not tokens/s.
    engine = {"max_model_len": 256, "max_num_seqs": 8, "dtype": "float32", "enforce_eager": True}
    cfg = ServeAppConfig.model_validate(
        {
            "name": APP,
            "port": _free_port(),
            "models": [
                {
                    "name": MODEL,
                    "source": "registry:sekisho-tiny-base@production",
                    "engine": engine,
                    "cpus_per_replica": 0.5,
                    "autoscaling": AUTOSCALING,
                },
                {
                    "name": EMBED,
                    "task": "embed",
                    "source": "registry:sekisho-tiny-base@production",
                    "engine": {**engine, "max_num_seqs": 4},
                    "cpus_per_replica": 0.5,
                },
            ],
        }
    )
    base_url = deploy(resolve_app(cfg, sekisho_home / "serve-cache-multi"))
    key = KeyStore().create(f"multi-{time.time_ns()}", [MODEL, EMBED])
    yield base_url, key
    serve.delete(APP)


def _replicas() -> dict:
    from ray import serve

    return dict(serve.status().applications[APP].deployments[DEPLOYMENT].replica_states)


def _wait_for(what: str, cond, within_s: float, errors: list) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < within_s, (
            f"{what} within {within_s}s: replicas {_replicas()}, {len(errors)} errors {errors[:2]}"
        )
        time.sleep(1)
    return time.monotonic() - start


def _status_line(capsys) -> str:
    """This engine's line of `sekisho serve status`."""
    import ray

    from sekisho.cli import main

    capsys.readouterr()
    assert main(["serve", "status", "--address", ray.get_runtime_context().gcs_address]) == 0
    out = capsys.readouterr().out
    print(out)
    return next(line for line in out.splitlines() if DEPLOYMENT in line)


def test_engines_scale_with_their_load_without_a_failed_request(multi_app, capsys):
    from ray import serve

    base_url, key = multi_app
    answered: list[int] = []
    errors: list[str] = []
    heavy, light = threading.Event(), threading.Event()

    def ask_streamed(stop: threading.Event):
        while not stop.is_set():
            try:
                # A new connection per request: the kernel spreads them over every
                # replica listening on the app's port.
                with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300) as c:
                    usage = None
                    for chunk in c.chat.completions.create(
                        model=MODEL,
                        max_tokens=64,
                        temperature=0,
                        stream=True,
                        stream_options={"include_usage": True},
                        extra_body={"ignore_eos": True},
                        messages=[{"role": "user", "content": "倉庫の場所を教えてください"}],
                    ):
                        usage = chunk.usage or usage
                assert usage is not None and usage.completion_tokens == 64, usage
                answered.append(1)
            except Exception as exc:  # any failure while scaling is a defect
                errors.append(repr(exc))

    assert _replicas() == {"RUNNING": 1}
    line = _status_line(capsys)
    assert "1 RUNNING" in line and "autoscaling 1-2" in line, line
    threads = [threading.Thread(target=ask_streamed, args=(heavy,)) for _ in range(HEAVY_CLIENTS)]
    threads.append(threading.Thread(target=ask_streamed, args=(light,)))  # one light client throughout
    for t in threads:
        t.start()
    try:
        up_s = _wait_for("a second replica running", lambda: _replicas().get("RUNNING", 0) == 2, 480, errors)
        line = _status_line(capsys)
        assert "2 RUNNING" in line and "autoscaling 1-2" in line, line
        # Both replicas carry requests (the new one took connections on the shared port).
        engine = serve.get_deployment_handle(DEPLOYMENT, app_name=APP)
        loaded: dict[str, float] = {}

        def both_loaded() -> bool:
            r = engine.load_report.remote().result(timeout_s=30)
            loaded[r["replica"]] = max(loaded.get(r["replica"], 0.0), r["load"])
            return len(loaded) == 2 and all(v > 0 for v in loaded.values())

        _wait_for("load on both replicas", both_loaded, 120, errors)
        answered_up = len(answered)
        heavy.set()  # the light client alone: well under one replica's target
        down_s = _wait_for("back to one replica", lambda: _replicas() == {"RUNNING": 1}, 240, errors)
        answered_before = len(answered)
        _wait_for("answers after the scale-down", lambda: len(answered) >= answered_before + 2, 120, errors)
    finally:
        heavy.set()
        light.set()
        for t in threads:
            t.join(320)
    assert errors == [], f"{len(errors)} of {len(answered) + len(errors)} requests failed: {errors[:3]}"
    with capsys.disabled():
        print(
            f"\nscaled up {up_s:.0f}s after the load started; load seen per replica {loaded} "
            f"({answered_up} answered by then); back to 1 replica {down_s:.0f}s after the heavy load "
            f"stopped; {len(answered)} requests, 0 errors"
        )


def test_embeddings_and_chat_through_either_engine(multi_app):
    base_url, key = multi_app
    audit = AuditLog("multi")
    before = audit.verify().records
    vectors = []
    for _ in range(ROUNDS):
        with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as c:  # a new connection
            e = c.embeddings.create(model="tiny-embed", input=["第七倉庫の合言葉", "申請書の番号"])
            assert [d.index for d in e.data] == [0, 1] and e.model == "tiny-embed"
            assert e.usage.prompt_tokens > 0
            vectors.append(e.data[0].embedding)
        with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as c:
            r = c.chat.completions.create(
                model="tiny-chat",
                max_tokens=4,
                temperature=0,
                messages=[{"role": "user", "content": "こんにちは"}],
            )
            assert r.model == "tiny-chat" and r.usage.completion_tokens >= 1
    assert len(vectors[0]) == 128  # the tiny model's hidden size
    assert all(v == pytest.approx(vectors[0], abs=1e-4) for v in vectors)  # same input, same vector
    after = audit.verify()
    assert after.ok and after.records - before == 2 * ROUNDS


def test_routes_are_refused_for_the_wrong_kind_of_model(multi_app):
    base_url, key = multi_app
    c = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        c.embeddings.create(model="tiny-chat", input="x")
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="tiny-embed", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["param"] == "model"
    r = httpx.post(
        base_url + "/embeddings", json={"model": "tiny-embed"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_models_list_shows_both_engines_models(multi_app):
    base_url, key = multi_app
    ids = {m.id for m in openai.OpenAI(base_url=base_url, api_key=key, max_retries=0).models.list()}
    assert ids == {"tiny-chat", "tiny-embed"}


def test_engines_run_at_their_own_priority_not_rays(multi_app):
    """Ray starts its workers at niceness 15; an engine left there would lose the
    CPU to every other process of the node. Its processes (vLLM's server, engine
    core, worker) take the configured niceness (default 0)."""
    import psutil

    servers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "--served-model-name" in (p.info["cmdline"] or []) and EMBED in p.info["cmdline"]
    ]
    assert servers, "no vLLM server for the embedding engine"
    ray_workers = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "ray::ServeController"]
    assert ray_workers and all(p.nice() == 15 for p in ray_workers), "Ray's workers run at niceness 15"
    for server in servers:
        family = [server] + server.children(recursive=True)
        assert len(family) >= 3, family  # API server, engine core, worker (and the gateway's ledger)
        assert {p.nice() for p in family} == {0}, [(p.name(), p.nice()) for p in family]
