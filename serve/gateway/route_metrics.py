"""Prometheus metrics of the gateway's routing (serve.gateway.router), on the
gateway's own registry beside serve.gateway.metrics: per replica, the load it
is believed to carry, the adapters it holds, the requests sent there with a
cached prefix and the requests forwarded there from this process; and why
each request went where it went. A replica that leaves loses its series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REASONS = ("prefix", "adapter", "load", "local", "connection")


class RouteMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.load = Gauge(
            "sekisho_route_replica_load",
            "Requests in flight at each engine replica, as this gateway last knew them",
            ["replica"],
            registry=registry,
        )
        self.adapters = Gauge(
            "sekisho_route_replica_adapters",
            "Adapters each engine replica holds, as the gateways routed them (at most its LoRA slots)",
            ["replica"],
            registry=registry,
        )
        self.prefix_hits = Counter(
            "sekisho_route_prefix_hits",
            "Requests this gateway sent to a replica that held a prefix of their prompt",
            ["replica"],
            registry=registry,
        )
        self.forwards = Counter(
            "sekisho_route_forwards",
            "Requests this gateway forwarded to an engine replica outside its own process",
            ["replica"],
            registry=registry,
        )
        self.decisions = Counter(
            "sekisho_route_decisions",
            "Why each request went to the replica it went to (prefix, adapter, room, load, local, connection)",
            ["reason"],
            registry=registry,
        )
        self._replicas: set[str] = set()

    def routed(self, replica: str, reason: str, prefix_hit: bool, forwarded: bool) -> None:
        self.decisions.labels(reason).inc()
        if prefix_hit:
            self.prefix_hits.labels(replica).inc()
        if forwarded:
            self.forwards.labels(replica).inc()

    def replicas(self, state: dict[str, tuple[float, int]]) -> None:
        """Set each live replica's (load, adapters held); drop the series of those gone."""
        for url, (load, adapters) in state.items():
            self.load.labels(url).set(load)
            self.adapters.labels(url).set(adapters)
        for gone in self._replicas - state.keys():
            for metric in (self.load, self.adapters, self.prefix_hits, self.forwards):
                try:
                    metric.remove(gone)
                except KeyError:
                    pass
        self._replicas = set(state)
