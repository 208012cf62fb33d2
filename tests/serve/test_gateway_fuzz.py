"""Schema-driven fuzzing of the gateway: whatever a client sends (bodies,
headers, Content-Encodings, nesting, encodings, any route of vLLM's server),
the answer is never a 5xx, every error has OpenAI's shape, and every request the
gateway answers leaves exactly one audit record (committed before the answer is
sent)."""

from __future__ import annotations

import gzip
import os
import re
import time
import typing
import zlib

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
        "content": st.one_of(st.text(max_size=30), json_values),
    }
)
chat_body = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["tiny-ja", "tiny-base", "nope", ""]),
        "messages": st.one_of(st.lists(message, min_size=0, max_size=3), json_values),
    },
    optional={
        "max_tokens": st.one_of(st.integers(-5, 3000), json_values),
        "temperature": st.one_of(st.floats(-1, 5, allow_nan=False), json_values),
        "n": st.integers(-1, 4),
        "stream": st.booleans(),
        "top_p": scalars,
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=5), scalars),
        "logprobs": scalars,
        "top_logprobs": st.integers(-1, 30),
        "user": scalars,
        "tools": json_values,
        "response_format": json_values,
        "seed": scalars,
        "stream_options": json_values,
        "extra": json_values,
    },
)
routes = st.sampled_from(["/chat/completions", "/completions", "/embeddings", "/models"])


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=routes, body=st.one_of(chat_body, json_values))
def test_no_5xx_for_any_body(main_job, route, body):
    headers = {"Authorization": f"Bearer {main_job.api_key}"}
    url = main_job.base_url + route
    if route == "/models":
        r = httpx.get(url, headers=headers, timeout=60)
    else:
        if isinstance(body, dict) and isinstance(body.get("max_tokens"), int):
            body["max_tokens"] = min(body["max_tokens"], 8)  # keep generation short
        r = httpx.post(url, json=body, headers=headers, timeout=120)
    check_answer(r, route, body)


def check_answer(r: httpx.Response, *what) -> None:
    """No 5xx; an error in OpenAI's shape; one audit record (all but a listing or a probe)."""
    from serve.gateway import AuditLog

    assert r.status_code < 500, (*what, r.status_code, r.text[:300])
    if r.status_code >= 400 and r.request.method != "HEAD":
        assert set(r.json()["error"]) >= {"message", "type", "param", "code"}, (*what, r.text[:300])
    if r.status_code == 200 and r.request.method in ("GET", "HEAD"):
        return  # /v1/models, /health, /metrics: nothing generated, nothing to audit
    request_id = r.headers.get("X-Request-Id")
    assert request_id, (*what, r.status_code, r.headers)
    found = [x for x in AuditLog("demo").records(since=time.time() - 600) if x["request_id"] == request_id]
    assert len([x for x in found if "status" in x]) == 1, (*what, found)


# Header values HTTP can carry (visible ASCII, obs-text bytes, inner blanks), UTF-8 or not.
FIELD_VALUE = re.compile(rb"([\x21-\x7e\x80-\xff]([ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
header_text = st.binary(max_size=40).filter(FIELD_VALUE.fullmatch)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    auth=st.one_of(header_text, header_text.map(lambda b: b"Bearer " + b if b else b"Bearer")),
    content_type=st.one_of(
        header_text, st.sampled_from([b"application/json", b"text/plain; charset=utf-16"])
    ),
    encoding=st.one_of(
        st.sampled_from(
            [None, b"identity", b"gzip", b"x-gzip", b"deflate", b"br", b"zstd", b"gzip, br", b"x-unknown"]
        ),
        header_text,
    ),
    body=st.one_of(st.binary(max_size=200), json_values.map(lambda v: repr(v).encode())),
    compress=st.sampled_from([None, "gzip", "deflate"]),
    use_key=st.booleans(),
)
def test_no_5xx_for_any_headers(main_job, auth, content_type, encoding, body, compress, use_key):
    headers = {"Content-Type": content_type}
    headers["Authorization"] = f"Bearer {main_job.api_key}".encode() if use_key else auth
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if compress is not None:  # a body that decodes (or not, under another header)
        body = gzip.compress(body) if compress == "gzip" else zlib.compress(body)
    r = httpx.post(main_job.base_url + "/chat/completions", content=body, headers=headers, timeout=120)
    check_answer(r, headers, body)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    depth=st.integers(1, 5000),
    field=st.sampled_from(["messages", "stream_options", "tools", "response_format", "extra", "model"]),
    opener=st.sampled_from([b"[", b'{"a":']),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1"]),
)
def test_no_5xx_for_any_nesting_or_encoding(main_job, depth, field, opener, encoding):
    closer = b"]" if opener == b"[" else b"}"
    nested = opener * depth + b"1" + closer * depth
    text = b'{"model": "tiny-ja", "max_tokens": 4, "content": "\xe6\x97\xa5", "' + field.encode() + b'": '
    body = (text + nested + b"}").decode("utf-8").encode(encoding, "replace")
    headers = {"Authorization": f"Bearer {main_job.api_key}", "Content-Type": "application/json"}
    r = httpx.post(main_job.base_url + "/chat/completions", content=body, headers=headers, timeout=120)
    check_answer(r, depth, field, encoding)


def vllm_routes() -> set[tuple[str, str]]:
    """(method, path) of every route vLLM's OpenAI server builds, for every task."""
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.tasks import SupportedTask
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    os.environ.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    app = build_app(
        make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "x"]), typing.get_args(SupportedTask)
    )
    return {(m, route.path) for route in app.routes for m in getattr(route, "methods", None) or {"GET"}}


@pytest.mark.parametrize("with_key", [True, False])
def test_every_route_of_the_engines_server_on_the_gateway(main_job, with_key):
    root = main_job.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {main_job.api_key}"} if with_key else {}
    with httpx.Client(timeout=120) as client:
        for method, path in sorted(vllm_routes()):
            body = {"model": "tiny-ja", "messages": [{"role": "user", "content": "q"}], "max_tokens": 2}
            r = client.request(
                method,
                root + re.sub(r"\{[^}]+\}", "x", path),
                headers=headers,
                json=body if method == "POST" else None,
            )
            check_answer(r, method, path)
