"""The gateway's HTTP server (aiohttp): authenticate, check limits and quotas,
forward to an engine, stream the answer back, and audit every request.

A request's state travels as one RequestContext (serve.gateway.context) from
the route handler here to the forwarder (serve.gateway.forward), the relay
(serve.gateway.relay) and the recorder of its audit record
(serve.gateway.recorder). Tokens are relayed as the raw SSE bytes vLLM wrote;
only the final usage event is parsed (to count tokens), so the per-token cost
is a buffer split and a socket write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from foundation.net import is_loopback
from serve.gateway import limits as request_limits
from serve.gateway import request_body
from serve.gateway.context import ModelRoute, RequestContext
from serve.gateway.errors import GatewayError, model_not_found
from serve.gateway.forward import ANSWERED_BY, Forwarder
from serve.gateway.keys import ApiKey, KeyStore, secret_hash
from serve.gateway.ledger import Ledger, LedgerError
from serve.gateway.metrics import GatewayMetrics
from serve.gateway.recorder import Recorder
from serve.gateway.relay import error_response
from serve.gateway.route_metrics import RouteMetrics
from serve.gateway.router import Router, RoutingOptions
from serve.gateway.routing import Upstreams, read_table, read_table_file, replica_id, write_state_file

log = logging.getLogger("sekisho.gateway")
MISS_REFRESH_S = 0.5
FORWARDED_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
# How every runner of the gateway's app must serve it: bodies arrive as sent and
# request_body.decode undoes their Content-Encoding (aiohttp's own decoding
# refuses br and zstd before any route runs, so with no audit record).
SERVER_OPTIONS = {"auto_decompress": False}


@dataclass(frozen=True)
class GatewayOptions:
    """One gateway's settings (from the app config's `gateway` section)."""

    app: str
    db_url: str
    limits: request_limits.RequestLimits
    record_text: bool = False
    key_refresh_s: float = 2.0
    route_refresh_s: float = 2.0
    # Embedded gateways read the route table from a file their engine replica
    # keeps current (they have no Ray connection); else from Ray's internal KV.
    routes_file: str | None = None
    # How each request picks its replica (serve.gateway.router; the config's gateway.routing).
    routing: dict | None = None
    # Embedded: where this gateway's routing state goes every state_every_s, for
    # its engine replica to publish beside its route entry.
    state_file: str | None = None
    state_every_s: float = 1.0


class Gateway:
    """The gateway's aiohttp application: its routes, its key and route tables.

    Args:
        routes: served model name -> what the gateway routes and audits it by.
        engine_key: vLLM's API key on the engines.
        local: the vLLM server in this very process (serve.gateway.embedded.LocalEngine),
            called in-process for the models it holds; other models go over HTTP.
    """

    def __init__(self, opts: GatewayOptions, routes: dict[str, ModelRoute], engine_key: str = "", local=None):
        self.opts, self.routes, self.local = opts, routes, local
        self.keys = KeyStore(opts.db_url)
        # Audit appends and quota counts: in a child process (see serve.gateway.ledger).
        self.ledger = Ledger(opts.db_url, opts.app)
        self.metrics = GatewayMetrics(known_models=routes)
        self.upstreams = Upstreams()
        self.recorder = Recorder(self.ledger, self.metrics, opts.record_text)
        self.router = Router(
            self.upstreams, RoutingOptions(**(opts.routing or {})), RouteMetrics(self.metrics.registry), local
        )
        self.forwarder = Forwarder(
            self.upstreams, self.recorder, self.refresh_routes, engine_key, local, self.router
        )
        self.key_cache: dict[str, ApiKey] = {}
        self._keys_loaded_at = 0.0
        self._miss_lock = asyncio.Lock()
        # The key and route tables' periodic reads run here, off the event loop.
        self.db_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-db")

    # ---- lifecycle -------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.opts.limits.max_body_bytes, middlewares=[self._unrouted_in_openai_shape]
        )
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_route)
        app.router.add_get("/v1/models", self.list_models)
        for route in FORWARDED_ROUTES:
            app.router.add_post(route, self.forward)
        app.on_response_prepare.append(self._name_replicas)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    @web.middleware
    async def _unrouted_in_openai_shape(self, request: web.Request, handler):
        """A request no route takes (unknown path, wrong method) gets an OpenAI-shaped
        error and an audit record, like every other answer."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            err = GatewayError(
                exc.status, f"{request.method} {request.path}: {exc.reason}.", code="not_found"
            )
            if exc.status == 405:
                err.code = "method_not_allowed"
        ctx = RequestContext.arrive(request)
        answer = await self.recorder.reject(ctx, err) or err
        return error_response(answer, ctx.request_id)

    async def _name_replicas(self, request: web.Request, response: web.StreamResponse) -> None:
        """Say which engine replica answered (X-Sekisho-Replica) and, embedded, which
        process took the connection (X-Sekisho-Gateway), as opaque ids."""
        answered_by = request.get(ANSWERED_BY)
        if answered_by:
            response.headers["X-Sekisho-Replica"] = answered_by
        if self.local is not None:
            response.headers["X-Sekisho-Gateway"] = replica_id(self.local.url)

    async def _startup(self, _app) -> None:
        await self.forwarder.start()
        await self.ledger.start()
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._every(self.opts.key_refresh_s, self.refresh_keys)),
            asyncio.create_task(self._every(self.opts.route_refresh_s, self.refresh_routes)),
        ]
        if self.opts.state_file:
            self._tasks.append(asyncio.create_task(self._every(self.opts.state_every_s, self.write_state)))

    async def _cleanup(self, _app) -> None:
        for t in self._tasks:
            t.cancel()
        await self.forwarder.close()
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
        self.router.merge(self.upstreams.table)

    async def write_state(self) -> None:
        """Hand this gateway's routing state to its engine replica (which publishes it)."""
        write_state_file(self.opts.state_file, self.router.state())

    def route_of(self, model: str) -> ModelRoute | None:
        """The route of a served model name: from the app config, or an adapter an
        engine loaded since (serve.follow's adapter catalog), as its replicas publish it."""
        route = self.routes.get(model)
        if route is not None:
            return route
        for entries in self.upstreams.table.values():
            for e in entries:
                served = e.get("names", {}).get(model)
                base = self.routes.get(served.get("base", "")) if served else None
                if base is not None:
                    return dataclasses.replace(
                        base, version=served.get("version") or "", sha256=served.get("sha256") or ""
                    )
        return None

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.db_pool, fn, *args)

    # ---- auth ------------------------------------------------------------
    async def authenticate(self, request: web.Request) -> ApiKey:
        """The usable key the request carries.

        Raises:
            GatewayError: 401, no key, or one unknown, revoked or expired.
        """
        header = request.headers.get("Authorization", "")
        if not header.isascii():  # keys are ASCII; bytes that are not UTF-8 arrive as surrogates
            raise GatewayError(401, "Invalid API key (unknown, revoked or expired).", code="invalid_api_key")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise GatewayError(
                401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
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
                return error_response(err)
            if not key.admin:
                return error_response(GatewayError(403, "/metrics needs an admin key.", code="forbidden"))
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def list_models(self, request: web.Request) -> web.Response:
        try:
            key = await self.authenticate(request)
        except GatewayError as err:
            ctx = RequestContext.arrive(request)
            answer = await self.recorder.reject(ctx, err) or err
            return error_response(answer, ctx.request_id)
        data = []
        for name in self._served_names():
            r = self.route_of(name)
            if r is None or not key.allows(name):
                continue
            replica = self.upstreams.pick(r.deployment, self.local.url if self.local else None) or {}
            live = replica.get("names", {}).get(name, {})
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "sekisho",
                    "root": r.base,
                    "sekisho_version": live.get("version") or r.version,
                    "sekisho_sha256": live.get("sha256") or r.sha256,
                    "max_model_len": r.context_len,
                }
            )
        return web.json_response({"object": "list", "data": data})

    def _served_names(self) -> list[str]:
        """The app config's model names, then adapters the engines loaded since."""
        names = dict.fromkeys(self.routes)
        for entries in self.upstreams.table.values():
            for e in entries:
                names.update(dict.fromkeys(n for n, s in e.get("names", {}).items() if s.get("base")))
        return list(names)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        ctx = RequestContext.arrive(request)
        try:
            await self._check(ctx)
        except GatewayError as err:
            err = await self.recorder.reject(ctx, err)  # the ledger's 503 if it was not recorded
            return error_response(err, ctx.request_id)
        try:
            return await self.forwarder.forward(ctx)
        except LedgerError as err:  # not recorded: the 503, not the answer (streams: the relay's end)
            return error_response(err, ctx.request_id)

    async def _check(self, ctx: RequestContext) -> None:
        """Authenticate, read and check the request and admit it under the key's
        rate limits, filling in ctx (key, model, route, payload, body).

        Raises:
            GatewayError: the answer the client gets instead (a 500 in OpenAI's
                shape, audited, where a check itself failed).
        """
        try:
            await self._check_request(ctx)
        except GatewayError:
            raise
        except Exception:
            log.exception("%s: checking the request failed", ctx.request_id)
            raise GatewayError(
                500, "Internal error while checking the request.", code="internal_error"
            ) from None

    async def _check_request(self, ctx: RequestContext) -> None:
        ctx.key = await self.authenticate(ctx.request)
        ctx.payload, ctx.body = await self._read_json(ctx.request)
        # Every authenticated request counts against rpm, one for a model that does not exist too.
        await self._admit(ctx.key)
        model = ctx.payload.get("model")
        ctx.model = model if isinstance(model, str) else None
        ctx.route = self.route_of(ctx.model) if ctx.model is not None else None
        if ctx.route is None or not ctx.key.allows(model):
            raise model_not_found(model)
        wanted = "embed" if ctx.path == "/v1/embeddings" else "generate"
        if ctx.route.task != wanted:
            raise GatewayError(
                400,
                f"The model `{model}` does not support {ctx.path}.",
                param="model",
                code="unsupported_model_for_route",
            )
        request_limits.check(ctx.payload, ctx.path, self.opts.limits, ctx.route.context_len)
        if request_limits.with_default_max_tokens(
            ctx.payload, ctx.path, self.opts.limits, ctx.route.context_len
        ):
            ctx.body = json.dumps(ctx.payload).encode()

    async def _admit(self, key: ApiKey) -> None:
        """Count a request against the key's rate limits.

        Raises:
            GatewayError: 429, over a limit.
        """
        decision = await self.ledger.admit(key.name, key.rpm, key.tpm) if key.limited else None
        if decision is not None and not decision.allowed:
            raise GatewayError(
                429,
                decision.reason,
                code="rate_limit_exceeded",
                headers={"Retry-After": str(decision.retry_after_s)},
            )

    async def _read_json(self, request: web.Request) -> tuple[dict, bytes]:
        limit = self.opts.limits.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise GatewayError(
                413,
                f"Request body is {request.content_length} bytes; the limit is {limit}.",
                code="request_too_large",
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(
                413, f"Request body exceeds the limit of {limit} bytes.", code="request_too_large"
            ) from None
        except (HttpProcessingError, RequestPayloadError) as exc:  # e.g. a cut-short chunked body
            detail = getattr(exc, "message", None) or str(exc).strip()
            raise GatewayError(
                400, f"Request body could not be read: {detail}", code="invalid_body"
            ) from None
        codings = request.headers.getall("Content-Encoding", None)
        body = request_body.decode(body, ", ".join(codings) if codings else None, limit)
        return request_body.parse(body, self.opts.limits.max_json_depth), body
