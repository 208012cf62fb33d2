"""Prometheus metrics of one gateway process: requests, tokens, latency,
time to first token and rejections by reason, per model, and how long the
audit ledger takes to record a request as admitted. Requests for a model
the app does not serve share one series (model="unknown"): a client cannot
grow the metrics by sending new names."""

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

    def observe(self, model: str | None, status: int, latency_s: float, prompt: int, completion: int) -> None:
        m = model if model in self.known_models else UNKNOWN_MODEL
        self.requests.labels(m, str(status)).inc()
        self.latency.labels(m).observe(latency_s)
        if prompt:
            self.tokens.labels(m, "prompt").inc(prompt)
        if completion:
            self.tokens.labels(m, "completion").inc(completion)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
