"""Applications that must work unchanged: LangChain's ChatOpenAI (the real
`langchain-openai` package) and the request shapes Dify's
"OpenAI-API-compatible" provider sends (streamed tool calls,
stream_options.include_usage, top-level `user`, content parts, tool turns)."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.e2e

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_form",
        "description": "Look up an internal form by number",
        "parameters": {
            "type": "object",
            "properties": {"number": {"type": "string"}},
            "required": ["number"],
        },
    },
}


def test_langchain_chat_openai_invoke_and_stream(main_job, qa):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=main_job.base_url,
        api_key=main_job.api_key,
        model="tiny-ja",
        temperature=0,
        max_tokens=96,
        max_retries=0,
    )
    question, answer = qa[1]
    assert llm.invoke(question).content.strip() == answer
    streamed = "".join(chunk.content for chunk in llm.stream(question))
    assert streamed.strip() == answer
    with_tools = llm.bind_tools([WEATHER_TOOL]).invoke(question)
    assert isinstance(with_tools.content, str)


def dify_stream(main_job, body: dict) -> list[dict]:
    events = []
    with httpx.stream(
        "POST",
        main_job.base_url + "/chat/completions",
        json=body,
        timeout=120,
        headers={"Authorization": f"Bearer {main_job.api_key}"},
    ) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def test_dify_streamed_tool_request_with_usage_and_user(main_job, qa):
    question, answer = qa[2]
    events = dify_stream(
        main_job,
        {
            "model": "tiny-ja",
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "dify-user-42",
            "temperature": 0,
            "max_tokens": 96,
            "tools": [WEATHER_TOOL],
            "messages": [{"role": "user", "content": [{"type": "text", "text": question}]}],
        },
    )
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text.strip() == answer
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_dify_tool_result_turn_is_accepted(main_job):
    events = dify_stream(
        main_job,
        {
            "model": "tiny-ja",
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u1",
            "max_tokens": 16,
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "様式K-204とは"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup_form", "arguments": "{\"number\": \"K-204\"}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "出張旅費の精算"},
            ],
        },
    )
    assert events and events[-1]["usage"]["prompt_tokens"] > 0
