"""SillyTavern Character Card V2 import: fields round-trip; bad cards are refused with a 4xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from server.composition import Cameo
from tests.registry.conftest import upload

CARD: dict[str, Any] = {
    "spec": "chara_card_v2", "spec_version": "2.0",
    "data": {
        "name": "Lady Ada", "description": "{{char}} is a Victorian mathematician.",
        "personality": "precise, curious", "scenario": "A salon in London, 1843.",
        "first_mes": "Good evening, {{user}}.",
        "mes_example": "<START>\n{{user}}: What is an engine?\n{{char}}: A loom of numbers.",
        "system_prompt": "", "post_history_instructions": "Stay in character.",
        "tags": ["history", "math"], "creator_notes": "", "alternate_greetings": [],
    },
}


def _import(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/personas/import", timeout=60, **kwargs,
                      **({"json": body} if not isinstance(body, bytes) else {"content": body}))


def test_card_round_trips_and_chats(served: tuple[Cameo, str]) -> None:
    _runtime, url = served
    created = _import(url, {"card": CARD})
    assert created.status_code == 201, created.text
    persona = httpx.get(f"{url}/v1/personas/lady-ada").json()
    assert persona == created.json()
    assert persona["display_name"] == "Lady Ada"
    assert persona["description"] == "Lady Ada is a Victorian mathematician."
    assert persona["greeting"] == "Good evening, User."
    assert persona["tags"] == ["history", "math"]
    assert persona["adapter"] is None
    assert "precise, curious" in persona["system_prompt"]
    assert "A salon in London, 1843." in persona["system_prompt"]
    assert persona["example_messages"] == [
        {"role": "user", "content": "What is an engine?"},
        {"role": "assistant", "content": "A loom of numbers."}]
    assert persona["post_history_instructions"] == "Stay in character."
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert models["lady-ada"]["greeting"] == "Good evening, User."
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": "lady-ada", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
    assert reply.status_code == 200


def test_card_attached_to_an_adapter(served: tuple[Cameo, str],
                                     extra_adapters: dict[str, Path]) -> None:
    cameo, url = served
    assert upload(url, extra_adapters["alpha"], "ada").status_code == 201
    attached = _import(url, {"card": CARD, "adapter": "ada"})
    assert attached.status_code == 201, attached.text
    assert attached.json()["adapter"] == "ada" and attached.json()["version"] == 2
    persona = cameo.registry.get("ada")
    assert persona is not None and persona.adapter is not None
    assert persona.card.display_name == "Lady Ada"


def _without(field: str) -> dict[str, Any]:
    data = {k: v for k, v in CARD["data"].items() if k != field}
    return {**CARD, "data": data}


@pytest.mark.parametrize("body,param", [
    ({"card": _without("name")}, "card.data.name"),
    ({"card": {**CARD, "spec": "chara_card_v3"}}, "card.spec"),
    ({"card": {**CARD, "data": {**CARD["data"], "description": "x" * 20_000}}},
     "card.data.description"),
    ({"card": {**CARD, "data": {**CARD["data"], "name": "   "}}}, "card.data.name"),
    ({"card": CARD, "adapter": "no-such-adapter"}, "adapter"),
])
def test_bad_cards_are_refused(served: tuple[Cameo, str], body: dict[str, Any],
                               param: str) -> None:
    cameo, url = served
    response = _import(url, body)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    assert cameo.registry.all() == []


def test_non_json_card_is_400(served: tuple[Cameo, str]) -> None:
    cameo, url = served
    response = _import(url, b"\x89PNG not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]
    assert cameo.registry.all() == []


def _served_prompt(url: str, model: str, text: str = "Hi") -> str:
    messages = [{"role": "user", "content": text}]
    tokens = httpx.post(f"{url}/tokenize", timeout=60,
                        json={"model": model, "messages": messages}).json()["tokens"]
    return str(httpx.post(f"{url}/detokenize", timeout=60,
                          json={"model": model, "tokens": tokens}).json()["prompt"])


def test_the_example_dialogue_reaches_the_model_as_framed_turns(
        served: tuple[Cameo, str]) -> None:
    _, url = served
    plain = {**CARD, "data": {**CARD["data"], "name": "Plain Ada", "mes_example": ""}}
    for card in (CARD, plain):
        assert _import(url, {"card": card}).status_code == 201
    with_examples, without = _served_prompt(url, "lady-ada"), _served_prompt(url, "plain-ada")
    assert "A loom of numbers." not in without and "Example dialogue" not in without
    # after the system turn, before the user's message, framed as examples of the voice
    start = with_examples.index("Example dialogue: how Lady Ada talks")
    order = [with_examples.index(part, start) for part in (
        "What is an engine?", "A loom of numbers.", "The conversation starts here.")]
    assert order == sorted(order)
    assert with_examples.index("Stay in character.") > with_examples.rindex("Hi")
    assert with_examples.index("Victorian mathematician") < start


def test_a_prompt_only_persona_gets_sane_defaults_below_its_card(
        served: tuple[Cameo, str]) -> None:
    from server.api.sampling import PROMPT_ONLY_DEFAULTS

    _, url = served
    rambler = {**CARD, "data": {**CARD["data"], "name": "Rambler"}}
    assert _import(url, {"card": rambler}).status_code == 201
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "model": "rambler", "ignore_eos": True, "seed": 1,
        "messages": [{"role": "user", "content": "Tell me everything about London."}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == PROMPT_ONLY_DEFAULTS["max_tokens"]
