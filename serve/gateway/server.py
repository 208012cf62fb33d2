"""The gateway's HTTP server (aiohttp): authenticate, check limits and quotas,
forward to an engine, stream the answer back, and audit every request.

The data path is one hop: client -> gateway -> the engine replica's vLLM
server. Tokens are relayed as the raw SSE bytes vLLM wrote; only the final
usage event is parsed (to count tokens), so the per-token cost is a buffer
split and a socket write.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import (ClientConnectorError, ClientError, ClientSession, ClientTimeout, ServerDisconnectedError,
                     TCPConnector, web)

from foundation.net import is_loopback
from serve.gateway import limits as request_limits
from serve.gateway.errors import GatewayError, model_not_found
from serve.gateway.keys import ApiKey, KeyStore, secret_hash
from serve.gateway.ledger import Ledger
from serve.gateway.metrics import GatewayMetrics
from serve.gateway.routing import Upstreams, read_table, read_table_file

log = logging.getLogger("sekisho.gateway")
MISS_REFRESH_S = 0.5
NO_REPLICA_WAIT_S = 5.0
FORWARDED_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
# An engine that went away mid-answer (its answer had started, so no failover).
REPLICA_LOST = GatewayError(502, "The model replica stopped before finishing the answer; retry the request.",
                            code="replica_lost")


class _Unreachable(Exception):
    """A replica could not be reached before any of its answer was relayed."""


@dataclass(frozen=True)
class ModelRoute:
    """What the gateway knows about one served model name."""

    deployment: str
    version: str  # registry NAME/VERSION, or the folder for a local path
    sha256: str
    context_len: int
    base: str  # the base model's served name (itself for a base model)
    task: str = "generate"  # or "embed": which routes the model answers


@dataclass(frozen=True)
class GatewayOptions:
    app: str
    db_url: str
    limits: request_limits.RequestLimits
    record_text: bool = False
    key_refresh_s: float = 2.0
    route_refresh_s: float = 2.0
    # Embedded gateways read the route table from a file their engine replica
    # keeps current (they have no Ray connection); else from Ray's internal KV.
    routes_file: str | None = None


class Gateway:
    def __init__(self, opts: GatewayOptions, routes: dict[str, ModelRoute], engine_key: str = "",
                 local=None):
        """`local`: the vLLM server in this very process (serve.gateway.embedded.LocalEngine),
        called in-process for the models it holds; other models go over HTTP."""
        self.opts, self.routes, self.local = opts, routes, local
        self.engine_auth = f"Bearer {engine_key}"
        self.keys = KeyStore(opts.db_url)
        # Audit appends and quota counts: in a child process (see serve.gateway.ledger).
        self.ledger = Ledger(opts.db_url, opts.app)
        self.metrics = GatewayMetrics()
        self.upstreams = Upstreams()
        self.key_cache: dict[str, ApiKey] = {}
        self._keys_loaded_at = 0.0
        self._miss_lock = asyncio.Lock()
        # The key and route tables' periodic reads run here, off the event loop.
        self.db_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-db")
        self.session: ClientSession | None = None

    # ---- lifecycle -------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.opts.limits.max_body_bytes)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_route)
        app.router.add_get("/v1/models", self.list_models)
        for route in FORWARDED_ROUTES:
            app.router.add_post(route, self.forward)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _app) -> None:
        self.session = ClientSession(connector=TCPConnector(limit=0, keepalive_timeout=60),
                                     timeout=ClientTimeout(total=None, sock_connect=5),
                                     auto_decompress=False)
        await self.ledger.start()
        await self.refresh()
        self._tasks = [asyncio.create_task(self._every(self.opts.key_refresh_s, self.refresh_keys)),
                       asyncio.create_task(self._every(self.opts.route_refresh_s, self.refresh_routes))]

    async def _cleanup(self, _app) -> None:
        for t in self._tasks:
            t.cancel()
        await self.session.close()
        await self.ledger.close()

    async def _every(self, period: float, fn) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await fn()
            except Exception:  # keep the last good table; log and retry next period
                log.exception("gateway refresh failed")

    async def refresh(self) -> None:
        await self.refresh_keys()
        await self.refresh_routes()

    async def refresh_keys(self) -> None:
        self._keys_loaded_at = time.monotonic()
        self.key_cache = await self._db(self.keys.by_hash)

    async def refresh_routes(self) -> None:
        if self.opts.routes_file:
            self.upstreams.update(read_table_file(self.opts.routes_file))
        else:
            self.upstreams.update(await self._db(read_table, self.opts.app))

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.db_pool, fn, *args)

    # ---- auth ------------------------------------------------------------
    async def authenticate(self, request: web.Request) -> ApiKey:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise GatewayError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                               code="missing_api_key")
        digest = secret_hash(header[7:].strip())
        key = self.key_cache.get(digest)
        if key is None:
            # A key created since the last refresh works at once; unknown keys cost
            # at most one database read per MISS_REFRESH_S, however many arrive.
            arrived = time.monotonic()
            async with self._miss_lock:
                if self._keys_loaded_at < arrived:
                    await asyncio.sleep(max(0.0, self._keys_loaded_at + MISS_REFRESH_S - time.monotonic()))
                    await self.refresh_keys()
            key = self.key_cache.get(digest)
        if key is None or not key.usable():
            # Unknown, revoked and expired keys get the same answer.
            raise GatewayError(401, "Invalid API key (unknown, revoked or expired).", code="invalid_api_key")
        return key

    # ---- routes ----------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics_route(self, request: web.Request) -> web.Response:
        if not is_loopback(request.remote):
            try:
                key = await self.authenticate(request)
            except GatewayError as err:
                return self._error_response(err)
            if not key.admin:
                return self._error_response(GatewayError(403, "/metrics needs an admin key.", code="forbidden"))
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def list_models(self, request: web.Request) -> web.Response:
        try:
            key = await self.authenticate(request)
        except GatewayError as err:
            await self._audit_rejection(request, err, None, None, time.perf_counter(), uuid.uuid4().hex)
            return self._error_response(err)
        data = []
        for name, r in self.routes.items():
            if not key.allows(name):
                continue
            replica = self.upstreams.pick(r.deployment, self.local.url if self.local else None) or {}
            live = replica.get("names", {}).get(name, {})
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "sekisho", "root": r.base,
                         "sekisho_version": live.get("version") or r.version,
                         "sekisho_sha256": live.get("sha256") or r.sha256, "max_model_len": r.context_len})
        return web.json_response({"object": "list", "data": data})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        started, request_id = time.perf_counter(), "req-" + uuid.uuid4().hex
        key: ApiKey | None = None
        model = None
        try:
            key = await self.authenticate(request)
            payload, body = await self._read_json(request)
            model = payload.get("model")
            route = self.routes.get(model) if isinstance(model, str) else None
            if route is None or not key.allows(model):
                raise model_not_found(model)
            wanted = "embed" if request.path == "/v1/embeddings" else "generate"
            if route.task != wanted:
                raise GatewayError(400, f"The model `{model}` does not support {request.path}.",
                                   param="model", code="unsupported_model_for_route")
            request_limits.check(payload, request.path, self.opts.limits, route.context_len)
            decision = await self.ledger.admit(key.name, key.rpm, key.tpm) if key.limited else None
            if decision is not None and not decision.allowed:
                raise GatewayError(429, decision.reason, code="rate_limit_exceeded",
                                   headers={"Retry-After": str(decision.retry_after_s)})
        except GatewayError as err:
            await self._audit_rejection(request, err, key, model, started, request_id)
            return self._error_response(err, request_id)
        return await self._relay(request, key, route, model, payload, body, started, request_id)

    async def _read_json(self, request: web.Request) -> tuple[dict, bytes]:
        limit = self.opts.limits.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise GatewayError(413, f"Request body is {request.content_length} bytes; the limit is {limit}.",
                               code="request_too_large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(413, f"Request body exceeds the limit of {limit} bytes.",
                               code="request_too_large") from None
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise GatewayError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(payload, dict):
            raise GatewayError(400, "Request body must be a JSON object.", code="invalid_json")
        return payload, body

    # ---- relay -----------------------------------------------------------
    async def _relay(self, request, key, route, model, payload, body, started, request_id):
        stream = bool(payload.get("stream"))
        strip_usage = False
        if stream and request.path != "/v1/embeddings":
            opts = payload.get("stream_options") or {}
            if not opts.get("include_usage"):
                # Ask for the usage event (to count tokens) and drop it before the client sees it.
                payload["stream_options"] = {**opts, "include_usage": True}
                body, strip_usage = json.dumps(payload).encode(), True
        record = {"request_id": request_id, "key": key.name, "client": request.remote, "route": request.path,
                  "model": model, "model_version": route.version, "model_sha256": route.sha256,
                  "stream": stream, "prompt_sha256": hashlib.sha256(body).hexdigest()}
        if self.opts.record_text:
            record["request_body"] = body.decode("utf-8", "replace")
        prefer = self.local.url if self.local is not None else None
        deadline = time.monotonic() + NO_REPLICA_WAIT_S
        unreachable: list[str] = []
        while True:
            replica = await self._replica_for(route.deployment, prefer, frozenset(unreachable), deadline)
            if replica is None:
                if unreachable:
                    err = GatewayError(503, "The model replica is unavailable; retry shortly.",
                                       code="replica_unavailable", headers={"Retry-After": "2"})
                else:
                    err = GatewayError(503, f"No healthy replica serves `{model}` right now; retry shortly.",
                                       code="no_replica", headers={"Retry-After": "2"})
                await self._finish(record, err.status, started, 0, 0, None, key, error=err.code)
                return self._error_response(err, request_id)
            url, served = replica["url"], replica.get("names", {}).get(model, {})
            internal = served.get("internal", model)
            sent, rename = body, None
            if internal != model:
                # The alias's current version is loaded under a versioned name.
                sent = json.dumps({**payload, "model": internal}).encode()
                rename = (f'"model":"{internal}"'.encode(), f'"model":"{model}"'.encode())
            record.update(model_version=served.get("version") or route.version,
                          model_sha256=served.get("sha256") or route.sha256)
            self.upstreams.inflight[url] = self.upstreams.inflight.get(url, 0) + 1
            try:
                return await self._exchange(request, url, sent, stream, strip_usage, record, key, started, rename)
            except _Unreachable as exc:
                # Nothing reached the engine and nothing reached the client yet: a
                # replica that just left (scale-down, roll) or died. Try another.
                self.upstreams.mark_down(url)
                unreachable.append(url)
                self.metrics.failovers.labels(model).inc()
                log.warning("%s: replica %s unreachable (%s); trying another", request_id, url, exc)
            finally:
                self.upstreams.inflight[url] -= 1

    async def _replica_for(self, deployment: str, prefer: str | None, exclude: frozenset[str],
                           deadline: float) -> dict | None:
        """A live replica of `deployment`, waiting until `deadline` for the route
        table to name one (just deployed, or a replica is being replaced)."""
        replica = self.upstreams.pick(deployment, prefer, exclude)
        while replica is None and time.monotonic() < deadline:
            await self.refresh_routes()
            replica = self.upstreams.pick(deployment, prefer, exclude)
            if replica is None:
                await asyncio.sleep(0.25)
        return replica

    async def _exchange(self, request, url, body, stream, strip_usage, record, key, started, rename=None):
        if self.local is not None and url == self.local.url:
            return await self._exchange_local(request, body, stream, strip_usage, record, key, started, rename)
        try:
            upstream = await self.session.post(url + request.path, data=body, headers={
                "Content-Type": "application/json", "X-Request-Id": record["request_id"],
                "Authorization": self.engine_auth})
        except (ClientConnectorError, ServerDisconnectedError, asyncio.TimeoutError) as exc:
            # Refused or timed out connecting, or a pooled connection the engine closed
            # as it stopped: no answer was started, so the caller may try elsewhere.
            raise _Unreachable(type(exc).__name__) from exc
        async with upstream:
            content_type = upstream.headers.get("Content-Type", "application/json")
            if not stream or upstream.status != 200:
                try:
                    content = await upstream.read()
                except ClientError as exc:
                    log.warning("%s: replica %s failed mid-answer (%s)", record["request_id"], url, exc)
                    await self._finish(record, REPLICA_LOST.status, started, 0, 0, None, key, error=REPLICA_LOST.code)
                    return self._error_response(REPLICA_LOST, record["request_id"])
                return await self._buffered(upstream.status, content, content_type, record, key, started, rename)
            relay = _SseRelay(self, request, record, key, started, strip_usage, rename)
            await relay.prepare()
            try:
                async for chunk in upstream.content.iter_any():
                    await relay.feed(chunk)
            except (ConnectionResetError, asyncio.CancelledError):
                await relay.finish(499)  # the client went away; the record still gets written
                raise
            except ClientError as exc:
                # The engine went away mid-answer: the client gets an error event, not
                # a stream that just stops, and the record says so.
                log.warning("%s: replica %s failed mid-stream (%s)", record["request_id"], url, exc)
                return await relay.fail(REPLICA_LOST)
            return await relay.finish(200)

    async def _exchange_local(self, request, body, stream, strip_usage, record, key, started, rename):
        """Call this process's vLLM server as a function (its ASGI app): no socket,
        no second HTTP parse, no extra process between the engine and the client."""
        local, relay, parts = self.local, None, []
        start: dict = {}
        done, body_sent = asyncio.Event(), False

        async def receive():
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()  # vLLM listens for a disconnect while it streams
            return {"type": "http.disconnect"}

        async def send(message):
            nonlocal relay
            if message["type"] == "http.response.start":
                start.update(message)
                if stream and message["status"] == 200:
                    relay = _SseRelay(self, request, record, key, started, strip_usage, rename)
                    await relay.prepare()
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if relay is not None:
                    if chunk:
                        await relay.feed(chunk)
                else:
                    parts.append(chunk)

        scope = local.scope(request.path, record["request_id"], len(body), request.remote)
        try:
            await local.app(scope, receive, send)
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            if relay is not None:
                await relay.finish(499)
            raise exc
        except Exception as exc:  # the engine failed; answered below as a 5xx, never a hang
            if relay is not None:
                if isinstance(exc, OSError) or type(exc).__name__ == "ClientDisconnect":
                    await relay.finish(499)
                    return relay.response
                log.exception("engine failed mid-stream")
                return await relay.finish(500)
            if not start:
                log.exception("engine failed before answering")
                start = {"status": 500}
                parts = [GatewayError(500, "The model server failed; see its log.", code="engine_error").body()]
        finally:
            done.set()
        if relay is not None:
            return await relay.finish(200)
        content_type = "application/json"
        for name, value in start.get("headers", []):
            if name.lower() == b"content-type":
                content_type = value.decode("latin-1")
        return await self._buffered(start.get("status", 500), b"".join(parts), content_type,
                                    record, key, started, rename)

    async def _buffered(self, status, content, content_type, record, key, started, rename):
        if rename:
            content = content.replace(*rename)
        if status >= 400:
            content = _openai_error_body(content, status)
        usage = _usage_of(content)
        digest = hashlib.sha256(content)
        await self._finish(record, status, started, *usage, digest, key,
                           text=content if self.opts.record_text else None)
        return web.Response(body=content, status=status,
                            headers={"Content-Type": content_type, "X-Request-Id": record["request_id"]})

    # ---- audit -----------------------------------------------------------
    async def _finish(self, record, status, started, prompt_tokens, completion_tokens, digest, key,
                      error: str | None = None, text: bytes | None = None) -> None:
        latency = time.perf_counter() - started
        record.update(ts=time.time(), status=status, prompt_tokens=prompt_tokens,
                      completion_tokens=completion_tokens, latency_ms=round(latency * 1000, 2))
        if digest is not None:
            record["response_sha256"] = digest.hexdigest()
        if error:
            record["error"] = error
        if text is not None:
            record["response_body"] = text.decode("utf-8", "replace")
        tokens = None
        if key is not None and key.tpm is not None and (prompt_tokens or completion_tokens):
            tokens = (key.name, prompt_tokens + completion_tokens)
        await self.ledger.audit(record, tokens)
        self.metrics.observe(record["model"], status, latency, prompt_tokens, completion_tokens)

    async def _audit_rejection(self, request, err: GatewayError, key, model, started, request_id) -> None:
        record = {"request_id": request_id, "key": key.name if key else None, "client": request.remote,
                  "route": request.path, "model": model if isinstance(model, str) else None,
                  "model_version": None, "model_sha256": None, "stream": None}
        self.metrics.rejections.labels(err.code or str(err.status)).inc()
        await self._finish(record, err.status, started, 0, 0, None, None, error=err.code)

    def _error_response(self, err: GatewayError, request_id: str | None = None) -> web.Response:
        headers = {"Content-Type": "application/json", **err.headers}
        if request_id:
            headers["X-Request-Id"] = request_id
        return web.Response(body=err.body(), status=err.status, headers=headers)



class _SseRelay:
    """Relays a 200 event stream to the client as vLLM wrote it. Only the usage
    event is parsed (token counts); `[DONE]` is held back until the audit record
    is committed, so a client never sees the end of an unaudited answer."""

    def __init__(self, gw: "Gateway", request, record, key, started, strip_usage, rename):
        self.gw, self.request, self.record, self.key, self.started = gw, request, record, key, started
        self.strip_usage, self.rename = strip_usage, rename
        self.digest = hashlib.sha256()
        self.usage, self.pending, self.tail, self.first = (0, 0), b"", [], True
        self.response = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Request-Id": record["request_id"]})
        self.finished = False

    async def prepare(self) -> None:
        await self.response.prepare(self.request)

    async def feed(self, chunk: bytes) -> None:
        if not self.pending and chunk.endswith(b"\n\n") and chunk.find(b"\n\n") == len(chunk) - 2 \
                and not chunk.startswith(b"data: [DONE]") and b'"usage":{' not in chunk:
            await self._send(chunk)  # the usual case: one token's event, relayed as it came
            return
        pending = self.pending + chunk if self.pending else chunk
        if b"\n\n" not in pending:
            self.pending = pending
            return
        *events, self.pending = pending.split(b"\n\n")
        out = []
        for ev in events:
            if ev.startswith(b"data: [DONE]"):
                self.tail.append(ev)
            elif b'"usage":{' in ev and b'"choices":[]' in ev:
                self.usage = _usage_of(ev[6:])
                if not self.strip_usage:
                    out.append(ev)
            else:
                out.append(ev)
        if out:
            await self._send(b"\n\n".join(out) + b"\n\n")

    async def _send(self, data: bytes) -> None:
        if self.rename:
            data = data.replace(*self.rename)
        self.digest.update(data)
        await self.response.write(data)
        if self.first:
            self.gw.metrics.ttft.labels(self.record["model"]).observe(time.perf_counter() - self.started)
            self.first = False

    async def fail(self, err: GatewayError) -> web.StreamResponse:
        """End the stream with an error event in OpenAI's shape (what its clients
        raise as an APIError), after the audit record."""
        if self.finished:
            return self.response
        self.finished = True
        await self.gw._finish(self.record, err.status, self.started, *self.usage, self.digest, self.key,
                              error=err.code)
        try:
            await self.response.write(b"data: " + err.body() + b"\n\n")
            await self.response.write_eof()
        except ConnectionResetError:
            pass  # the client left as well
        return self.response

    async def finish(self, status: int) -> web.StreamResponse:
        """Commit the audit record, then send what was held back."""
        if self.finished:
            return self.response
        self.finished = True
        await self.gw._finish(self.record, status, self.started, *self.usage, self.digest, self.key)
        if status != 200:
            return self.response
        final = b"\n\n".join(self.tail) + b"\n\n" if self.tail else b""
        if self.pending:
            final = self.pending + final
        if final:
            await self.response.write(final)
        await self.response.write_eof()
        return self.response


def _openai_error_body(content: bytes, status: int) -> bytes:
    """Keep an engine's error if it has OpenAI's shape; wrap it if not."""
    try:
        parsed = json.loads(content)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return content
        detail = parsed.get("detail") if isinstance(parsed, dict) else parsed
    except ValueError:
        detail = content[:500].decode("utf-8", "replace")
    return GatewayError(status, f"The model server refused the request: {detail}").body()


def _usage_of(content: bytes) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) from an OpenAI response body or event."""
    try:
        usage = json.loads(content).get("usage") or {}
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0, 0
