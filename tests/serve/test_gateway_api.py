"""The gateway against the running app (real vLLM behind it), through the
official `openai` client: keys, model access, limits, quotas, streaming usage,
audit under concurrency, metrics."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest

from serve.gateway import AuditLog, KeyStore

pytestmark = pytest.mark.e2e
MSG = [{"role": "user", "content": "第七倉庫の合言葉は何ですか。"}]


def client(main_job, key):
    return openai.OpenAI(base_url=main_job.base_url, api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def keys(main_job):
    store = KeyStore()
    stamp = str(int(time.time() * 1000))
    return {
        "only_ja": store.create(f"only-ja-{stamp}", ["tiny-ja"]),
        "rpm": store.create(f"rpm-{stamp}", ["tiny-ja"], rpm=2),
        "tpm": store.create(f"tpm-{stamp}", ["tiny-ja"], tpm=10),
        "expired": store.create(f"expired-{stamp}", ["*"], expires_at=time.time() - 5),
        "stamp": stamp,
    }


def test_health_needs_no_key_but_everything_else_does(main_job):
    root = main_job.base_url.removesuffix("/v1")
    assert httpx.get(root + "/health").status_code == 200
    for bad in (None, "sk-sekisho-not-a-key"):
        headers = {"Authorization": f"Bearer {bad}"} if bad else {}
        r = httpx.get(main_job.base_url + "/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        client(main_job, "sk-sekisho-wrong").chat.completions.create(model="tiny-ja", messages=MSG)


def test_expired_key_is_refused(main_job, keys):
    with pytest.raises(openai.AuthenticationError):
        client(main_job, keys["expired"]).models.list()


def test_revocation_takes_effect_within_5_seconds(main_job):
    store = KeyStore()
    name = f"revoke-{time.time_ns()}"
    secret = store.create(name, ["tiny-ja"])
    deadline = time.monotonic() + 10
    while True:  # a new key becomes usable once the gateway's cache refreshes
        try:
            client(main_job, secret).models.list()
            break
        except openai.AuthenticationError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    store.revoke(name)
    revoked_at = time.monotonic()
    while True:
        try:
            client(main_job, secret).models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() - revoked_at < 5, "revocation must apply within 5 s"
        time.sleep(0.1)


def test_key_sees_and_calls_only_its_models(main_job, keys):
    c = client(main_job, keys["only_ja"])
    assert [m.id for m in c.models.list().data] == ["tiny-ja"]
    with pytest.raises(openai.NotFoundError) as hidden:
        c.chat.completions.create(model="tiny-base", messages=MSG)
    with pytest.raises(openai.NotFoundError) as missing:
        c.chat.completions.create(model="no-such-model", messages=MSG)
    assert hidden.value.body["code"] == missing.value.body["code"] == "model_not_found"
    assert hidden.value.body["message"].replace("tiny-base", "X") == missing.value.body["message"].replace(
        "no-such-model", "X"
    )


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"max_tokens": 100000}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 5}, "n"),
        ({"logprobs": True, "top_logprobs": 19}, "top_logprobs"),
        ({"best_of": 2}, "best_of"),
        ({"chat_template": "{{ 7*7 }}"}, "chat_template"),
        ({"chat_template_kwargs": {"x": 1}}, "chat_template_kwargs.x"),
        ({"chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs.enable_thinking"),
        ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs"),
        ({"max_tokens": "ten"}, "max_tokens"),
    ],
)
def test_limits_answer_400_naming_the_parameter(main_job, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client(main_job, main_job.api_key).chat.completions.create(
            model="tiny-ja", messages=MSG, extra_body=extra
        )
    assert e.value.status_code == 400 and e.value.body["param"] == param


def test_oversized_body_and_bad_json(main_job):
    headers = {"Authorization": f"Bearer {main_job.api_key}"}
    big = b'{"model": "tiny-ja", "messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}'
    r = httpx.post(main_job.base_url + "/chat/completions", content=big, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(main_job.base_url + "/chat/completions", content=b"[1,2", headers=headers)
    assert r.status_code == 400


def test_prompt_beyond_the_context_is_a_client_error(main_job):
    long_prompt = "様式" * 600  # far more tokens than max_model_len (512)
    with pytest.raises(openai.BadRequestError):
        client(main_job, main_job.api_key).chat.completions.create(
            model="tiny-ja", messages=[{"role": "user", "content": long_prompt}], max_tokens=64
        )


def test_requests_per_minute_gives_429_with_retry_after(main_job, keys):
    c = client(main_job, keys["rpm"])
    for _ in range(2):
        c.chat.completions.create(model="tiny-ja", messages=MSG, max_tokens=4)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="tiny-ja", messages=MSG, max_tokens=4)
    assert 1 <= int(e.value.response.headers["Retry-After"]) <= 60


def test_tokens_per_minute_gives_429(main_job, keys):
    c = client(main_job, keys["tpm"])
    c.chat.completions.create(model="tiny-ja", messages=MSG, max_tokens=16)  # uses > 10 tokens
    with pytest.raises(openai.RateLimitError, match="token limit"):
        c.chat.completions.create(model="tiny-ja", messages=MSG, max_tokens=4)


def test_streaming_usage_only_when_asked_and_always_audited(main_job, qa):
    c = client(main_job, main_job.api_key)
    chunks = list(
        c.chat.completions.create(model="tiny-ja", messages=MSG, temperature=0, max_tokens=32, stream=True)
    )
    assert all(ch.usage is None for ch in chunks) and all(ch.choices for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text.strip() == qa[0][1]
    last = AuditLog("demo").records(limit=1)[0]
    assert last["stream"] is True and last["completion_tokens"] > 0 and last["status"] == 200


def test_200_concurrent_requests_leave_200_records_in_a_valid_chain(main_job):
    store, name = KeyStore(), f"load-{time.time_ns()}"
    secret = store.create(name, ["tiny-ja", "tiny-base"])

    async def run():
        ac = openai.AsyncOpenAI(base_url=main_job.base_url, api_key=secret, max_retries=0, timeout=300)

        async def one(i):
            kwargs = dict(model="tiny-ja" if i % 2 else "tiny-base", messages=MSG, max_tokens=8)
            if i % 3 == 0:
                stream = await ac.chat.completions.create(stream=True, **kwargs)
                return [c async for c in stream]
            return await ac.chat.completions.create(**kwargs)

        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(run())
    assert len(results) == 200
    audit = AuditLog("demo")
    mine = [r for r in audit.records(since=time.time() - 600) if r["key"] == name]
    assert len(mine) == 200 and {r["status"] for r in mine} == {200}
    assert len({r["request_id"] for r in mine}) == 200
    assert all(r["model_sha256"] and r["model_version"] for r in mine)
    assert audit.verify().ok


def test_tampering_is_detected_at_the_record(main_job):
    from sqlalchemy import text

    audit = AuditLog("demo")
    seq = audit.records(limit=1)[0]["seq"] - 3
    with audit.engine.begin() as conn:
        original = conn.execute(
            text("SELECT record FROM sekisho_audit WHERE chain='demo' AND seq=:s"), {"s": seq}
        ).scalar_one()
        conn.execute(
            text("UPDATE sekisho_audit SET record=:r WHERE chain='demo' AND seq=:s"),
            {"r": original.replace('"status":200', '"status":201'), "s": seq},
        )
    try:
        r = audit.verify()
        assert not r.ok and r.broken_at == seq
    finally:
        with audit.engine.begin() as conn:
            conn.execute(
                text("UPDATE sekisho_audit SET record=:r WHERE chain='demo' AND seq=:s"),
                {"r": original, "s": seq},
            )
    assert audit.verify().ok


def test_metrics_from_loopback(main_job):
    r = httpx.get(main_job.base_url.removesuffix("/v1") + "/metrics")
    assert r.status_code == 200
    assert 'sekisho_requests_total{model="tiny-ja",status="200"}' in r.text
    assert "sekisho_rejections_total" in r.text and "sekisho_time_to_first_token_seconds" in r.text
    # Every answered request was first recorded as admitted, and that write was timed.
    admits = re.search(r"^sekisho_audit_admit_seconds_count (\S+)$", r.text, re.M)
    assert admits and float(admits.group(1)) >= 1, r.text[:2000]
