"""No way around the gateway: every route of an engine's vLLM server, taken from
vLLM's own route table, refuses a caller without the engine key (but /health),
and runtime LoRA loading takes only folders in Sekisho's adapter cache."""

from __future__ import annotations

import os
import re
import typing

import httpx
import pytest

from serve.engine_guard import inside_cache

ENGINE = "engine-tiny-base"
e2e = pytest.mark.e2e


@pytest.fixture(scope="module")
def engine(main_job):
    from ray import serve

    handle = serve.get_deployment_handle(ENGINE, app_name="demo")
    return handle.url.remote().result(), handle.api_key.remote().result()


def _vllm_routes() -> set[tuple[str, str]]:
    """(method, path) of every route vLLM's server builds, for every task it supports."""
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.tasks import SupportedTask
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    os.environ.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")  # the LoRA routes too
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "x"])
    app = build_app(args, typing.get_args(SupportedTask))
    routes = set()
    for route in app.routes:
        for method in getattr(route, "methods", None) or {"GET"}:
            routes.add((method, route.path))
    return routes


def _live_routes(url: str, key: str) -> set[tuple[str, str]]:
    """(method, path) of every route the running engine lists in its OpenAPI schema."""
    schema = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    return {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}


@e2e
def test_every_engine_route_but_health_refuses_a_caller_without_the_key(engine):
    url, key = engine
    routes = _vllm_routes() | _live_routes(url, key)
    assert ("POST", "/invocations") in routes and ("POST", "/v1/load_lora_adapter") in routes
    answered = {}
    with httpx.Client(timeout=60) as client:
        for method, path in sorted(routes):
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            for headers in ({}, {"Authorization": "Bearer sk-sekisho-not-the-engine-key"}):
                r = client.request(
                    method, url + concrete, headers=headers, json={} if method == "POST" else None
                )
                if path == "/health":
                    assert r.status_code == 200
                else:
                    answered[(method, path, bool(headers))] = r.status_code
    opened = {k: v for k, v in answered.items() if v not in (401, 403)}
    assert not opened, f"engine routes answering without the engine key: {opened}"


@e2e
def test_no_cors_for_any_origin(engine):
    url, key = engine
    origin = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    for headers in (origin, {**origin, "Authorization": f"Bearer {key}"}):
        r = httpx.options(url + "/v1/chat/completions", headers=headers)
        assert "access-control-allow-origin" not in r.headers
        r = httpx.get(url + "/v1/models", headers=headers)
        assert "access-control-allow-origin" not in r.headers


@e2e
def test_lora_load_from_outside_the_adapter_cache_is_refused_even_with_the_key(engine, tmp_path):
    url, key = engine
    auth = {"Authorization": f"Bearer {key}"}
    for path in (str(tmp_path), "/etc", "/tmp/../etc", ""):
        r = httpx.post(
            url + "/v1/load_lora_adapter", json={"lora_name": "evil", "lora_path": path}, headers=auth
        )
        assert r.status_code == 403, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "forbidden"
    r = httpx.post(url + "/adapters", json={"name": "evil", "src": str(tmp_path)}, headers=auth)
    assert r.status_code == 403
    listed = httpx.get(url + "/v1/models", headers=auth).json()["data"]
    assert "evil" not in {m["id"] for m in listed}


def test_adapter_cache_check_resolves_links_and_dot_dots(tmp_path):
    cache = (tmp_path / "cache").resolve()
    (cache / "tiny-ja--v3").mkdir(parents=True)
    (cache / "escape").symlink_to(tmp_path)
    assert inside_cache(str(cache / "tiny-ja--v3"), cache)
    assert not inside_cache(str(cache), cache)
    assert not inside_cache(str(cache / ".." / "other"), cache)
    assert not inside_cache(str(cache / "escape"), cache)
    assert not inside_cache(str(cache / "x"), None)
    assert not inside_cache(["not", "a", "path"], cache)
