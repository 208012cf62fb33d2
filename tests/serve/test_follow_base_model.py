"""Serve follows the registry for base models too: moving a base model's alias
rolls the engine replicas (a new one starts before the old one drains), the
new version answers, and no request fails meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import pytest

pytestmark = pytest.mark.e2e
MIGRATE = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def _hand_over_queued_connections() -> None:
    """Connections queued on a closing SO_REUSEPORT listener move to the others
    (per network namespace; the tests run in their own, as root)."""
    if MIGRATE.exists() and MIGRATE.read_text().strip() != "1":
        MIGRATE.write_text("1\n")


def test_base_alias_move_rolls_the_engines_without_a_failed_request(main_job, qa, sekisho_home):
    from ray import serve

    from airlock import import_model, load
    from experiments import get_version, set_alias
    from serve.ray_state import request_reload

    _hand_over_queued_connections()
    question, answer = qa[0]
    v1 = str(get_version("sekisho-tiny-base@production").version)
    # A second version of the same weights: what is served changes, the answers do not.
    v2 = str(import_model(load("sekisho-tiny-base@production").path, "sekisho-tiny-base").version)
    assert v2 != v1
    client = openai.OpenAI(base_url=main_job.base_url, api_key=main_job.api_key, max_retries=0, timeout=60)

    def served_base() -> str:
        return {m.id: m for m in client.models.list().data}["tiny-base"].model_extra["sekisho_version"]

    assert served_base() == f"sekisho-tiny-base/{v1}"
    seen: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def ask_forever(model: str):
        while not stop.is_set():
            try:
                r = client.chat.completions.create(
                    model=model,
                    temperature=0,
                    max_tokens=96,
                    messages=[{"role": "user", "content": question}],
                )
                seen.append(r.choices[0].message.content.strip())
            except Exception as exc:  # any failure during the roll is a defect
                errors.append(repr(exc))

    threads = [threading.Thread(target=ask_forever, args=(m,)) for m in ("tiny-ja", "tiny-base")]
    for t in threads:
        t.start()

    def engine_state():
        app = serve.status().applications["demo"]
        dep = app.deployments["engine-tiny-base"]
        return app.status, dict(dep.replica_states)

    def answered_more(than: int, within_s: float = 60) -> None:
        """Wait until traffic has flowed: a few more answers than `than`."""
        deadline = time.monotonic() + within_s
        while len(seen) + len(errors) < than + 4:
            assert time.monotonic() < deadline, "no traffic"
            time.sleep(0.1)

    try:
        answered_more(0)  # traffic is running before the move
        moved = time.monotonic()
        set_alias("sekisho-tiny-base", "production", v2)
        request_reload("demo")  # `sekisho serve reload`: at once
        deadline = moved + 30
        while engine_state()[0] == "RUNNING":
            assert time.monotonic() < deadline, "the roll did not start within 30s of the alias move"
            time.sleep(0.5)
        started_s = time.monotonic() - moved
        deadline = moved + 420
        while not (
            engine_state() == ("RUNNING", {"RUNNING": 1}) and served_base() == f"sekisho-tiny-base/{v2}"
        ):
            assert time.monotonic() < deadline, f"the roll did not finish: {engine_state()}, {served_base()}"
            time.sleep(1)
        rolled_s = time.monotonic() - moved
        answered_more(len(seen) + len(errors))  # and keeps being answered after the roll
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    # The alias stays on v2 (the same weights): later tests see an app like the demo's.
    assert errors == [], f"{len(errors)} of {len(seen) + len(errors)} requests failed: {errors[:3]}"
    assert answer in seen
    print(
        f"roll started {started_s:.1f}s and finished {rolled_s:.1f}s after the alias moved; "
        f"{len(seen)} requests, 0 errors"
    )
