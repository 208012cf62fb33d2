"""The gateway as a Ray Serve deployment: Serve places, health-checks and
restarts it; each replica runs the aiohttp server on its own thread and event
loop, listening on the app's port (SO_REUSEPORT lets replicas on one node share
it). Requests never pass through Serve's HTTP proxy or handles."""

from __future__ import annotations

import asyncio
import threading

from foundation import offline


class GatewayReplica:
    def __init__(
        self, host: str, port: int, opts: dict, routes: dict, engine_key: str, engines: list | None = None
    ):
        # `engines` are bound so that Serve deploys them with this app; requests
        # reach them over HTTP (see routing), not through their handles.
        offline.apply()
        from serve.gateway.context import ModelRoute
        from serve.gateway.limits import RequestLimits
        from serve.gateway.server import Gateway, GatewayOptions

        options = GatewayOptions(**{**opts, "limits": RequestLimits(**opts["limits"])})
        self.gateway = Gateway(options, {k: ModelRoute(**v) for k, v in routes.items()}, engine_key)
        self.host, self.port = host, port
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name="sekisho-gateway", daemon=True)
        self.thread.start()
        self.started.wait(60)
        if self.error is not None:
            raise RuntimeError(f"gateway could not listen on {host}:{port}: {self.error}")

    def _serve(self) -> None:
        from aiohttp import web

        from serve.gateway.server import SERVER_OPTIONS

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        runner = web.AppRunner(self.gateway.app(), access_log=None, handle_signals=False, **SERVER_OPTIONS)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port, reuse_port=True, backlog=1024)
            loop.run_until_complete(site.start())
        except BaseException as exc:  # reported to the constructor
            self.error = exc
            self.started.set()
            return
        self.runner = runner
        self.started.set()
        loop.run_forever()

    def check_health(self) -> None:
        if not self.thread.is_alive():
            raise RuntimeError("the gateway's server thread has stopped")

    def __del__(self):
        loop, self.loop = getattr(self, "loop", None), None  # once, however often it is called
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), loop)
