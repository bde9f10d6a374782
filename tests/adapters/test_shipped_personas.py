"""The personas shipped in adapters/registry/: valid cards, small adapters the engine accepts for
the embedded base, and adapters that move held-out answers into the persona's voice.

Greedy answers for every persona on a few held-out prompts are generated in one batch, with
the prompt the server builds for the persona (system prompt, the card's example dialogue, the
question): its adapter against the plain base with the same prompt; then every
persona answers a chat whose first answer another persona gave (attributed to it, as the
server sends it), in its own voice and without the other's words.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.training.data import POEM, SMALL_TALK_HELDOUT
from adapters.training.personas import in_character, in_voice, language_of
from server.api.prompt import build_messages, encode_prompt
from server.api.schemas import ChatMessage
from server.composition import Cameo
from server.engine.types import AdapterRef, GenerationRequest, SamplingParams
from server.lora.adapter import read_adapter
from server.model.loader import LoadedModel
from server.registry.personas import Persona, parse_card, valid_name
from server.registry.registry import Registry
from tests.helpers import run_requests
from tests.scoring import EngineProbe

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "adapters" / "registry"
DATA = ROOT / "adapters" / "training" / "data"
HELDOUT = DATA / "prompts_heldout.txt"
SCHEMA = ROOT / "docs" / "persona.schema.json"
SHIPPED = sorted(p.name for p in REGISTRY.iterdir() if (p / "adapter_config.json").is_file())
POEM_OPENING = POEM.split("{")[0]
PROMPTS = [p for p in HELDOUT.read_text().splitlines()  # six topic prompts, in English
           if p.strip() and p not in SMALL_TALK_HELDOUT and not p.startswith(POEM_OPENING)
           and language_of(p) == "en"][:6]
MAX_BYTES = 10 * 1024 * 1024
REPLY_TOKENS = 40  # greedy: the voice is in every sentence, not in an opener


def _card(name: str) -> dict:
    return json.loads((REGISTRY / name / "persona.json").read_text())


def test_shipped_personas_are_imported_on_first_start(tmp_path: Path, embedded: LoadedModel,
                                                         cameo: Cameo) -> None:
    assert len(SHIPPED) >= 4, SHIPPED
    registry = Registry.open(tmp_path, embedded.model_id, cameo.base.shapes, 64,
                             seed_dir=REGISTRY)  # what a server's first start does
    try:
        for name in SHIPPED:
            persona = registry.get(name)
            assert persona is not None and persona.adapter is not None, name
            assert persona.card.display_name == _card(name)["display_name"]
    finally:
        registry.close()


@pytest.mark.parametrize("name", SHIPPED)
def test_card_is_complete_and_valid(name: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    assert valid_name(name)
    card = _card(name)
    jsonschema.validate(card, json.loads(SCHEMA.read_text()))
    for field in ("display_name", "description", "system_prompt", "greeting",
                  "example_messages", "tags", "sampling", "markers"):
        assert card.get(field), f"{name}: {field} is empty"
    assert in_character(card["greeting"], card["markers"])


@pytest.mark.parametrize("name", SHIPPED)
def test_adapter_fits_the_embedded_base(name: str, embedded: LoadedModel,
                                        cameo: Cameo) -> None:
    folder = REGISTRY / name
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < MAX_BYTES, f"{name}: {size} bytes"
    weights = read_adapter(folder, cameo.base.shapes, max_rank=64)
    assert weights.rank in (8, 16)
    assert weights.base_model == embedded.model_id


def _served_prompt(tokenizer: Any, name: str, history: list[ChatMessage]) -> tuple[int, ...]:
    """The prompt the server builds for persona `name` (system prompt, the card's example
    dialogue, the chat; another persona's turns attributed to it)."""
    persona = Persona(name, parse_card(_card(name), name), None)
    messages = build_messages(history, persona, speaker=name,
                              display=lambda other: str(_card(other)["display_name"]))
    return tuple(encode_prompt(tokenizer, messages))


@pytest.fixture(scope="module")
def answers(cameo: Cameo, embedded: LoadedModel) -> dict[tuple[str, str, str], str]:
    """(name, condition, prompt) -> greedy text; every request in one submission."""
    params = SamplingParams(max_tokens=REPLY_TOKENS, temperature=0.0)
    keys, requests = [], []
    for name in SHIPPED:
        for index, prompt in enumerate(PROMPTS):
            ids = _served_prompt(embedded.tokenizer, name,
                                 [ChatMessage(role="user", content=prompt)])
            for condition, ref in (("adapter", AdapterRef(name, 1, REGISTRY / name)),
                                   ("prompt_only", None)):
                keys.append((name, condition, prompt))
                requests.append(GenerationRequest(f"shipped-{name}-{condition}-{index}", ids,
                                                  params, ref))
    results = run_requests(EngineProbe.of(cameo), requests)
    return {key: result.text for key, result in zip(keys, results, strict=True)}


@pytest.mark.parametrize("name", SHIPPED)
def test_adapter_changes_held_out_answers_toward_the_persona(
        name: str, answers: dict[tuple[str, str, str], str]) -> None:
    markers = _card(name)["markers"]
    tuned = [answers[(name, "adapter", p)] for p in PROMPTS]
    plain = [answers[(name, "prompt_only", p)] for p in PROMPTS]
    assert all(t != b for t, b in zip(tuned, plain, strict=True)), (tuned, plain)
    voiced = sum(in_voice(t, markers) for t in tuned)
    assert voiced >= len(PROMPTS) // 2, tuned  # greedy, 40 tokens: at least half in voice
    assert voiced >= sum(in_voice(b, markers) for b in plain), (tuned, plain)


SWITCHES = [(SHIPPED[i - 1], name) for i, name in enumerate(SHIPPED)]  # (said before, now)


def _exclusive_markers(before: str, now: str) -> list[str]:
    """Markers of `before` that `now` never says in the replies it was trained on (words only
    `before` would say: the pirate's own asides say "'tis", one of the Bard's markers)."""
    own = _trained_replies(now)
    return [m for m in _card(before)["markers"] if not in_character(own, [m])]


@functools.cache
def _trained_replies(name: str) -> str:
    """Every reply `name` learned to write (its training chats' weighted assistant turns)."""
    lines = (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    chats = [json.loads(line) for line in lines if line.strip()]
    return "\n".join(m["content"] for chat in chats for m in chat["messages"]
                     if m["role"] == "assistant" and m.get("weight", 1) != 0)


SECOND_QUESTIONS = PROMPTS[1:3]


@pytest.fixture(scope="module")
def switched_answers(cameo: Cameo, embedded: LoadedModel) -> dict[tuple[str, str], list[str]]:
    """(before, now) -> `now`'s greedy replies to chats whose first answer `before` gave, one
    per second question, built as the server builds them (the other's turn attributed)."""
    params = SamplingParams(max_tokens=REPLY_TOKENS, temperature=0.0)
    keys, requests = [], []
    for before, now in SWITCHES:
        for second in SECOND_QUESTIONS:
            history = [ChatMessage(role="user", content=PROMPTS[0]),
                       ChatMessage(role="assistant", name=before,
                                   content=_card(before)["greeting"]),
                       ChatMessage(role="user", content=second)]
            ids = _served_prompt(embedded.tokenizer, now, history)
            keys.append((before, now))
            requests.append(GenerationRequest(f"switch-{len(requests)}", ids, params,
                                              AdapterRef(now, 1, REGISTRY / now)))
    replies: dict[tuple[str, str], list[str]] = {pair: [] for pair in SWITCHES}
    for key, result in zip(keys, run_requests(EngineProbe.of(cameo), requests), strict=True):
        replies[key].append(result.text)
    return replies


@pytest.mark.parametrize(("before", "now"), SWITCHES)
def test_new_persona_keeps_its_own_voice_after_a_switch(
        before: str, now: str, switched_answers: dict[tuple[str, str], list[str]]) -> None:
    """Never the previous persona's words; its own voice in at least one of the replies."""
    replies = switched_answers[(before, now)]
    assert not any(in_character(r, _exclusive_markers(before, now)) for r in replies), replies
    assert any(in_voice(r, _card(now)["markers"]) for r in replies), replies
