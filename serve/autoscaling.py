"""Engine replicas sized by the engines' own load (Ray Serve custom autoscaling).

Clients reach the engine replicas directly (the gateway runs inside each
replica's vLLM server on the app's port, SO_REUSEPORT), so no request passes a
Serve handle or proxy and Serve's own request counting sees none. Instead:

- every engine replica reports its load to Serve through the
  `record_autoscaling_stats` hook (Ray Serve custom autoscaling metrics): vLLM's
  running + waiting requests, read in vLLM's process from its own two gauges by
  `EngineLoadEndpoint` (a middleware answering LOAD_PATH on the engine's internal
  port: about 0.1 ms, where rendering all of vLLM's /metrics takes ~12 ms of the
  API server's event loop);
- `engine_load_policy`, run by the Serve controller, sums that load over the
  running replicas and asks for ceil(total / target_ongoing_requests) replicas.
  Serve wraps the policy with the config's upscale/downscale delays and the
  min/max bounds.

A new replica on a node listens on the same public port, so the kernel hands it
new connections at once; a replica that goes drains first (serve.gateway.embedded).

The policy is pickled by value into the Serve controller (which need not be
able to import Sekisho), so it uses the standard library only.
"""

from __future__ import annotations

import math
import re
import warnings

LOAD_METRIC = "sekisho_engine_load"
# vLLM's gauges (vllm/v1/metrics/loggers.py) whose sum is the engine's load.
LOAD_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def engine_load_policy(ctx):
    """Ray Serve autoscaling policy: (desired replicas, policy state).

    `ctx` is a ray.serve.config.AutoscalingContext; `aggregated_metrics` holds
    each replica's LOAD_METRIC averaged over the look-back window. With no
    report yet (replicas starting) the current target stands.
    """
    loads = (ctx.aggregated_metrics or {}).get(LOAD_METRIC) or {}
    reported = [loads[r] for r in ctx.running_replicas if r in loads]
    if not reported:
        return ctx.target_num_replicas, {}
    total = float(sum(reported))
    desired = max(1, math.ceil(total / ctx.config.target_ongoing_requests))
    return desired, {"total_load": total}


LOAD_PATH = "/sekisho/load"


def gauge_load(registry=None) -> float:
    """Running + waiting requests from vLLM's gauges in this process's Prometheus
    registry (only those two collectors are read)."""
    if registry is None:
        from prometheus_client import REGISTRY as registry
    return float(
        sum(
            s.value
            for m in registry.restricted_registry(LOAD_GAUGES).collect()
            for s in m.samples
            if s.name in LOAD_GAUGES
        )
    )


class EngineLoadEndpoint:
    """ASGI middleware for vLLM's server (`--middleware`, autoscaled engines only):
    GET LOAD_PATH answers {"load": running + waiting}; everything else passes
    through untouched."""

    def __init__(self, app, registry=None):
        self.app, self.registry = app, registry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != LOAD_PATH:
            return await self.app(scope, receive, send)
        import json

        body = json.dumps({"load": gauge_load(self.registry)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def parse_load(metrics_text: str) -> float:
    """Running + waiting requests from vLLM's Prometheus text (/metrics)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith("vllm:num_requests_"):
            continue
        if line.split("{", 1)[0].split(" ", 1)[0] in LOAD_GAUGES:
            total += float(line.rsplit(" ", 1)[1])
    return total


def parse_cache_tokens(metrics_text: str) -> int | None:
    """The KV cache's size in tokens (blocks x block size) from vLLM's
    `vllm:cache_config_info` gauge (/metrics), or None where it is not shown."""
    for line in metrics_text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("{", 1)[1].rsplit("}", 1)[0]))
            try:
                return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
            except (KeyError, ValueError):
                return None
    return None


def metrics_interval_s(look_back_s: float) -> float:
    """How often each replica records and pushes its load: five points per window,
    at most every 0.5 s, at least every 10 s."""
    return min(10.0, max(0.5, look_back_s / 5))


def ray_autoscaling_config(spec):
    """Ray Serve's autoscaling_config for a model's engine deployment
    (serve.config.ModelSpec): a ray.serve.config.AutoscalingConfig, or None for a
    fixed replica count."""
    a = spec.autoscaling
    if a is None:
        return None
    from ray.serve.config import AutoscalingConfig

    with warnings.catch_warnings():
        # metrics_interval_s is marked deprecated in favour of a process-wide
        # environment variable; it is still what a replica's push loop uses.
        warnings.simplefilter("ignore", DeprecationWarning)
        cfg = AutoscalingConfig(
            # No initial_replicas: Serve would go back to it on every redeploy (a base
            # model's roll); without, a new app starts at min_replicas and a roll keeps
            # the current count.
            min_replicas=a.min_replicas,
            max_replicas=a.max_replicas,
            target_ongoing_requests=a.target_ongoing_requests or float(spec.engine.max_num_seqs),
            upscale_delay_s=a.upscale_delay_s,
            downscale_delay_s=a.downscale_delay_s,
            look_back_period_s=a.look_back_s,
            metrics_interval_s=metrics_interval_s(a.look_back_s),
            policy={"policy_function": f"{__name__}:engine_load_policy"},
        )
    return cfg
