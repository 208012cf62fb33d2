"""An engine deployment with autoscaling bounds (min 1, max 2; the chat engine
of the `multi_app` fixture, tests/serve/conftest.py) follows the load
its engines report: concurrent streamed requests through the gateway add a
replica, which takes connections on the app's port at once; when the load stops
it goes back to one, draining first. No request fails meanwhile."""

from __future__ import annotations

import threading
import time

import openai
import pytest

pytestmark = pytest.mark.e2e
APP, MODEL = "multi", "tiny-chat"  # as tests/serve/conftest.py deploys them
DEPLOYMENT = f"engine-{MODEL}"
HEAVY_CLIENTS = 3  # with the light one ~4 running requests against a target of 2 per replica: wants 2


def _replicas() -> dict:
    from ray import serve

    return dict(serve.status().applications[APP].deployments[DEPLOYMENT].replica_states)


def _wait_for(what: str, cond, within_s: float, errors: list) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < within_s, f"{what} within {within_s}s: replicas {_replicas()}, " \
                                                    f"{len(errors)} errors {errors[:2]}"
        time.sleep(1)
    return time.monotonic() - start


def _status_line(capsys) -> str:
    """This engine's line of `sekisho serve status`."""
    import ray

    from sekisho.cli import main

    capsys.readouterr()
    assert main(["serve", "status", "--address", ray.get_runtime_context().gcs_address]) == 0
    out = capsys.readouterr().out
    print(out)
    return next(line for line in out.splitlines() if DEPLOYMENT in line)


def test_engines_scale_with_their_load_without_a_failed_request(multi_app, capsys):
    from ray import serve

    base_url, key = multi_app
    answered: list[int] = []
    errors: list[str] = []
    heavy, light = threading.Event(), threading.Event()

    def ask_streamed(stop: threading.Event):
        while not stop.is_set():
            try:
                # A new connection per request: the kernel spreads them over every
                # replica listening on the app's port.
                with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300) as c:
                    usage = None
                    for chunk in c.chat.completions.create(
                            model=MODEL, max_tokens=64, temperature=0, stream=True,
                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
                            messages=[{"role": "user", "content": "倉庫の場所を教えてください"}]):
                        usage = chunk.usage or usage
                assert usage is not None and usage.completion_tokens == 64, usage
                answered.append(1)
            except Exception as exc:  # any failure while scaling is a defect
                errors.append(repr(exc))

    assert _replicas() == {"RUNNING": 1}
    line = _status_line(capsys)
    assert "1 RUNNING" in line and "autoscaling 1-2" in line, line
    threads = [threading.Thread(target=ask_streamed, args=(heavy,)) for _ in range(HEAVY_CLIENTS)]
    threads.append(threading.Thread(target=ask_streamed, args=(light,)))  # one light client throughout
    for t in threads:
        t.start()
    try:
        up_s = _wait_for("a second replica running", lambda: _replicas().get("RUNNING", 0) == 2, 480, errors)
        line = _status_line(capsys)
        assert "2 RUNNING" in line and "autoscaling 1-2" in line, line
        # Both replicas carry requests (the new one took connections on the shared port).
        engine = serve.get_deployment_handle(DEPLOYMENT, app_name=APP)
        loaded: dict[str, float] = {}

        def both_loaded() -> bool:
            r = engine.load_report.remote().result(timeout_s=30)
            loaded[r["replica"]] = max(loaded.get(r["replica"], 0.0), r["load"])
            return len(loaded) == 2 and all(v > 0 for v in loaded.values())

        _wait_for("load on both replicas", both_loaded, 120, errors)
        answered_up = len(answered)
        heavy.set()  # the light client alone: well under one replica's target
        down_s = _wait_for("back to one replica", lambda: _replicas() == {"RUNNING": 1}, 240, errors)
        answered_before = len(answered)
        _wait_for("answers after the scale-down", lambda: len(answered) >= answered_before + 2, 120, errors)
    finally:
        heavy.set()
        light.set()
        for t in threads:
            t.join(320)
    assert errors == [], f"{len(errors)} of {len(answered) + len(errors)} requests failed: {errors[:3]}"
    with capsys.disabled():
        print(f"\nscaled up {up_s:.0f}s after the load started; load seen per replica {loaded} "
              f"({answered_up} answered by then); back to 1 replica {down_s:.0f}s after the heavy load "
              f"stopped; {len(answered)} requests, 0 errors")
