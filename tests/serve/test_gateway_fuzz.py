"""Schema-driven fuzzing of the gateway: whatever a client sends, the answer
is never a 5xx, and every error has OpenAI's shape."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
        "content": st.one_of(st.text(max_size=30), json_values),
    }
)
chat_body = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["tiny-ja", "tiny-base", "nope", ""]),
        "messages": st.one_of(st.lists(message, min_size=0, max_size=3), json_values),
    },
    optional={
        "max_tokens": st.one_of(st.integers(-5, 3000), json_values),
        "temperature": st.one_of(st.floats(-1, 5, allow_nan=False), json_values),
        "n": st.integers(-1, 4),
        "stream": st.booleans(),
        "top_p": scalars,
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=5), scalars),
        "logprobs": scalars,
        "top_logprobs": st.integers(-1, 30),
        "user": scalars,
        "tools": json_values,
        "response_format": json_values,
        "seed": scalars,
        "stream_options": json_values,
        "extra": json_values,
    },
)
routes = st.sampled_from(["/chat/completions", "/completions", "/embeddings", "/models"])


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=routes, body=st.one_of(chat_body, json_values))
def test_no_5xx_for_any_body(main_job, route, body):
    headers = {"Authorization": f"Bearer {main_job.api_key}"}
    url = main_job.base_url + route
    if route == "/models":
        r = httpx.get(url, headers=headers, timeout=60)
    else:
        if isinstance(body, dict) and isinstance(body.get("max_tokens"), int):
            body["max_tokens"] = min(body["max_tokens"], 8)  # keep generation short
        r = httpx.post(url, json=body, headers=headers, timeout=120)
    assert r.status_code < 500, (route, body, r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert set(r.json()["error"]) >= {"message", "type", "param", "code"}
