"""Failover: a replica leaves (scale-down, roll, crash) while a gateway's route
table still names it. A request the gateway sends there is refused before the
engine saw it, so the gateway sends it to a live replica and the client never
knows. An engine that dies mid-answer ends the stream with an error event, not
a stream that just stops. Either way one audit record per request.

The gateway is this module's own (GatewayReplica, outside Serve), with the demo's
real vLLM engine behind it; its route table file names a replica that is gone
(a port nothing listens on) before the live one. The engine that dies mid-answer
is injected: a server that sends one event and drops the connection."""

from __future__ import annotations

import json
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import openai
import pytest

from serve.gateway import AuditLog

pytestmark = pytest.mark.e2e
MODEL, DEPLOYMENT = "tiny-base", "engine-tiny-base"
MSG = [{"role": "user", "content": "第七倉庫の合言葉は何ですか。"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gone() -> dict:
    """A replica that has left: connecting to it is refused."""
    return {"url": f"http://127.0.0.1:{free_port()}", "ts": time.time(), "names": {}}


@pytest.fixture(scope="module")
def failover(main_job, tmp_path_factory):
    from serve import ray_state
    from serve.gateway import KeyStore, RequestLimits, routing
    from serve.gateway.db import default_url
    from serve.gateway.replica import GatewayReplica

    live = routing.read_table("demo")[DEPLOYMENT]
    routes = {MODEL: ray_state.app_routes("demo")[MODEL]}
    routes_file = tmp_path_factory.mktemp("failover") / "routes.json"
    stamp = str(int(time.time() * 1000))
    chain, port = f"failover-{stamp}", free_port()
    opts = {
        "app": chain,
        "db_url": default_url(),
        "limits": RequestLimits().model_dump(),
        "routes_file": str(routes_file),
        "route_refresh_s": 0.5,
    }
    gw = GatewayReplica("127.0.0.1", port, opts, routes, ray_state.engine_secret("demo"))

    def table(*entries: dict) -> None:
        """Replace the gateway's route table and wait until it has read it."""
        routing.write_table_file(str(routes_file), {DEPLOYMENT: list(entries)})
        urls = [e["url"] for e in entries]
        deadline = time.monotonic() + 30
        while [e["url"] for e in gw.gateway.upstreams.table.get(DEPLOYMENT, [])] != urls:
            assert time.monotonic() < deadline, "the gateway did not read its route table"
            time.sleep(0.1)

    yield SimpleNamespace(
        base_url=f"http://127.0.0.1:{port}/v1",
        key=KeyStore().create(chain, [MODEL]),
        live=live,
        table=table,
        gateway=gw.gateway,
        audit=AuditLog(chain),
    )
    gw.__del__()


def _records(audit: AuditLog, request_id: str) -> list[dict]:
    deadline = time.monotonic() + 30
    while True:
        found = [r for r in audit.records() if r["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _failovers(gateway) -> float:
    return gateway.metrics.failovers.labels(MODEL)._value.get()


def test_a_request_sent_to_a_gone_replica_is_answered_by_a_live_one(failover):
    client = openai.OpenAI(base_url=failover.base_url, api_key=failover.key, max_retries=0)
    before = _failovers(failover.gateway)
    # Both replicas are idle: the gateway picks the first, which has gone.
    failover.table(_gone(), *failover.live)
    r = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MSG, max_tokens=8, temperature=0
    )
    answer = r.parse()
    assert answer.model == MODEL and answer.usage.completion_tokens > 0
    [record] = _records(failover.audit, r.headers["x-request-id"])
    assert record["status"] == 200 and record["completion_tokens"] == answer.usage.completion_tokens

    failover.table(_gone(), *failover.live)  # streamed, through another gone replica
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=MSG,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as r:
        chunks = list(r.parse())
        request_id = r.headers["x-request-id"]
    assert chunks[-1].usage.completion_tokens == 8
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [record] = _records(failover.audit, request_id)
    assert record["status"] == 200 and record["completion_tokens"] == 8
    assert _failovers(failover.gateway) == before + 2
    assert failover.audit.verify().ok


def test_with_every_replica_gone_the_answer_is_503_and_audited(failover):
    failover.table(_gone(), _gone())
    r = httpx.post(
        failover.base_url + "/chat/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {failover.key}"},
        json={"model": MODEL, "messages": MSG, "max_tokens": 4},
    )
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    assert r.json()["error"]["code"] == "replica_unavailable"
    [record] = _records(failover.audit, r.headers["x-request-id"])
    assert record["status"] == 503 and record["error"] == "replica_unavailable"


class _DiesMidAnswer:
    """Fault injection: an 'engine' that sends the headers and one event of a
    stream, then drops the connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                event = {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "第"}}],
                }
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                data = b"data: " + json.dumps(event).encode() + b"\n\n"
                conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                time.sleep(0.2)
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def test_an_engine_that_dies_mid_answer_ends_the_stream_with_an_error(failover):
    dying = _DiesMidAnswer()
    try:
        failover.table({"url": dying.url, "ts": time.time(), "names": {}})
        client = openai.OpenAI(base_url=failover.base_url, api_key=failover.key, max_retries=0)
        got = []
        with pytest.raises(openai.APIError, match="stopped before finishing") as exc:
            with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=MSG, max_tokens=8, stream=True
            ) as r:
                request_id = r.headers["x-request-id"]
                for chunk in r.parse():
                    got.append(chunk.choices[0].delta.content)
        assert got == ["第"], got  # what came before the failure reached the client
        assert exc.value.code == "replica_lost"
        [record] = _records(failover.audit, request_id)
        assert record["status"] == 502 and record["error"] == "replica_lost"
    finally:
        dying.close()
