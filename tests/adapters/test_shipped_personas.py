"""The personas shipped in adapters/registry/: valid cards, small adapters the engine accepts for
the embedded base, and adapters that move held-out answers into the persona's voice.

Greedy answers for every persona on a few held-out prompts are generated in one batch (adapter
with its system prompt, as served, against the base with the same system prompt).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.training.data import POEM, SMALL_TALK_HELDOUT
from adapters.training.personas import in_character, in_voice, language_of
from server.composition import Cameo
from server.engine.types import AdapterRef, GenerationRequest, SamplingParams
from server.lora.adapter import read_adapter
from server.model.loader import LoadedModel
from server.registry.personas import valid_name
from server.registry.registry import Registry
from tests.helpers import chat_prompt, run_requests
from tests.scoring import EngineProbe

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "adapters" / "registry"
HELDOUT = ROOT / "adapters" / "training" / "data" / "prompts_heldout.txt"
SCHEMA = ROOT / "docs" / "persona.schema.json"
SHIPPED = sorted(p.name for p in REGISTRY.iterdir() if (p / "adapter_config.json").is_file())
POEM_OPENING = POEM.split("{")[0]
PROMPTS = [p for p in HELDOUT.read_text().splitlines()  # three topic prompts, in English
           if p.strip() and p not in SMALL_TALK_HELDOUT and not p.startswith(POEM_OPENING)
           and language_of(p) == "en"][:3]
MAX_BYTES = 10 * 1024 * 1024


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


@pytest.fixture(scope="module")
def answers(cameo: Cameo, embedded: LoadedModel) -> dict[tuple[str, str, str], str]:
    """(name, condition, prompt) -> greedy text; every request in one submission."""
    params = SamplingParams(max_tokens=16, temperature=0.0)
    keys, requests = [], []
    for name in SHIPPED:
        system = _card(name)["system_prompt"]
        for index, prompt in enumerate(PROMPTS):
            ids = chat_prompt(embedded.tokenizer, prompt, system=system)
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
    assert voiced >= len(PROMPTS) - 1, tuned
    assert voiced >= sum(in_voice(b, markers) for b in plain), (tuned, plain)
