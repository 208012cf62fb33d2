"""Serve follows the registry: moving an alias changes what Serve answers with,
without a failed request, and a rollback switches back."""

from __future__ import annotations

import threading
import time

import openai
import pytest

pytestmark = pytest.mark.e2e
V2_PREFIX = "改訂版-"  # NFKC-stable: data preparation normalises text


@pytest.fixture(scope="module")
def adapter_v2(main_job, train_prefixed_adapter):
    """A second adapter version whose answers all start with V2_PREFIX."""
    return train_prefixed_adapter(
        "v2", V2_PREFIX, "sekisho-tiny-base@production", "v2 for the promotion test"
    )


def test_promotion_and_rollback_without_a_failed_request(main_job, qa, adapter_v2):
    from experiments import get_version, set_alias
    from serve.ray_state import request_reload

    question, v1_answer = qa[0]
    v2_answer = V2_PREFIX + v1_answer
    v1 = str(get_version("demo-ja-adapter@production").version)
    client = openai.OpenAI(base_url=main_job.base_url, api_key=main_job.api_key, max_retries=0, timeout=60)
    seen: list[tuple[float, str]] = []
    errors: list[str] = []
    stop = threading.Event()

    def ask_forever():
        while not stop.is_set():
            try:
                r = client.chat.completions.create(
                    model="tiny-ja",
                    temperature=0,
                    max_tokens=96,
                    messages=[{"role": "user", "content": question}],
                )
                seen.append((time.monotonic(), r.choices[0].message.content.strip()))
            except Exception as exc:  # any failure during the switch is a defect
                errors.append(repr(exc))

    threads = [threading.Thread(target=ask_forever) for _ in range(2)]
    for t in threads:
        t.start()

    def wait_for(answer: str, since: float, limit_s: float) -> float:
        deadline = since + limit_s
        while time.monotonic() < deadline:
            if any(t >= since and a == answer for t, a in seen):
                return next(t for t, a in seen if t >= since and a == answer) - since
            time.sleep(0.2)
        raise AssertionError(f"Serve still answers {seen[-1:]} {limit_s}s after the alias moved")

    try:
        time.sleep(2)
        assert seen and seen[-1][1] == v1_answer
        moved = time.monotonic()
        set_alias("demo-ja-adapter", "production", adapter_v2)
        promote_s = wait_for(v2_answer, moved, 30)
        moved = time.monotonic()
        set_alias("demo-ja-adapter", "production", v1)
        request_reload("demo")  # `sekisho serve reload`: at once
        rollback_s = wait_for(v1_answer, moved, 10)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        set_alias("demo-ja-adapter", "production", v1)
    assert errors == []
    assert {a for _, a in seen} <= {v1_answer, v2_answer}
    print(
        f"promotion served after {promote_s:.1f}s, rollback (reload) after {rollback_s:.1f}s, "
        f"{len(seen)} requests, 0 errors"
    )
    listed = {m.id: m for m in client.models.list().data}
    assert listed["tiny-ja"].model_extra["sekisho_version"] == f"demo-ja-adapter/{v1}"
