"""The official `openai` SDK against a real server: models, chat, streaming."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from server.composition import Cameo
from server.engine.types import GenerationRequest, SamplingParams
from tests.helpers import chat_prompt, run_requests
from tests.scoring import EngineProbe

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_models_lists_base_and_personas(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert BASE_ID in models
    for name in ("alpha", "bravo", "charlie"):
        assert models[name].model_extra is not None
        assert models[name].model_extra["parent"] == BASE_ID
        assert models[name].model_extra["greeting"] == f"Hello from {name}"
    assert models[BASE_ID].model_extra is not None
    assert models[BASE_ID].model_extra["parent"] is None


def test_non_streaming_chat(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=BASE_ID, messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=16)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.id.startswith("chatcmpl-")


def test_persona_replies_are_the_engines_adapter_outputs(client: openai.OpenAI,
                                                         cameo: Cameo) -> None:
    question = "What is your favourite food?"

    def ask(model: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}],
            temperature=0, max_tokens=10)
        return reply.choices[0].message.content or ""

    replies = {name: ask(name) for name in ("alpha", "bravo", "charlie", BASE_ID)}
    assert len(set(replies.values())) > 1, replies  # the adapters change what is said
    for name in ("alpha", "bravo", "charlie"):
        persona = cameo.registry.get(name)
        assert persona is not None and persona.adapter
        request = GenerationRequest(name, chat_prompt(cameo.base.tokenizer, question),
                                    SamplingParams(max_tokens=10, temperature=0.0),
                                    persona.adapter)
        (direct,) = run_requests(EngineProbe.of(cameo), [request])
        assert replies[name] == direct.text


def test_streaming_chat_shares_one_id_and_matches_non_streaming(client: openai.OpenAI) -> None:
    kwargs = dict(model="alpha", messages=[{"role": "user", "content": "Name a colour."}],
                  temperature=0, max_tokens=12)
    chunks = list(client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs))  # type: ignore[call-overload]
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert text == whole.choices[0].message.content


def test_raw_stream_ends_with_done(base_url: str) -> None:
    body = {"model": BASE_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    ids = {json.loads(d)["id"] for d in data[:-1]}
    assert len(ids) == 1


def test_max_completion_tokens_and_ignore_eos(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=BASE_ID, messages=[{"role": "user", "content": "Say yes."}], temperature=0,
        max_completion_tokens=7, extra_body={"ignore_eos": True, "top_k": 5, "typical_p": 0.9})
    assert reply.usage is not None and reply.usage.completion_tokens == 7
    assert reply.choices[0].finish_reason == "length"


def test_async_client_and_persona_system_prompt(base_url: str, cameo: Cameo) -> None:
    import asyncio

    async def go() -> str:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(
            model="charlie", messages=[{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hi"}],
            temperature=0, max_tokens=6)
        return reply.choices[0].message.content or ""

    assert asyncio.run(go())
