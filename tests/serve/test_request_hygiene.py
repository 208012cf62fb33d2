"""Poisoned input and limits that could be walked around, against the real
gateway and the demo's real vLLM engine: each poisoned request is a 4xx in
OpenAI's shape with exactly one audit record; fields outside the route's
allowlist are refused by name; a body whose Content-Encoding the gateway cannot
undo (br, zstd, unknown, not what it says, too big once decoded) is a 4xx naming
the header, with its record; a request with no token limit gets the app's
default; a dropped stream still counts against tpm; requests for unknown models
count against rpm and share one metrics series.

The limits tests use this module's own gateway (GatewayReplica, outside Serve)
with small limits, in front of the demo's engine."""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from types import SimpleNamespace

import httpx
import pytest

from serve.gateway import AuditLog, KeyStore

pytestmark = pytest.mark.e2e
MODEL, DEPLOYMENT = "tiny-base", "engine-tiny-base"
MSG = [{"role": "user", "content": "第七倉庫の合言葉は何ですか。"}]
DEFAULT_MAX_TOKENS = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_record(audit: AuditLog, request_id: str) -> dict:
    """The completed audit record of `request_id`, which must be the only one (it is
    committed before the answer is sent)."""
    found = [r for r in audit.records(since=time.time() - 600) if r["request_id"] == request_id]
    done = [r for r in found if "status" in r]
    assert len(done) == 1, found
    return done[0]


def refused(r: httpx.Response, audit: AuditLog, status: int, code: str | None = None) -> dict:
    """Assert `r` is the gateway's `status` in OpenAI's shape, with one record; return the error."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    assert one_record(audit, r.headers["X-Request-Id"])["status"] == status
    return error


@pytest.fixture(scope="module")
def demo(main_job):
    url = main_job.base_url + "/chat/completions"
    return SimpleNamespace(
        url=url, auth={"Authorization": f"Bearer {main_job.api_key}"}, audit=AuditLog("demo")
    )


@pytest.fixture(scope="module")
def small(main_job, tmp_path_factory):
    """A gateway of its own with small limits in front of the demo's engine."""
    from serve import ray_state
    from serve.gateway import RequestLimits, routing
    from serve.gateway.db import default_url
    from serve.gateway.replica import GatewayReplica

    routes_file = tmp_path_factory.mktemp("hygiene") / "routes.json"
    routing.write_table_file(str(routes_file), {DEPLOYMENT: routing.read_table("demo")[DEPLOYMENT]})
    chain, port = f"hygiene-{time.time_ns()}", free_port()
    opts = {
        "app": chain,
        "db_url": default_url(),
        "limits": RequestLimits(default_max_tokens=DEFAULT_MAX_TOKENS).model_dump(),
        "routes_file": str(routes_file),
    }
    routes = {MODEL: ray_state.app_routes("demo")[MODEL]}
    gw = GatewayReplica("127.0.0.1", port, opts, routes, ray_state.engine_secret("demo"))
    yield SimpleNamespace(
        base=f"http://127.0.0.1:{port}", chain=chain, audit=AuditLog(chain), gateway=gw.gateway
    )
    gw.__del__()


# ---- poisoned input: a 4xx with a record, never a 500 ---------------------------------


def test_authorization_header_that_is_not_utf8_is_a_401_with_a_record(demo):
    r = httpx.post(
        demo.url, json={"model": "tiny-ja", "messages": MSG}, headers={"Authorization": b"Bearer \xff\xfe"}
    )
    refused(r, demo.audit, 401, "invalid_api_key")


@pytest.mark.parametrize("depth", [200, 50_000])
def test_deeply_nested_json_is_a_400_with_a_record(demo, depth):
    body = b'{"model": "tiny-ja", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    r = httpx.post(demo.url, content=body, headers=demo.auth)
    refused(r, demo.audit, 400, "nesting_too_deep")


@pytest.mark.parametrize("options", [[], "yes", 1, True])
def test_stream_options_that_is_not_an_object_is_a_400_naming_it(demo, options):
    body = {"model": "tiny-ja", "messages": MSG, "stream": True, "stream_options": options, "max_tokens": 4}
    r = httpx.post(demo.url, json=body, headers=demo.auth)
    assert refused(r, demo.audit, 400)["param"] == "stream_options"


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b'"a string"',
        b"null",
        b'{"model": "tiny-ja", "messages": [], "max_tokens": 1e400}',
        b'{"model": "tiny-ja", "temperature": NaN}',
        b'{"model": "tiny-ja", "seed": ' + b"9" * 5000 + b"}",
        b'{"model": "\\ud800", "messages": []}',
        b'{"model": "tiny-ja", "messages": [{"role": "user", "content": "\\udfff"}]}',
        '{"model": "tiny-ja", "messages": []}'.encode("utf-16"),
        b'{"model": "tiny-ja", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    ],
    ids=[
        "list",
        "string",
        "null",
        "huge-float",
        "nan",
        "huge-int",
        "surrogate-model",
        "surrogate-text",
        "utf16",
        "bytes",
    ],
)
def test_poisoned_body_is_a_400_with_a_record(demo, body):
    r = httpx.post(demo.url, content=body, headers=demo.auth)
    refused(r, demo.audit, 400)


def test_body_whose_content_encoding_lies_is_a_400_with_a_record(demo):
    headers = {**demo.auth, "Content-Encoding": "gzip"}
    r = httpx.post(demo.url, content=b'{"model": "tiny-ja"}', headers=headers)
    refused(r, demo.audit, 400)
    ok = gzip.compress(json.dumps({"model": "tiny-ja", "messages": MSG, "max_tokens": 2}).encode())
    assert httpx.post(demo.url, content=ok, headers=headers, timeout=60).status_code == 200


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """A gateway of its own with no models, on a database of its own: what it answers
    itself, before any engine is asked (no demo needed)."""
    from serve.gateway import RequestLimits, routing
    from serve.gateway.replica import GatewayReplica

    folder = tmp_path_factory.mktemp("bare")
    url, routes_file = f"sqlite:///{folder / 'gateway.db'}", folder / "routes.json"
    routing.write_table_file(str(routes_file), {})
    opts = {
        "app": "bare",
        "db_url": url,
        "limits": RequestLimits(max_body_bytes=64 * 1024).model_dump(),
        "routes_file": str(routes_file),
    }
    gw = GatewayReplica("127.0.0.1", free_port(), opts, {}, "")
    yield SimpleNamespace(
        url=f"http://127.0.0.1:{gw.port}/v1/chat/completions",
        auth={"Authorization": f"Bearer {KeyStore(url).create('k', ['*'])}"},
        audit=AuditLog("bare", url),
    )
    gw.__del__()


ASKED = json.dumps({"model": "asked-for-by-name", "messages": MSG}).encode()


def deflated(body: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(wbits=wbits)
    return c.compress(body) + c.flush()


@pytest.mark.parametrize(
    "encoding,body,status,code",
    [
        ("br", ASKED, 415, "unsupported_content_encoding"),
        ("zstd", ASKED, 415, "unsupported_content_encoding"),
        ("compress", ASKED, 415, "unsupported_content_encoding"),
        ("x-unknown", ASKED, 415, "unsupported_content_encoding"),
        ("gzip, br", gzip.compress(ASKED), 415, "unsupported_content_encoding"),
        ("gzip", ASKED, 400, "invalid_content_encoding"),
        ("deflate", b"\x00" * 40, 400, "invalid_content_encoding"),
        ("gzip", gzip.compress(ASKED)[:-6], 400, "invalid_content_encoding"),
        ("gzip", gzip.compress(ASKED) + b"\x00junk", 400, "invalid_content_encoding"),
        ("gzip", b"", 400, "invalid_content_encoding"),
        ("gzip", gzip.compress(b"{" + b" " * 10_000_000 + b"}"), 413, "request_too_large"),
    ],
    ids=[
        "br",
        "zstd",
        "compress",
        "unknown",
        "gzip-then-br",
        "not-gzip",
        "not-deflate",
        "cut-short",
        "trailing-bytes",
        "empty",
        "bomb",
    ],
)
def test_a_body_the_gateway_cannot_decode_is_a_4xx_naming_the_header_with_a_record(
    bare, encoding, body, status, code
):
    r = httpx.post(bare.url, content=body, headers={**bare.auth, "Content-Encoding": encoding})
    assert "Content-Encoding" in refused(r, bare.audit, status, code)["message"]
    # without a key it is the 401, recorded too: the key is checked first
    r = httpx.post(bare.url, content=body, headers={"Content-Encoding": encoding})
    refused(r, bare.audit, 401, "missing_api_key")


@pytest.mark.parametrize(
    "encoding,body",
    [
        ("gzip", gzip.compress(ASKED)),
        ("x-gzip", gzip.compress(ASKED)),
        ("GZip", gzip.compress(ASKED[:9]) + gzip.compress(ASKED[9:])),  # two members
        ("deflate", zlib.compress(ASKED)),
        ("deflate", deflated(ASKED, -15)),  # raw deflate, as some clients send it
        ("deflate, gzip", gzip.compress(zlib.compress(ASKED))),
        ("identity", ASKED),
        ("", ASKED),
    ],
    ids=[
        "gzip",
        "x-gzip",
        "gzip-members",
        "deflate",
        "raw-deflate",
        "deflate-then-gzip",
        "identity",
        "empty",
    ],
)
def test_a_body_in_a_coding_the_gateway_takes_is_read(bare, encoding, body):
    r = httpx.post(bare.url, content=body, headers={**bare.auth, "Content-Encoding": encoding})
    # read as JSON: the model it names was looked up (the bare gateway serves none)
    assert "asked-for-by-name" in refused(r, bare.audit, 404, "model_not_found")["message"]


@pytest.mark.parametrize("encoding", ["br", "zstd"])
def test_an_encoding_aiohttp_lacks_reaches_the_embedded_gateway(demo, encoding):
    """aiohttp refuses br and zstd itself (no brotli, no zstd module) unless the server
    leaves bodies undecoded; the demo's gateway runs inside the vLLM server."""
    r = httpx.post(demo.url, content=b"{}", headers={**demo.auth, "Content-Encoding": encoding})
    refused(r, demo.audit, 415, "unsupported_content_encoding")


def test_unknown_route_and_method_are_openai_errors_with_a_record(demo, main_job):
    root = main_job.base_url.removesuffix("/v1")
    refused(httpx.post(root + "/invocations", json={}, headers=demo.auth), demo.audit, 404)
    refused(httpx.get(demo.url, headers=demo.auth), demo.audit, 405, "method_not_allowed")


# ---- limits: an allowlist of fields, switches, default max_tokens ----------------------


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"structured_outputs": {"grammar": "root ::= 'a'"}}, "structured_outputs"),
        ({"guided_json": {"type": "object"}}, "guided_json"),
        ({"guided_grammar": "root ::= 'a'"}, "guided_grammar"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
            "response_format",
        ),
        ({"logits_processors": ["x.y"]}, "logits_processors"),
        ({"prompt_logprobs": 20}, "prompt_logprobs"),
        ({"vllm_xargs": {"a": 1}}, "vllm_xargs"),
        ({"no_such_field": 1}, "no_such_field"),
        ({"max_completion_tokens": 100000}, "max_completion_tokens"),
    ],
)
def test_fields_outside_the_allowlist_are_a_400_naming_the_field(demo, extra, param):
    r = httpx.post(demo.url, json={"model": "tiny-ja", "messages": MSG, **extra}, headers=demo.auth)
    assert refused(r, demo.audit, 400)["param"] == param


def test_embeddings_take_only_their_own_fields(demo, main_job):
    r = httpx.post(
        main_job.base_url + "/embeddings",
        json={"model": "tiny-ja", "input": "x", "messages": MSG},
        headers=demo.auth,
    )
    assert r.status_code in (400, 404) and r.json()["error"]["param"] in ("messages", "model")


def test_a_request_without_max_tokens_gets_the_apps_default(small):
    key = KeyStore().create(f"{small.chain}-default", [MODEL])
    body = {"model": MODEL, "messages": MSG, "ignore_eos": True}
    r = httpx.post(
        small.base + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS


def test_a_dropped_stream_still_counts_against_tpm(small):
    name = f"{small.chain}-tpm"
    key = KeyStore().create(name, [MODEL], tpm=3)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": MSG, "ignore_eos": True, "max_tokens": 400, "stream": True}
    with httpx.stream("POST", small.base + "/v1/chat/completions", json=body, headers=auth, timeout=120) as r:
        assert r.status_code == 200
        request_id = r.headers["X-Request-Id"]
        events = r.iter_lines()
        got = []
        for line in events:
            if line.startswith("data: "):
                got.append(line)
            if len(got) == 4:
                break  # the client leaves long before the usage event
    deadline = time.monotonic() + 60
    while not [x for x in small.audit.records() if x["request_id"] == request_id and "status" in x]:
        assert time.monotonic() < deadline, "the dropped stream was not audited"
        time.sleep(0.1)
    record = one_record(small.audit, request_id)
    assert record["status"] == 499 and record["completion_tokens"] >= 3
    again = httpx.post(
        small.base + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}, headers=auth
    )
    assert again.status_code == 429 and "token limit" in again.json()["error"]["message"]


def test_requests_for_unknown_models_count_against_rpm_and_share_one_series(small):
    key = KeyStore().create(f"{small.chain}-rpm", [MODEL], rpm=2)
    auth = {"Authorization": f"Bearer {key}"}
    url = small.base + "/v1/chat/completions"
    for name in ("no-such-model-1", "no-such-model-2"):
        r = httpx.post(url, json={"model": name, "messages": MSG}, headers=auth)
        refused(r, small.audit, 404, "model_not_found")
    r = httpx.post(url, json={"model": MODEL, "messages": MSG, "max_tokens": 2}, headers=auth)
    refused(r, small.audit, 429, "rate_limit_exceeded")
    metrics = httpx.get(small.base + "/metrics").text
    assert 'model="unknown"' in metrics and "no-such-model" not in metrics
