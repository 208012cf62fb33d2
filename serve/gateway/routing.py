"""Where the engines are. Each engine replica publishes its URL in Ray's
internal KV store (serve.ray_state) and refreshes it on every Serve health
check, and every second with its gateway's routing state (load, the prompt
prefixes and adapters it routed, serve.gateway.router); each gateway reads the
table every second or two and picks a replica per request (serve.gateway.router)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from serve import ray_state

STALE_AFTER_S = 45.0


def publish(
    app: str,
    deployment: str,
    replica: str,
    url: str,
    names: dict | None = None,
    state: dict | None = None,
    lora_slots: int | None = None,
    cache_tokens: int | None = None,
) -> None:
    """Called by an engine replica (at start, at each health check, after an alias
    moved, every second with its gateway's state). `names`: served model name ->
    {"internal", "version", "sha256"}; `state`: what its embedded gateway's router
    publishes (serve.gateway.router.Router.state); `lora_slots`: adapters its engine
    keeps loaded at once; `cache_tokens`: its engine's KV cache size in tokens."""
    entry = {"url": url, "ts": time.time(), "names": names or {}}
    if state is not None:
        entry["state"] = state
    if lora_slots is not None:
        entry["lora_slots"] = lora_slots
    if cache_tokens is not None:
        entry["cache_tokens"] = cache_tokens
    ray_state.publish_engine(app, deployment, replica, entry)


def replica_id(url: str) -> str:
    """A replica's name in answers (X-Sekisho-Replica) and operators' views: opaque, stable per URL."""
    import hashlib

    return hashlib.sha256(url.encode()).hexdigest()[:12]


def withdraw(app: str, deployment: str, replica: str) -> None:
    ray_state.withdraw_engine(app, deployment, replica)


def read_table(app: str) -> dict[str, list[dict]]:
    """deployment -> entries ({"url", "names"}) of its replicas that reported in
    the last STALE_AFTER_S."""
    table: dict[str, list[dict]] = {}
    now = time.time()
    for deployment, entry in ray_state.engine_entries(app):
        if now - entry["ts"] <= STALE_AFTER_S:
            table.setdefault(deployment, []).append(entry)
    return table


def write_table_file(path: str, table: dict[str, list[dict]]) -> None:
    """Atomically replace the route table an embedded gateway reads."""
    import os

    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(table, f)
    os.replace(tmp, path)


def read_table_file(path: str) -> dict[str, list[dict]]:
    """The table written by write_table_file, without entries gone stale."""
    try:
        with open(path) as f:
            table = json.load(f)
    except FileNotFoundError:
        return {}
    now = time.time()
    return {d: [e for e in entries if now - e["ts"] <= STALE_AFTER_S] for d, entries in table.items()}


@dataclass
class Upstreams:
    """Live engine URLs per deployment, with requests in flight per URL."""

    table: dict[str, list[dict]] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)
    down_until: dict[str, float] = field(default_factory=dict)

    def update(self, table: dict[str, list[dict]]) -> None:
        self.table = table

    def live(self, deployment: str, exclude: frozenset[str] = frozenset()) -> list[dict]:
        """The entries of `deployment`'s replicas not marked down, none in `exclude`
        (those a request already failed to reach), in the table's order."""
        now = time.monotonic()
        return [
            e
            for e in self.table.get(deployment, [])
            if self.down_until.get(e["url"], 0) <= now and e["url"] not in exclude
        ]

    def pick(
        self, deployment: str, prefer: str | None = None, exclude: frozenset[str] = frozenset()
    ) -> dict | None:
        """The live replica of `deployment` at `prefer` (the engine in the caller's own
        process), else the one with the fewest requests in flight; never one in
        `exclude`."""
        live = self.live(deployment, exclude)
        if not live:
            return None
        for e in live:
            if e["url"] == prefer:
                return e
        return min(live, key=lambda e: self.inflight.get(e["url"], 0))

    def mark_down(self, url: str, seconds: float = 5.0) -> None:
        self.down_until[url] = time.monotonic() + seconds


def write_state_file(path: str, state: dict) -> None:
    """An embedded gateway's routing state, for its engine replica to publish."""
    write_table_file(path, state)


def read_state_file(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def replica_views(app: str) -> dict[str, list[dict]]:
    """deployment -> per live replica, what `sekisho serve status` shows of its
    routing: id, load, adapters held, its KV cache size, and prefix hits and
    forwards as every gateway of the app counted them (from the states they published)."""
    table = read_table(app)
    states = [e["state"] for entries in table.values() for e in entries if e.get("state")]
    views: dict[str, list[dict]] = {}
    for deployment, entries in table.items():
        for e in entries:
            url = e["url"]
            adapters = set()
            for s in states:
                adapters.update((s.get("adapters") or {}).get(url, ()))
            views.setdefault(deployment, []).append(
                {
                    "replica": replica_id(url),
                    "load": (e.get("state") or {}).get("load", 0),
                    "adapters": len(adapters),
                    "lora_slots": e.get("lora_slots"),
                    "cache_tokens": e.get("cache_tokens"),
                    "prefix_hits": sum((s.get("prefix_hits") or {}).get(url, 0) for s in states),
                    "forwarded_in": sum((s.get("forwards") or {}).get(url, 0) for s in states),
                }
            )
    return views
