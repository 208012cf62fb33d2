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
"""

from __future__ import annotations

import json
import logging
import os

ENV = "SEKISHO_EMBEDDED_GATEWAY"
log = logging.getLogger("sekisho.gateway")


class LocalEngine:
    """The vLLM server in this process: its URL (as the route table names it)
    and its ASGI app."""

    def __init__(self, url: str, app, engine_key: str):
        self.url, self.app = url, app
        self._headers = [(b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {engine_key}".encode())]

    def scope(self, path: str, request_id: str, length: int, client: str | None) -> dict:
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
                "query_string": b"", "root_path": "", "client": (client or "127.0.0.1", 0),
                "server": ("127.0.0.1", 0), "app": self.app,
                "headers": self._headers + [(b"x-request-id", request_id.encode()),
                                            (b"content-length", str(length).encode())]}


def settings() -> dict | None:
    raw = os.environ.get(ENV)
    return json.loads(raw) if raw else None


class EmbeddedGateway:
    """ASGI middleware: passes vLLM's own traffic through untouched and runs the
    gateway's server next to it for the lifetime of vLLM's server."""

    def __init__(self, app):
        self.app = app
        self.runner = None

    async def __call__(self, scope, receive, send):
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
                    await send({"type": "lifespan.startup.failed",
                                "message": f"sekisho gateway could not start: {exc}"})
                    return
            await send(message)

        await self.app(scope, on_receive, on_send)

    async def start(self, root) -> None:
        cfg = settings()
        if cfg is None:
            raise RuntimeError(f"{ENV} is not set")
        from cluster import offline

        offline.apply()
        from aiohttp import web

        from serve.gateway.limits import RequestLimits
        from serve.gateway.server import Gateway, GatewayOptions, ModelRoute

        opts = cfg["opts"]
        options = GatewayOptions(**{**opts, "limits": RequestLimits(**opts["limits"]),
                                    "routes_file": cfg["routes_file"], "route_refresh_s": 1.0})
        key = os.environ.get("VLLM_API_KEY", "")
        local = LocalEngine(cfg["local_url"], root, key)
        gateway = Gateway(options, {k: ModelRoute(**v) for k, v in cfg["routes"].items()}, key, local=local)
        self.runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False,
                                    shutdown_timeout=30)
        await self.runner.setup()
        site = web.TCPSite(self.runner, cfg["host"], cfg["port"], reuse_port=True, backlog=1024)
        await site.start()
        log.info("sekisho gateway listening on %s:%s", cfg["host"], cfg["port"])

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
