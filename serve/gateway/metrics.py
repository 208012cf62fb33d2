"""Prometheus metrics of one gateway process: requests, tokens, latency,
time to first token and rejections by reason, per model; tokens per API key
(keys are made by admins, so their count is bounded); how long the audit
ledger takes to record a request as admitted and to commit its completion.
Requests for a model the app does not serve share one series
(model="unknown"): a client cannot grow the metrics by sending new names.

`render_with` adds other registries of the same process (vLLM's engine
metrics) for the replica's own metrics port (serve.gateway.scrape)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

UNKNOWN_MODEL = "unknown"
AUDIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    """Args:
    known_models: the model names the app serves (each its own series).
    """

    def __init__(self, known_models=()):
        self.known_models = frozenset(known_models)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sekisho_requests",
            "Requests by model and HTTP status",
            ["model", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "sekisho_tokens",
            "Tokens by model and kind (prompt|completion)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sekisho_request_latency_seconds",
            "Request latency",
            ["model"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "sekisho_time_to_first_token_seconds",
            "Time to first streamed token",
            ["model"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.rejections = Counter(
            "sekisho_rejections",
            "Requests the gateway answered itself, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.key_tokens = Counter(
            "sekisho_key_tokens",
            "Tokens by API key name and kind (prompt|completion)",
            ["key", "kind"],
            registry=self.registry,
        )
        self.audit_commit = Histogram(
            "sekisho_audit_commit_seconds",
            "Time to commit a request's completed audit record (before its last byte goes out)",
            buckets=AUDIT_BUCKETS,
            registry=self.registry,
        )
        self.audit_admit = Histogram(
            "sekisho_audit_admit_seconds",
            "Time to record a request as admitted, durably, before its answer starts (fail closed)",
            buckets=AUDIT_BUCKETS,
            registry=self.registry,
        )
        self.failovers = Counter(
            "sekisho_upstream_failovers",
            "Requests sent to another replica after the one picked could not be reached",
            ["model"],
            registry=self.registry,
        )

    def observe(
        self,
        model: str | None,
        status: int,
        latency_s: float,
        prompt: int,
        completion: int,
        key: str | None = None,
    ) -> None:
        """One finished request; `key`: the name of the API key it came with, if any."""
        m = model if model in self.known_models else UNKNOWN_MODEL
        self.requests.labels(m, str(status)).inc()
        self.latency.labels(m).observe(latency_s)
        for kind, n in (("prompt", prompt), ("completion", completion)):
            if n:
                self.tokens.labels(m, kind).inc(n)
                if key:
                    self.key_tokens.labels(key, kind).inc(n)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def render_with(self, *others: CollectorRegistry) -> tuple[bytes, str]:
        """This gateway's metrics followed by those of `others` (no name in common)."""
        return b"".join(generate_latest(r) for r in (self.registry, *others)), CONTENT_TYPE_LATEST
