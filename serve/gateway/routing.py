"""Where the engines are. Each engine replica publishes its URL in Ray's
internal KV store and refreshes it on every Serve health check; the gateway
reads the table every couple of seconds and sends each request to the live
replica with the fewest requests in flight."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

NAMESPACE = "sekisho"
STALE_AFTER_S = 45.0


def engine_key(app: str, deployment: str, replica: str) -> bytes:
    return f"engines/{app}/{deployment}/{replica}".encode()


def publish(app: str, deployment: str, replica: str, url: str) -> None:
    """Called by an engine replica (at start and at each health check)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(engine_key(app, deployment, replica),
                                 json.dumps({"url": url, "ts": time.time()}).encode(),
                                 overwrite=True, namespace=NAMESPACE)


def withdraw(app: str, deployment: str, replica: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(engine_key(app, deployment, replica), namespace=NAMESPACE)


def read_table(app: str) -> dict[str, list[str]]:
    """deployment -> URLs of its replicas that reported in the last STALE_AFTER_S."""
    from ray.experimental import internal_kv

    prefix = f"engines/{app}/".encode()
    table: dict[str, list[str]] = {}
    now = time.time()
    for key in internal_kv._internal_kv_list(prefix, namespace=NAMESPACE):
        raw = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        if not raw:
            continue
        entry = json.loads(raw)
        if now - entry["ts"] <= STALE_AFTER_S:
            deployment = key.decode()[len(prefix):].split("/", 1)[0]
            table.setdefault(deployment, []).append(entry["url"])
    return table


@dataclass
class Upstreams:
    """Live engine URLs per deployment, with requests in flight per URL."""

    table: dict[str, list[str]] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)
    down_until: dict[str, float] = field(default_factory=dict)

    def update(self, table: dict[str, list[str]]) -> None:
        self.table = table

    def pick(self, deployment: str) -> str | None:
        now = time.monotonic()
        urls = [u for u in self.table.get(deployment, []) if self.down_until.get(u, 0) <= now]
        if not urls:
            return None
        return min(urls, key=lambda u: self.inflight.get(u, 0))

    def mark_down(self, url: str, seconds: float = 5.0) -> None:
        self.down_until[url] = time.monotonic() + seconds
