"""The engine's own door: every route of an engine replica's vLLM server answers
only callers with the engine key (the gateway, the replica itself), except the
health check.

vLLM's key (VLLM_API_KEY) guards only paths under /v1, /v2, /inference and
/cohere; its other routes (/invocations, /tokenize, /metrics, /version, the
SageMaker adapter routes...) would answer anyone on the cluster network with no
key, quota or audit record. vLLM loads `EngineGuard` with `--middleware`, after
its own middlewares, so it sees each request first (the embedded gateway's own
public port is an aiohttp server beside this app: users' gateway keys work
there, and its in-process calls carry the engine key).

Runtime LoRA loading (`/v1/load_lora_adapter`) takes only a folder inside
Sekisho's adapter cache (SEKISHO_ADAPTER_CACHE, where serve.follow downloads and
verifies adapter versions): a caller with the key still cannot make the engine
read an arbitrary path. SageMaker's adapter routes (`/adapters...`), which load
from any `src`, are refused outright.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from serve.gateway.errors import GatewayError

HEALTH_PATH = "/health"
ADAPTER_CACHE_ENV = "SEKISHO_ADAPTER_CACHE"
LORA_LOAD_PATH = "/v1/load_lora_adapter"
REFUSED_PREFIXES = ("/adapters",)
MAX_LOAD_BODY = 64 << 10


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def inside_cache(path: object, cache: Path | None) -> bool:
    """Whether `path` (a request's lora_path) names a folder inside `cache`, links resolved."""
    if cache is None or not isinstance(path, str) or not path or "\x00" in path:
        return False
    resolved = Path(path).resolve()
    return resolved != cache and resolved.is_relative_to(cache)


class EngineGuard:
    """ASGI middleware: refuse every request without the engine key (401), but
    /health; refuse LoRA loads from outside the adapter cache (403)."""

    def __init__(self, app):
        self.app = app
        key = os.environ.get("VLLM_API_KEY", "")
        # No key configured: nothing but /health answers (fail closed).
        self._key = _digest(f"Bearer {key}".encode()) if key else None
        cache = os.environ.get(ADAPTER_CACHE_ENV)
        self.cache = Path(cache).resolve() if cache else None

    def _authorized(self, scope) -> bool:
        if self._key is None:
            return False
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return secrets.compare_digest(_digest(value), self._key)
        return False

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if kind == "http" and path == HEALTH_PATH:
            return await self.app(scope, receive, send)
        if not self._authorized(scope):
            return await _refuse(scope, send, 401, "This engine answers only its gateway.", "invalid_api_key")
        if path.startswith(REFUSED_PREFIXES):
            return await _refuse(scope, send, 403, "Adapters load only through Sekisho.", "forbidden")
        if path == LORA_LOAD_PATH:
            body = await _read_body(receive)
            if body is None or not inside_cache(_lora_path(body), self.cache):
                return await _refuse(
                    scope, send, 403, "lora_path must be inside Sekisho's adapter cache.", "forbidden"
                )
            receive = _replay(body, receive)
        return await self.app(scope, receive, send)


def _lora_path(body: bytes) -> object:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return payload.get("lora_path") if isinstance(payload, dict) else None


async def _read_body(receive) -> bytes | None:
    """The whole request body, or None past MAX_LOAD_BODY or on a disconnect."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_LOAD_BODY:
            return None
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def _replay(body: bytes, original):
    """A receive channel that gives the body read already, then the client's own."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive


async def _refuse(scope, send, status: int, message: str, code: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = GatewayError(status, message, code=code).body()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
