"""Requests shaped as Open WebUI and SillyTavern send them get answers.

The bodies and headers below follow what those frontends put on the wire for an
"OpenAI API" connection (Open WebUI) and a "Chat Completion → Custom (OpenAI-compatible)"
source (SillyTavern): several system messages, message `name`s, content as a list of parts,
and sampling keys the OpenAI API does not have (top_k, min_p, repetition_penalty, typical_p,
top_a, tfs, mirostat...), which Cameo applies when it implements them and ignores otherwise.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.clients._support import MAX_TOKENS

OPEN_WEBUI_HEADERS = {
    "Content-Type": "application/json",
    "Authorization": "Bearer sk-open-webui",  # Open WebUI always sends the connection's key
    "X-OpenWebUI-User-Name": "Test User",
    "X-OpenWebUI-User-Id": "7d1a0c2e-0000-4000-8000-000000000001",
    "X-OpenWebUI-User-Email": "user@example.com",
    "X-OpenWebUI-User-Role": "admin",
    "X-OpenWebUI-Chat-Id": "c0ffee00-0000-4000-8000-000000000002",
}

# SillyTavern's custom source builds the header as 'Bearer ' + key, even with no key set.
SILLYTAVERN_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer undefined"}


def _stream(http: httpx.Client, body: dict[str, Any], headers: dict[str, str]
            ) -> tuple[str, list[dict[str, Any]]]:
    """POST a streaming request and parse its SSE the way both frontends do."""
    text: list[str] = []
    chunks: list[dict[str, Any]] = []
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200, response.read().decode()
        saw_done = False
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                saw_done = True
                break
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            chunks.append(chunk)
            for choice in chunk.get("choices") or []:
                text.append(choice.get("delta", {}).get("content") or "")
        assert saw_done, "the stream did not end with data: [DONE]"
    return "".join(text), chunks


@pytest.fixture
def http(server_url: str):
    with httpx.Client(base_url=server_url, timeout=120) as client:
        yield client


# ----------------------------------------------------------------------------------------------
# Open WebUI


def test_open_webui_model_list(http: httpx.Client) -> None:
    response = http.get("/v1/models", headers={"Authorization": "Bearer sk-open-webui"})
    assert response.status_code == 200
    data = response.json()["data"]
    ids = [m["id"] for m in data]
    assert {"alpha", "bravo", "charlie"} <= set(ids)
    for model in data:  # Open WebUI reads id, object, created and owned_by
        assert model["object"] == "model" and isinstance(model["created"], int)
        assert isinstance(model["owned_by"], str)


def test_open_webui_streamed_chat(http: httpx.Client) -> None:
    body = {
        "stream": True,
        "model": "alpha",
        "messages": [
            {"role": "system", "content": "You are a friendly assistant. Keep answers short."},
            {"role": "system", "content": "User Context:\n1. [2026-01-01]. Likes tea."},
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hello from alpha"},
            {"role": "user", "content": [
                {"type": "text", "text": "What do you like to drink?",
                 "cache_control": {"type": "ephemeral"}}]},
        ],
        "stream_options": {"include_usage": True},
        "temperature": 0.8,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "max_tokens": MAX_TOKENS,
        "frequency_penalty": 0.2,
        "presence_penalty": 0.1,
        "repeat_penalty": 1.1,
        "seed": 42,
        "stop": ["<|im_end|>"],
        "logit_bias": {},
        "chat_id": "c0ffee00-0000-4000-8000-000000000002",
        "id": "8b9a6f52-0000-4000-8000-000000000003",
    }
    text, chunks = _stream(http, body, OPEN_WEBUI_HEADERS)
    assert text
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage and usage[-1]["completion_tokens"] >= 1  # Open WebUI shows token usage
    finishes = [c["choices"][0]["finish_reason"] for c in chunks
                if c.get("choices") and c["choices"][0].get("finish_reason")]
    assert finishes in (["stop"], ["length"])


def test_open_webui_title_generation_task(http: httpx.Client) -> None:
    prompt = ("### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat "
              "history.\n### Output:\nJSON format: { \"title\": \"your concise title here\" }\n"
              "### Chat History:\n<chat_history>\nUSER: Hello!\nASSISTANT: Hi there\n"
              "</chat_history>")
    body = {"model": "bravo", "messages": [{"role": "user", "content": prompt}],
            "stream": False, "max_tokens": MAX_TOKENS, "temperature": 0.1}
    response = http.post("/v1/chat/completions", json=body, headers=OPEN_WEBUI_HEADERS)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert isinstance(answer["choices"][0]["message"]["content"], str)


# ----------------------------------------------------------------------------------------------
# SillyTavern


def _sillytavern_messages(char: str = "Alpha", user: str = "User") -> list[dict[str, Any]]:
    """The prompt SillyTavern's default Chat Completion preset assembles from a character."""
    return [
        {"role": "system", "content": f"Write {char}'s next reply in a fictional chat between "
                                      f"{char} and {user}."},
        {"role": "system", "content": f"{char} is a test persona who answers briefly."},
        {"role": "system", "content": f"{char}'s personality: calm, precise"},
        {"role": "system", "content": "Scenario: a quiet library."},
        {"role": "system", "content": "[Example Chat]"},
        {"role": "system", "name": "example_user", "content": "Hi!"},
        {"role": "system", "name": "example_assistant", "content": "Good day to you."},
        {"role": "system", "content": "[Start a new Chat]"},
        {"role": "assistant", "content": "Hello from alpha"},
        {"role": "user", "content": "How are you today?", "name": user},
        {"role": "system", "content": f"[System note: stay in character as {char}.]"},
    ]


SILLYTAVERN_SAMPLERS = {
    "temperature": 1,
    "max_tokens": MAX_TOKENS,
    "presence_penalty": 0,
    "frequency_penalty": 0.1,
    "top_p": 1,
    "top_k": 0,
    "stop": [],
    "logit_bias": {},
    "seed": 7,
    # custom_include_body: the samplers text-completion backends know
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "typical_p": 1,
    "top_a": 0,
    "tfs": 1,
    "epsilon_cutoff": 0,
    "eta_cutoff": 0,
    "mirostat_mode": 0,
    "mirostat_tau": 5,
    "mirostat_eta": 0.1,
    "min_tokens": 0,
    "skip_special_tokens": True,
    "include_reasoning": False,
}


def test_sillytavern_model_list_without_a_key(http: httpx.Client) -> None:
    response = http.get("/v1/models")  # SillyTavern omits the header when no key is set
    assert response.status_code == 200
    assert {"alpha", "bravo", "charlie"} <= {m["id"] for m in response.json()["data"]}


def test_sillytavern_streamed_chat(http: httpx.Client) -> None:
    body = {"messages": _sillytavern_messages(), "model": "alpha", "stream": True,
            **SILLYTAVERN_SAMPLERS}
    text, chunks = _stream(http, body, SILLYTAVERN_HEADERS)
    assert text
    assert all(c["model"] == "alpha" for c in chunks)


def test_sillytavern_keeps_every_system_message(http: httpx.Client) -> None:
    full = {"messages": _sillytavern_messages(), "model": "charlie", "stream": False, "n": 1,
            **SILLYTAVERN_SAMPLERS}
    short = {**full, "messages": _sillytavern_messages()[-3:]}
    long_answer = http.post("/v1/chat/completions", json=full, headers=SILLYTAVERN_HEADERS)
    short_answer = http.post("/v1/chat/completions", json=short, headers=SILLYTAVERN_HEADERS)
    assert long_answer.status_code == 200, long_answer.text
    assert short_answer.status_code == 200, short_answer.text
    long_usage, short_usage = long_answer.json()["usage"], short_answer.json()["usage"]
    # every system message reached the prompt: the long prompt is longer by their text
    assert long_usage["prompt_tokens"] > short_usage["prompt_tokens"] + 40
    assert isinstance(long_answer.json()["choices"][0]["message"]["content"], str)


def test_sillytavern_continue_ends_with_the_assistant(http: httpx.Client) -> None:
    """"Continue" sends the unfinished last reply as the final assistant message."""
    messages = [*_sillytavern_messages()[:-1],
                {"role": "assistant", "content": "I am doing well, and"}]
    body = {"messages": messages, "model": "bravo", "stream": True, **SILLYTAVERN_SAMPLERS}
    text, _ = _stream(http, body, SILLYTAVERN_HEADERS)
    assert isinstance(text, str)


def test_frontend_errors_keep_openais_shape(http: httpx.Client) -> None:
    """Both frontends show `error.message` from a failed request."""
    body = {"messages": _sillytavern_messages(), "model": "Alpha", "stream": True,
            **SILLYTAVERN_SAMPLERS}  # a display name, not the persona id
    response = http.post("/v1/chat/completions", json=body, headers=SILLYTAVERN_HEADERS)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "Alpha" in error["message"]
