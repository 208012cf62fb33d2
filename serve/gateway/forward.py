"""Forwarding a checked request to an engine replica: pick one (serve.gateway.router),
fail over to another while nothing of the answer has been relayed, and relay the answer.

The data path is one hop: client -> gateway -> the engine replica's vLLM
server, over HTTP, or, for the engine in this very process (the embedded
gateway), by calling vLLM's ASGI app as a function (serve.gateway.local_call).
A request sent to another replica goes straight to that replica's vLLM server
(pooled keep-alive connections) with the engine key, which only gateways hold:
the receiving replica's own gateway never sees it, so it is audited and counted
against the key's quota once, here. Its event stream is relayed as the bytes
vLLM wrote (serve.gateway.relay).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientSession,
    ClientTimeout,
    ServerDisconnectedError,
    TCPConnector,
    web,
)

from serve.gateway.context import RequestContext
from serve.gateway.errors import GatewayError
from serve.gateway.local_call import call_local
from serve.gateway.recorder import Recorder
from serve.gateway.relay import SseRelay, buffered, error_response
from serve.gateway.router import Choice, Router
from serve.gateway.routing import Upstreams, replica_id

log = logging.getLogger("sekisho.gateway")
ANSWERED_BY = "sekisho_replica"  # the request's key for the replica it went to (X-Sekisho-Replica)
NO_REPLICA_WAIT_S = 5.0
# An engine that went away mid-answer (its answer had started, so no failover).
REPLICA_LOST = GatewayError(
    502, "The model replica stopped before finishing the answer; retry the request.", code="replica_lost"
)


class Unreachable(Exception):
    """A replica could not be reached before any of its answer was relayed."""


class Forwarder:
    """Sends checked requests to the engines and relays their answers.

    Args:
        upstreams: the live replicas per deployment (shared with the route refresh).
        recorder: writes each request's audit record and metrics.
        refresh_routes: re-reads the route table (while no replica is named yet).
        engine_key: vLLM's API key on the engines.
        local: the vLLM server in this process (serve.gateway.embedded.LocalEngine), if any.
        router: picks the replica per request.
    """

    def __init__(
        self,
        upstreams: Upstreams,
        recorder: Recorder,
        refresh_routes: Callable[[], Awaitable[None]],
        engine_key: str = "",
        local=None,
        router: Router | None = None,
    ):
        self.upstreams, self.recorder, self.refresh_routes = upstreams, recorder, refresh_routes
        if router is None:
            from prometheus_client import CollectorRegistry

            from serve.gateway.route_metrics import RouteMetrics
            from serve.gateway.router import RoutingOptions

            router = Router(upstreams, RoutingOptions(), RouteMetrics(CollectorRegistry()), local)
        self.router = router
        self.engine_auth = f"Bearer {engine_key}"
        self.local = local
        self.session: ClientSession | None = None

    async def start(self) -> None:
        self.session = ClientSession(
            connector=TCPConnector(limit=0, keepalive_timeout=60),
            timeout=ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )

    async def close(self) -> None:
        await self.session.close()

    async def forward(self, ctx: RequestContext) -> web.StreamResponse:
        """Answer a checked request (ctx.key, ctx.model, ctx.route, ctx.payload and
        ctx.body set) from a live replica, trying another while one is unreachable."""
        self._ask_for_usage(ctx)
        self.recorder.open(ctx)
        # Fail closed: committed while the engine starts on the request; the relay waits
        # for it before the answer's first byte (a 503 instead if it cannot be recorded).
        await self.recorder.admit_early(ctx)
        hashes = self.router.hashes(ctx)
        deadline = time.monotonic() + NO_REPLICA_WAIT_S
        unreachable: list[str] = []
        while True:
            choice = await self._replica_for(ctx, hashes, frozenset(unreachable), deadline)
            if choice is None:
                err = self._no_replica(ctx, bool(unreachable))
                await self.recorder.finish(ctx, err.status, error=err.code)
                return error_response(err, ctx.request_id)
            replica, url = choice.entry, choice.entry["url"]
            self.router.routed(ctx, choice, hashes)
            ctx.request[ANSWERED_BY] = replica_id(url)
            sent = self._for_replica(ctx, replica.get("names", {}).get(ctx.model, {}))
            self.upstreams.inflight[url] = self.upstreams.inflight.get(url, 0) + 1
            try:
                answer = await self._exchange(ctx, url, sent)
                self.router.answered(ctx)
                return answer
            except Unreachable as exc:
                # Nothing reached the engine and nothing reached the client yet: a
                # replica that just left (scale-down, roll) or died. Try another.
                self.upstreams.mark_down(url)
                unreachable.append(url)
                self.recorder.failed_over(ctx)
                log.warning("%s: replica %s unreachable (%s); trying another", ctx.request_id, url, exc)
            finally:
                self.upstreams.inflight[url] -= 1

    @staticmethod
    def _ask_for_usage(ctx: RequestContext) -> None:
        """Streams: ask for the usage event (to count tokens); the client gets it only if it asked."""
        ctx.stream = bool(ctx.payload.get("stream"))
        if ctx.stream and ctx.path != "/v1/embeddings":
            opts = ctx.payload.get("stream_options") or {}
            if not opts.get("include_usage"):
                ctx.payload["stream_options"] = {**opts, "include_usage": True}
                ctx.body, ctx.strip_usage = json.dumps(ctx.payload).encode(), True

    @staticmethod
    def _no_replica(ctx: RequestContext, tried: bool) -> GatewayError:
        if tried:
            return GatewayError(
                503,
                "The model replica is unavailable; retry shortly.",
                code="replica_unavailable",
                headers={"Retry-After": "2"},
            )
        return GatewayError(
            503,
            f"No healthy replica serves `{ctx.model}` right now; retry shortly.",
            code="no_replica",
            headers={"Retry-After": "2"},
        )

    def _for_replica(self, ctx: RequestContext, served: dict) -> bytes:
        """The body for a replica that serves ctx.model as `served` (its route entry);
        sets ctx.rename and the record's version."""
        internal = served.get("internal", ctx.model)
        sent, ctx.rename = ctx.body, None
        if internal != ctx.model:
            # The alias's current version is loaded under a versioned name.
            sent = json.dumps({**ctx.payload, "model": internal}).encode()
            ctx.rename = (f'"model":"{internal}"'.encode(), f'"model":"{ctx.model}"'.encode())
        self.recorder.served_by(ctx, served.get("version"), served.get("sha256"))
        return sent

    async def _replica_for(
        self, ctx: RequestContext, hashes: list[int], exclude: frozenset[str], deadline: float
    ) -> Choice | None:
        """The replica for `ctx`, waiting until `deadline` for the route table to
        name a live one (just deployed, or a replica is being replaced)."""
        choice = self.router.choose(ctx, hashes, exclude)
        while choice is None and time.monotonic() < deadline:
            await self.refresh_routes()
            choice = self.router.choose(ctx, hashes, exclude)
            if choice is None:
                await asyncio.sleep(0.25)
        return choice

    async def _exchange(self, ctx: RequestContext, url: str, body: bytes) -> web.StreamResponse:
        """Send `body` to the replica at `url` and relay its answer.

        Raises:
            Unreachable: no answer was started (the caller may try another replica).
        """
        if self.local is not None and url == self.local.url:
            return await call_local(ctx, self.recorder, self.local, body)
        try:
            upstream = await self.session.post(
                url + ctx.path,
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Request-Id": ctx.request_id,
                    "Authorization": self.engine_auth,
                },
            )
        except (TimeoutError, ClientConnectorError, ServerDisconnectedError) as exc:
            # Refused or timed out connecting, or a pooled connection the engine closed
            # as it stopped: no answer was started, so the caller may try elsewhere.
            raise Unreachable(type(exc).__name__) from exc
        async with upstream:
            if not ctx.stream or upstream.status != 200:
                return await self._whole(ctx, url, upstream)
            relay = SseRelay(ctx, self.recorder)
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
                log.warning("%s: replica %s failed mid-stream (%s)", ctx.request_id, url, exc)
                return await relay.fail(REPLICA_LOST)
            return await relay.finish(200)

    async def _whole(self, ctx: RequestContext, url: str, upstream) -> web.StreamResponse:
        """Relay an answer that is not a 200 event stream, read whole."""
        content_type = upstream.headers.get("Content-Type", "application/json")
        try:
            content = await upstream.read()
        except ClientError as exc:
            log.warning("%s: replica %s failed mid-answer (%s)", ctx.request_id, url, exc)
            await self.recorder.finish(ctx, REPLICA_LOST.status, error=REPLICA_LOST.code)
            return error_response(REPLICA_LOST, ctx.request_id)
        return await buffered(ctx, self.recorder, upstream.status, content, content_type)
