"""`sekisho chat MODEL` driven through stdin against the session's served demo app
(real gateway, real vLLM): answers stream back, the second turn carries the first
(the gateway's audit counts its prompt tokens), /exit leaves, and a bad key or a
model the key may not use ends it with the gateway's error on one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def chat_key(main_job):
    """(name, secret) of a key for tiny-ja only, once the gateway accepts it."""
    from serve.gateway import KeyStore

    name = f"chat-{time.time_ns()}"
    secret = KeyStore().create(name, ["tiny-ja"])
    headers = {"Authorization": f"Bearer {secret}"}
    deadline = time.monotonic() + 10
    while httpx.get(main_job.base_url + "/models", headers=headers, timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the new key never became usable"
        time.sleep(0.2)
    return name, secret


def chat(main_job, *args, stdin: str, key: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "SEKISHO_API_KEY"}
    if key is not None:
        env["SEKISHO_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "sekisho", "chat", *args, "--url", main_job.base_url],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_turns_stream_answers_and_keep_the_history(main_job, chat_key, qa, tmp_path):
    from serve.gateway import AuditLog

    name, secret = chat_key
    key_file = tmp_path / "key"
    key_file.write_text(secret + "\n")
    question, expected = qa[0]
    r = chat(
        main_job,
        "tiny-ja",
        "--api-key-file",
        str(key_file),
        "--max-tokens",
        "96",
        stdin=f"{question}\n{question}\n/exit\nnever sent\n",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    answers = r.stdout.splitlines()
    assert len(answers) == 2 and answers[0].strip() == expected, r.stdout
    asked = [
        rec
        for rec in AuditLog("demo").records()
        if rec.get("key") == name and rec.get("model") and rec.get("prompt_tokens")
    ]
    assert [rec["status"] for rec in asked] == [200, 200], asked
    first, second = asked
    # The second prompt holds the first question, its answer and the question again.
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["completion_tokens"], asked


def test_bad_key_and_unknown_model_end_with_one_line(main_job, chat_key):
    _, secret = chat_key
    r = chat(main_job, "tiny-ja", stdin="hello\n", key="sk-sekisho-not-a-key")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        f"sekisho: error: chat: {main_job.base_url}: 401 invalid_api_key: "
        "Invalid API key (unknown, revoked or expired)."
    )
    r = chat(main_job, "tiny-base", stdin="hello\n", key=secret)  # served, but not to this key
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        f"sekisho: error: chat: model 'tiny-base' is not served at {main_job.base_url} to this key; "
        "it may use: tiny-ja."
    )
    r = chat(main_job, "tiny-ja", stdin="hello\n")
    assert r.returncode == 2 and "no API key; set SEKISHO_API_KEY" in r.stderr
