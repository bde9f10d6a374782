"""Every response and stream chunk of real requests, validated against OpenAI's published spec.

`openai_spec.json` holds the response objects of openai/openai-openapi's openapi.yaml (its
`$comment` says which version and commit) as JSON Schema: required fields, types and
nullability as the spec states them. Each test makes real requests to a live server on the
embedded model and validates whatever comes back, chunk by chunk for streams.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.support import (
    BASE_ID,
    USER,
    assert_valid,
    events,
    legacy_stream_defs,
    ok,
    post,
)

CHAT = {"model": BASE_ID, "messages": USER, "max_tokens": 6, "temperature": 0}
TEXT = {"model": BASE_ID, "prompt": "The capital of France is", "max_tokens": 5,
        "temperature": 0}


def _chat(base_url: str, **extra: Any) -> dict[str, Any]:
    body = ok(post(base_url, "/v1/chat/completions", {**CHAT, **extra}))
    assert_valid("CreateChatCompletionResponse", body)
    return body


@pytest.mark.parametrize("extra", [{}, {"logprobs": True, "top_logprobs": 3}, {"n": 2},
                                   {"model": "alpha", "logprobs": True}])
def test_chat_completion(base_url: str, extra: dict[str, Any]) -> None:
    body = _chat(base_url, **extra)
    assert isinstance(body["system_fingerprint"], str) and body["system_fingerprint"]
    assert [c["index"] for c in body["choices"]] == list(range(extra.get("n", 1)))
    for choice in body["choices"]:
        assert choice["message"]["refusal"] is None and "refusal" in choice["message"]
        assert choice["message"]["content"]
        if extra.get("logprobs"):
            assert choice["logprobs"]["content"] and choice["logprobs"]["refusal"] is None
        else:
            assert choice["logprobs"] is None


def _chunks(base_url: str, **extra: Any) -> list[dict[str, Any]]:
    chunks = events(base_url, "/v1/chat/completions", {**CHAT, **extra})
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert isinstance(chunk["system_fingerprint"], str)
        for choice in chunk["choices"]:
            assert "finish_reason" in choice  # null until the last: present, never dropped
    return chunks


def test_chat_stream_without_usage(base_url: str) -> None:
    chunks = _chunks(base_url)
    assert all("usage" not in chunk for chunk in chunks)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[:-1] == [None] * (len(chunks) - 1) and finishes[-1] in ("stop", "length")


def test_chat_stream_with_usage_and_logprobs(base_url: str) -> None:
    chunks = _chunks(base_url, stream_options={"include_usage": True}, logprobs=True,
                     top_logprobs=2)
    assert all("usage" in chunk for chunk in chunks)
    assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    entries = [e for c in chunks for ch in c["choices"] if ch.get("logprobs")
               for e in ch["logprobs"]["content"]]
    assert entries and all(len(e["top_logprobs"]) == 2 for e in entries)


def test_chat_stream_with_n(base_url: str) -> None:
    chunks = _chunks(base_url, n=2, stream_options={"include_usage": True})
    finished = [ch["index"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert sorted(finished) == [0, 1]


@pytest.mark.parametrize("extra", [{}, {"logprobs": 2}, {"n": 2, "prompt": ["One,", "Two,"]}])
def test_text_completion(base_url: str, extra: dict[str, Any]) -> None:
    body = ok(post(base_url, "/v1/completions", {**TEXT, **extra}))
    assert_valid("CreateCompletionResponse", body)
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == list(range(len(body["choices"])))


def test_text_completion_echo_logprobs(base_url: str) -> None:
    body = ok(post(base_url, "/v1/completions", {**TEXT, "echo": True, "logprobs": 1,
                                                 "max_tokens": 0}))
    assert_valid("CreateCompletionResponse", body, legacy_stream_defs(echo=True))


@pytest.mark.parametrize("extra", [{}, {"stream_options": {"include_usage": True},
                                        "logprobs": 1}])
def test_text_completion_stream(base_url: str, extra: dict[str, Any]) -> None:
    chunks = events(base_url, "/v1/completions", {**TEXT, **extra})
    for chunk in chunks:
        assert_valid("CreateCompletionResponse", chunk, legacy_stream_defs())
        for choice in chunk["choices"]:
            assert "finish_reason" in choice and "logprobs" in choice
    if extra:
        assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
        assert chunks[-1]["choices"] == []
        assert_valid("CompletionUsage", chunks[-1]["usage"])


def test_models(base_url: str) -> None:
    listed = ok(httpx.get(f"{base_url}/v1/models"))
    assert_valid("ListModelsResponse", listed)
    for model in listed["data"]:
        assert_valid("Model", ok(httpx.get(f"{base_url}/v1/models/{model['id']}")))


@pytest.mark.parametrize("method,path,body,status", [
    ("POST", "/v1/chat/completions", {"model": "nobody", "messages": USER}, 404),
    ("POST", "/v1/chat/completions", {"model": BASE_ID, "messages": USER, "n": 99}, 400),
    ("POST", "/v1/completions", {"model": BASE_ID, "prompt": "x", "suffix": "y"}, 400),
    ("GET", "/v1/models/nobody", None, 404),
    ("POST", "/v1/nowhere", {}, 404),
    ("GET", "/v1/chat/completions", None, 405),
])
def test_errors(base_url: str, method: str, path: str, body: Any, status: int) -> None:
    response = httpx.request(method, f"{base_url}{path}", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert_valid("ErrorResponse", response.json())
