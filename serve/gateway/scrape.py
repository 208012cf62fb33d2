"""Each engine replica's own metrics endpoint, and the file that tells Prometheus
where it is.

The replicas of an app share its public port (SO_REUSEPORT), so a scrape of the
public /metrics reaches whichever replica the kernel picks and its counters seem
to jump. Each embedded gateway therefore also listens on a port of its own, on
the node's address, where GET /metrics answers with this replica's gateway
metrics followed by vLLM's engine metrics of the same process (queue, KV-cache
use, time to first token, tokens). Like the public /metrics it answers loopback
callers, and other hosts only with an admin key.

Where it listens goes into a Prometheus file_sd file, one per replica, in the
Sekisho home's `metrics/targets/` folder (cluster.scrape_config renders the
config that reads it), labelled with the app, deployment, model and Serve
replica id. The replica rewrites its file every TOUCH_S and removes it when it
stops; a file untouched for STALE_S (its replica killed) is removed by any
other replica of any app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from pathlib import Path

from foundation.net import is_loopback

TOUCH_S = 10.0
STALE_S = 60.0
log = logging.getLogger("sekisho.gateway")


def replica_settings(app: str, deployment: str, model: str, replica: str, host: str) -> dict:
    """What an engine replica hands its embedded gateway (in SEKISHO_EMBEDDED_GATEWAY's
    "metrics"): where to listen and where to announce it."""
    from cluster.scrape_config import targets_dir
    from foundation import sekisho_home

    return {
        "host": host,
        "targets_dir": str(targets_dir(sekisho_home())),
        "labels": {"app": app, "deployment": deployment, "model": model, "replica": replica},
    }


def target_file(targets_dir: str, labels: dict) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{labels['app']}--{labels['replica']}")
    return Path(targets_dir) / f"{name}.json"


def engine_registry():
    """vLLM's metrics registry in this process (its own multiprocess collector where
    vLLM runs several API servers)."""
    from vllm.v1.metrics.prometheus import get_prometheus_registry

    return get_prometheus_registry()


class ReplicaMetricsServer:
    """The replica's metrics port, served from the gateway's event loop.

    Args:
        gateway: the replica's serve.gateway.server.Gateway (its metrics and keys).
        settings: replica_settings(...).
    """

    def __init__(self, gateway, settings: dict):
        self.gateway, self.settings = gateway, settings
        self.labels = dict(settings["labels"])
        self.file = target_file(settings["targets_dir"], self.labels)
        self.runner = None
        self.target: str | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.settings["host"], 0).start()
        host, port = self.runner.addresses[0][:2]
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            await asyncio.to_thread(self._announce)
        except OSError as exc:  # serving goes on; Prometheus finds the replica once the file is written
            log.warning("could not write the metrics target file %s: %s", self.file, exc)
        self._task = asyncio.create_task(self._keep_announcing())
        log.info("sekisho replica metrics on http://%s/metrics (target file %s)", self.target, self.file)

    async def metrics(self, request):
        from aiohttp import web

        from serve.gateway.errors import GatewayError
        from serve.gateway.relay import error_response

        if not is_loopback(request.remote):
            try:
                key = await self.gateway.authenticate(request)
            except GatewayError as err:
                return error_response(err)
            if not key.admin:
                return error_response(GatewayError(403, "/metrics needs an admin key.", code="forbidden"))
        body, content_type = self.gateway.metrics.render_with(engine_registry())
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _announce(self) -> None:
        """(Re)write this replica's file_sd entry; remove entries whose replica died."""
        folder = self.file.parent
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{self.file.name}.{os.getpid()}"
        tmp.write_text(json.dumps([{"targets": [self.target], "labels": self.labels}]))
        os.replace(tmp, self.file)
        now = time.time()
        for other in folder.glob("*.json"):
            try:
                if now - other.stat().st_mtime > STALE_S:
                    other.unlink()
            except FileNotFoundError:
                pass

    async def _keep_announcing(self) -> None:
        while True:
            await asyncio.sleep(TOUCH_S)
            try:
                await asyncio.to_thread(self._announce)
            except OSError as exc:  # shared storage away for a moment: the next round retries
                log.warning("could not write the metrics target file %s: %s", self.file, exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.file.unlink(missing_ok=True)
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
