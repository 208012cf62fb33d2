"""Autoscaling settings of a serve app: validation, what Ray Serve receives, the
policy that sizes the engines by their own load, and the load read from vLLM's
gauges (the end-to-end run is tests/serve/test_multi_model_app.py)."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from foundation import ConfigError
from serve import ServeAppConfig
from serve.autoscaling import (
    LOAD_METRIC,
    LOAD_PATH,
    EngineLoadEndpoint,
    engine_load_policy,
    gauge_load,
    parse_load,
    ray_autoscaling_config,
)


def _app(tmp_path, model_yaml: str):
    p = tmp_path / "app.yaml"
    p.write_text(f"name: a\nmodels:\n  - name: m\n    source: {tmp_path}\n{model_yaml}")
    return p


def test_num_replicas_and_autoscaling_are_mutually_exclusive(tmp_path):
    p = _app(tmp_path, "    num_replicas: 2\n    autoscaling:\n      max_replicas: 3\n")
    with pytest.raises(ConfigError) as err:
        ServeAppConfig.from_yaml(p)
    msg = str(err.value)
    assert f"{p}:7: models.0.autoscaling:" in msg and "mutually exclusive" in msg


@pytest.mark.parametrize(
    "body, where, words",
    [
        (
            "      min_replicas: 3\n      max_replicas: 2\n",
            "models.0.autoscaling",
            "max_replicas (2) is below min_replicas (3)",
        ),
        (
            "      min_replicas: 0\n      max_replicas: 2\n",
            "models.0.autoscaling.min_replicas",
            "greater than or equal to 1",
        ),
        ("      min_replicas: 1\n", "models.0.autoscaling.max_replicas", "required field is missing"),
        (
            "      max_replicas: 2\n      target_ongoing_requests: 0\n",
            "models.0.autoscaling.target_ongoing_requests",
            "greater than 0",
        ),
        (
            "      max_replicas: 2\n      upscale_delay: 5\n",
            "models.0.autoscaling.upscale_delay",
            "unknown key",
        ),
    ],
)
def test_bad_autoscaling_settings_name_the_field(tmp_path, body, where, words):
    with pytest.raises(ConfigError) as err:
        ServeAppConfig.from_yaml(_app(tmp_path, "    autoscaling:\n" + body))
    assert f": {where}: " in str(err.value) and words in str(err.value)


def test_settings_become_ray_serves_autoscaling_config(tmp_path):
    cfg = ServeAppConfig.model_validate(
        {
            "name": "a",
            "models": [
                {
                    "name": "m",
                    "source": str(tmp_path),
                    "engine": {"max_num_seqs": 12},
                    "autoscaling": {
                        "min_replicas": 2,
                        "max_replicas": 5,
                        "upscale_delay_s": 3,
                        "downscale_delay_s": 40,
                        "look_back_s": 10,
                    },
                },
                {"name": "f", "source": str(tmp_path), "num_replicas": 3},
                {"name": "d", "source": str(tmp_path)},
            ],
        }
    )
    auto, fixed, default = cfg.models
    assert (auto.max_replicas, fixed.max_replicas, default.max_replicas) == (5, 3, 1)
    assert ray_autoscaling_config(fixed) is None and ray_autoscaling_config(default) is None
    rc = ray_autoscaling_config(auto)
    assert (rc.min_replicas, rc.initial_replicas, rc.max_replicas) == (2, None, 5)  # a roll keeps the count
    assert rc.target_ongoing_requests == 12  # default: the engine's batch, full
    assert (rc.upscale_delay_s, rc.downscale_delay_s, rc.look_back_period_s) == (3, 40, 10)
    assert rc.metrics_interval_s < rc.look_back_period_s
    assert rc.policy.policy_function == "serve.autoscaling:engine_load_policy"
    assert rc.policy.get_policy() is not None  # pickled for the controller

    from ray import serve

    from serve.engine import VLLMEngine

    # Ray accepts it on the engine deployment (no num_replicas next to it).
    serve.deployment(VLLMEngine).options(name="engine-m", autoscaling_config=rc)


def _ctx(loads: dict[str, float], running: list[str], target: float, current_target: int):
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    dep = DeploymentID(name="engine-m", app_name="a")
    ids = {name: ReplicaID(unique_id=name, deployment_id=dep) for name in {*loads, *running}}
    config = AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=target)
    return AutoscalingContext(
        deployment_id=dep,
        deployment_name=dep.name,
        app_name=dep.app_name,
        current_num_replicas=len(running),
        target_num_replicas=current_target,
        running_replicas=[ids[r] for r in running],
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics={LOAD_METRIC: {ids[r]: v for r, v in loads.items()}} if loads else {},
        raw_metrics={},
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=4,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=0.0,
        config=config,
    )


@pytest.mark.parametrize(
    "loads, running, target, current, want",
    [
        ({"r1": 6.0}, ["r1"], 2, 1, 3),  # one busy replica: three would carry it
        ({"r1": 3.0, "r2": 3.5}, ["r1", "r2"], 2, 2, 4),  # the whole deployment's load counts
        ({"r1": 0.0, "r2": 0.0}, ["r1", "r2"], 2, 2, 1),  # idle: down to one (bounds and delays: Serve's)
        ({"r1": 0.5}, ["r1"], 2, 1, 1),
        ({"r1": 4.0}, ["r1"], 4, 1, 1),  # exactly on target
        ({"r1": 4.0, "gone": 9.0}, ["r1"], 4, 1, 1),  # a stopped replica's last report is ignored
        ({}, ["r1", "r2"], 2, 2, 2),  # nothing reported yet: keep the current target
    ],
)
def test_policy_sizes_replicas_by_engine_load(loads, running, target, current, want):
    desired, state = engine_load_policy(_ctx(loads, running, target, current))
    assert desired == want
    if loads:
        assert math.isclose(state["total_load"], sum(loads[r] for r in running if r in loads))


def _vllm_gauges(running: float, waiting: float) -> CollectorRegistry:
    """The gauges vLLM exports (names, labels), in a registry of their own."""
    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    Gauge("vllm:num_requests_running", "running", labels, registry=reg).labels("m", "0").set(running)
    Gauge("vllm:num_requests_waiting", "waiting", labels, registry=reg).labels("m", "0").set(waiting)
    Gauge("vllm:num_requests_waiting_by_reason", "by reason", labels + ["reason"], registry=reg).labels(
        "m", "0", "capacity"
    ).set(waiting)
    Gauge("vllm:kv_cache_usage_perc", "other", labels, registry=reg).labels("m", "0").set(0.5)
    return reg


def test_load_is_running_plus_waiting_from_vllms_gauges():
    reg = _vllm_gauges(5, 3)
    assert gauge_load(reg) == 8  # in-process, as the engine's load endpoint reads it
    assert parse_load(generate_latest(reg).decode()) == 8  # from /metrics text, the fallback
    assert parse_load("") == 0 and gauge_load(CollectorRegistry()) == 0


def test_load_endpoint_answers_its_path_and_passes_the_rest_through():
    seen = []

    async def vllm_app(scope, receive, send):
        seen.append(scope["path"])

    async def call(path: str) -> list[dict]:
        sent = []

        async def send(message):
            sent.append(message)

        await EngineLoadEndpoint(vllm_app, _vllm_gauges(2, 1))({"type": "http", "path": path}, None, send)
        return sent

    start, body = asyncio.run(call(LOAD_PATH))
    assert start["status"] == 200 and json.loads(body["body"]) == {"load": 3.0}
    assert asyncio.run(call("/v1/chat/completions")) == [] and seen == ["/v1/chat/completions"]
