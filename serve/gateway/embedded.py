"""The gateway embedded in each engine replica's vLLM server.

vLLM loads `EmbeddedGateway` with `--middleware`. When vLLM's server has started,
the middleware starts the gateway's aiohttp server inside the same process and
event loop, on the app's public port (SO_REUSEPORT: every engine replica on a
node shares it; the kernel spreads connections). A request for a model this
process holds is authenticated, checked and audited, then answered by calling
vLLM's ASGI app as a function: tokens cross no socket and no other process
between the engine and the client. A request for a model another replica holds
goes there over HTTP, as a separate gateway would send it.

Settings come from the environment variable SEKISHO_EMBEDDED_GATEWAY (JSON, set
by serve.engine); vLLM's own API key (VLLM_API_KEY) still guards its internal port.

Draining (a replica leaving, e.g. during a rolling update): the replica sends
SIGUSR1 before it stops vLLM. For DRAIN_S seconds every answer carries
`Connection: close`, so clients open their next connection to a listener that
stays (the kernel hands it to another replica sharing the port); then the
listener closes, requests in flight finish, and the gateway writes the
`drained_file` the replica waits on. A replica with no other listener on its
node's port (an app's last replica there, `serve down`) sends SIGUSR2: no client
could move, so the listener closes at once and only requests in flight finish. Connections queued on the closing listener
move to the others only with `sysctl net.ipv4.tcp_migrate_req=1` (per network
namespace); without it a few new connections are refused at that moment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path

ENV = "SEKISHO_EMBEDDED_GATEWAY"
DRAIN_S = 5.0
log = logging.getLogger("sekisho.gateway")


# The routes that put work on the engine: their requests in flight are its load.
WORK_PATHS = frozenset(("/v1/chat/completions", "/v1/completions", "/v1/embeddings"))


class LocalEngine:
    """The vLLM server in this process: its URL (as the route table names it),
    its ASGI app, and its load (`load()`: requests in flight at it, whichever
    gateway sent them)."""

    def __init__(self, url: str, app, engine_key: str, load=lambda: 0):
        self.url, self.app, self.load = url, app, load
        self._headers = [
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {engine_key}".encode()),
        ]

    def scope(self, path: str, request_id: str, length: int, client: str | None) -> dict:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "client": (client or "127.0.0.1", 0),
            "server": ("127.0.0.1", 0),
            "app": self.app,
            "headers": self._headers
            + [(b"x-request-id", request_id.encode()), (b"content-length", str(length).encode())],
        }


def _log_to_stderr() -> None:
    """The gateway's own lines (listening, draining, failovers) go to the engine's
    log beside vLLM's; vLLM configures only its own logger."""
    root = logging.getLogger("sekisho")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(
                "(sekisho pid=%(process)d) %(levelname)s %(asctime)s %(name)s: %(message)s", "%m-%d %H:%M:%S"
            )
        )
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def settings() -> dict | None:
    raw = os.environ.get(ENV)
    return json.loads(raw) if raw else None


class EmbeddedGateway:
    """ASGI middleware: passes vLLM's own traffic through untouched and runs the
    gateway's server next to it for the lifetime of vLLM's server."""

    def __init__(self, app):
        self.app = app
        self.inflight = 0  # requests at the engine's work routes: this gateway's and forwarded ones
        self.runner = None
        self.draining = False
        self.drained_file: str | None = None
        self.metrics_server = None  # this replica's own metrics port (serve.gateway.scrape)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in WORK_PATHS:
            self.inflight += 1
            try:
                return await self.app(scope, receive, send)
            finally:
                self.inflight -= 1
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        root = scope.get("app")

        async def on_receive():
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.stop()  # stop taking requests before vLLM's engine goes
            return message

        async def on_send(message):
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self.start(root)
                except Exception as exc:  # vLLM then exits; the replica reports why
                    log.exception("the embedded gateway could not start")
                    await send(
                        {
                            "type": "lifespan.startup.failed",
                            "message": f"sekisho gateway could not start: {exc}",
                        }
                    )
                    return
            await send(message)

        await self.app(scope, on_receive, on_send)

    async def start(self, root) -> None:
        cfg = settings()
        if cfg is None:
            raise RuntimeError(f"{ENV} is not set")
        from foundation import offline

        offline.apply()
        _log_to_stderr()
        from aiohttp import web

        from serve.gateway.context import ModelRoute
        from serve.gateway.limits import RequestLimits
        from serve.gateway.server import SERVER_OPTIONS, Gateway, GatewayOptions

        opts = cfg["opts"]
        options = GatewayOptions(
            **{
                **opts,
                "limits": RequestLimits(**opts["limits"]),
                "routes_file": cfg["routes_file"],
                "route_refresh_s": 1.0,
                "state_file": cfg.get("state_file"),
            }
        )
        key = os.environ.get("VLLM_API_KEY", "")
        local = LocalEngine(cfg["local_url"], root, key, load=lambda: self.inflight)
        gateway = Gateway(options, {k: ModelRoute(**v) for k, v in cfg["routes"].items()}, key, local=local)
        app = gateway.app()
        app.on_response_prepare.append(self._close_when_draining)
        self.drained_file = cfg.get("drained_file")
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=30, **SERVER_OPTIONS
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, cfg["host"], cfg["port"], reuse_port=True, backlog=1024)
        await site.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: asyncio.ensure_future(self.drain(cfg.get("drain_s", DRAIN_S)))
        )
        # No other listener shares the port: no client can move, so stop at once.
        loop.add_signal_handler(signal.SIGUSR2, lambda: asyncio.ensure_future(self.drain(0.0)))
        if cfg.get("metrics"):
            from serve.gateway.scrape import ReplicaMetricsServer

            self.metrics_server = ReplicaMetricsServer(gateway, cfg["metrics"])
            await self.metrics_server.start()
        log.info("sekisho gateway listening on %s:%s", cfg["host"], cfg["port"])

    async def _close_when_draining(self, _request, response) -> None:
        if self.draining:
            # The hook runs after aiohttp chose the headers, before it writes them.
            response.force_close()
            response.headers["Connection"] = "close"

    async def drain(self, drain_s: float) -> None:
        """Move clients to the other replicas, then stop (see the module docstring)."""
        if self.draining:
            return
        self.draining = True
        log.info("sekisho gateway draining for %ss", drain_s)
        await asyncio.sleep(drain_s)
        await self.stop()
        if self.drained_file:
            Path(self.drained_file).write_text("drained\n")

    async def stop(self) -> None:
        if self.metrics_server is not None:
            server, self.metrics_server = self.metrics_server, None
            await server.stop()
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
