"""An app of two engines behind one port: a chat model and an embedding model
(the `multi_app` fixture, tests/serve/conftest.py).

Every engine replica runs the gateway on the app's port (SO_REUSEPORT), so a
request may land in the process that holds its model (answered in-process) or
in the other one (forwarded over HTTP to the right replica). Clients can't tell:
each request on a fresh connection must get the right answer, with one audit
record, whichever process took it."""

from __future__ import annotations

import httpx
import openai
import pytest

from serve.gateway import AuditLog

pytestmark = pytest.mark.e2e
ROUNDS = 12  # fresh connections per model: the kernel spreads them over both processes


def test_embeddings_and_chat_through_either_engine(multi_app):
    base_url, key = multi_app
    audit = AuditLog("multi")
    before = audit.verify().records
    vectors = []
    for _ in range(ROUNDS):
        with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as c:  # a new connection
            e = c.embeddings.create(model="tiny-embed", input=["第七倉庫の合言葉", "申請書の番号"])
            assert [d.index for d in e.data] == [0, 1] and e.model == "tiny-embed"
            assert e.usage.prompt_tokens > 0
            vectors.append(e.data[0].embedding)
        with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as c:
            r = c.chat.completions.create(model="tiny-chat", max_tokens=4, temperature=0,
                                          messages=[{"role": "user", "content": "こんにちは"}])
            assert r.model == "tiny-chat" and r.usage.completion_tokens >= 1
    assert len(vectors[0]) == 128  # the tiny model's hidden size
    assert all(v == pytest.approx(vectors[0], abs=1e-4) for v in vectors)  # same input, same vector
    after = audit.verify()
    assert after.ok and after.records - before == 2 * ROUNDS


def test_routes_are_refused_for_the_wrong_kind_of_model(multi_app):
    base_url, key = multi_app
    c = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        c.embeddings.create(model="tiny-chat", input="x")
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="tiny-embed", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["param"] == "model"
    r = httpx.post(base_url + "/embeddings", json={"model": "tiny-embed"},
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_models_list_shows_both_engines_models(multi_app):
    base_url, key = multi_app
    ids = {m.id for m in openai.OpenAI(base_url=base_url, api_key=key, max_retries=0).models.list()}
    assert ids == {"tiny-chat", "tiny-embed"}
