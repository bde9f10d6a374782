"""Third-party clients chat with a persona: the official openai SDK (sync, async, streaming),
plain httpx, and huggingface_hub's InferenceClient."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.clients._support import MAX_TOKENS

MESSAGES = [{"role": "user", "content": "Say hello in three words."}]


def test_openai_sync_lists_and_chats(server_url: str) -> None:
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    models = {m.id: m for m in client.models.list()}
    assert {"alpha", "bravo", "charlie"} <= set(models)
    assert models["alpha"].model_extra["description"] == "test persona alpha"
    completion = client.chat.completions.create(model="alpha", messages=MESSAGES,
                                                max_tokens=MAX_TOKENS, temperature=0)
    assert completion.model == "alpha"
    assert completion.choices[0].message.role == "assistant"
    assert isinstance(completion.choices[0].message.content, str)
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens >= 1


def test_openai_sync_streaming(server_url: str) -> None:
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="bravo", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True})
    text, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(text)
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens >= 1


def test_openai_async_and_async_streaming(server_url: str) -> None:
    async def scenario() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused",
                                    max_retries=0)
        try:
            whole = await client.chat.completions.create(
                model="charlie", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
            stream = await client.chat.completions.create(
                model="charlie", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0,
                stream=True)
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            return whole.choices[0].message.content or "", "".join(parts)
        finally:
            await client.close()

    whole, streamed = asyncio.run(scenario())
    assert whole and whole == streamed


def test_openai_sdk_surfaces_the_error_body(server_url: str) -> None:
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nobody", messages=MESSAGES, max_tokens=2)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_httpx_plain_and_streamed(server_url: str) -> None:
    body = {"model": "alpha", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}
    with httpx.Client(base_url=server_url, timeout=120) as http:
        answer = http.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        text = answer.json()["choices"][0]["message"]["content"]

        events = []
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as sse:
            assert sse.status_code == 200
            assert sse.headers["content-type"].startswith("text/event-stream")
            for line in sse.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "alpha" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text


def test_huggingface_inference_client(server_url: str) -> None:
    hub = pytest.importorskip("huggingface_hub")
    client = hub.InferenceClient(base_url=f"{server_url}/v1", api_key="unused", timeout=120)
    output = client.chat_completion(MESSAGES, model="bravo", max_tokens=MAX_TOKENS,
                                    temperature=0)
    assert output.model == "bravo"
    assert isinstance(output.choices[0].message.content, str)
    assert output.usage.completion_tokens >= 1

    parts = [chunk.choices[0].delta.content or ""
             for chunk in client.chat_completion(MESSAGES, model="bravo", stream=True,
                                                 max_tokens=MAX_TOKENS, temperature=0)
             if chunk.choices]
    assert "".join(parts) == output.choices[0].message.content
