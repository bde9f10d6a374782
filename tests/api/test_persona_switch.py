"""A conversation that switched persona: the other persona's turns reach the model attributed
to it, never as the current persona's own (which made the new one copy the old one's voice)."""

from __future__ import annotations

from typing import Any

import httpx

from server.api.prompt import build_messages
from server.api.schemas import ChatMessage
from tests.api.support import ok

HISTORY: list[dict[str, Any]] = [
    {"role": "assistant", "content": "Hello from alpha", "name": "alpha"},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris, friend.", "name": "alpha"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome.", "name": "bravo"},
    {"role": "user", "content": "And of Spain?"},
]


def _messages(history: list[dict[str, Any]]) -> list[ChatMessage]:
    return [ChatMessage.model_validate(m) for m in history]


def test_other_personas_turns_are_attributed_notes() -> None:
    built = build_messages(_messages(HISTORY), None, speaker="bravo",
                           display=lambda name: name.title())
    assert [m["role"] for m in built] == ["system", "user", "system", "user", "assistant", "user"]
    assert built[0]["content"] == "Alpha (another character, not you) said: Hello from alpha"
    assert built[2]["content"] == "Alpha (another character, not you) said: Paris, friend."
    assert built[4] == {"role": "assistant", "content": "Rome."}  # bravo's own turn


def test_unnamed_replies_stay_the_current_personas() -> None:
    unnamed = [{k: v for k, v in m.items() if k != "name"} for m in HISTORY]
    built = build_messages(_messages(unnamed), None, speaker="bravo")
    assert [m["role"] for m in built] == ["assistant", "user"] * 3


def test_the_served_prompt_attributes_them(base_url: str) -> None:
    """Through the server: the prompt for bravo names Alpha (its card's display name) as the
    other speaker; for alpha the same history is alpha's own."""
    def prompt_text(model: str) -> str:
        tokens = ok(httpx.post(f"{base_url}/tokenize", timeout=60, json={
            "model": model, "messages": HISTORY}))["tokens"]
        return str(ok(httpx.post(f"{base_url}/detokenize", timeout=60, json={
            "model": model, "tokens": tokens}))["prompt"])

    for_bravo, for_alpha = prompt_text("bravo"), prompt_text("alpha")
    assert "Alpha (another character, not you) said: Paris, friend." in for_bravo
    assert "another character" not in for_bravo.split("Rome.")[0].split("Italy?")[-1]
    assert "Bravo (another character, not you) said: Rome." in for_alpha
    assert "Alpha (another character" not in for_alpha
    reply = httpx.post(f"{base_url}/v1/chat/completions", timeout=120, json={
        "model": "bravo", "messages": HISTORY, "max_tokens": 4, "temperature": 0})
    assert reply.status_code == 200
