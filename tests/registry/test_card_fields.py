"""Unknown persona.json fields, one rule everywhere: a top-level field named `x-...` is kept and
returned; any other field the card format does not define is refused with a 400 naming it, and
docs/persona.schema.json says exactly the same."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.composition import Cameo
from server.registry.personas import LIMITS, CardError, card_fields, parse_card
from server.registry.registry import Registry
from tests.registry.conftest import snapshot, upload

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "persona.schema.json"


def _card_only(tmp_path: Path, card: dict[str, Any]) -> Path:
    folder = tmp_path / "card"
    folder.mkdir(exist_ok=True)
    (folder / "persona.json").write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize("card,param", [
    ({"display_name": "Typo", "sytem_prompt": "Be brief."}, "persona.sytem_prompt"),
    ({"display_name": "Nested", "sampling": {"temprature": 0.5}}, "persona.sampling.temprature"),
    ({"example_messages": [{"role": "user", "content": "Hi", "mood": "odd"}]},
     "persona.example_messages.0.mood"),
    ({"X-Upper": 1}, "persona.X-Upper"),  # the prefix is x- exactly
])
def test_an_unknown_field_is_refused_naming_it(served: tuple[Cameo, str],
                                               extra_adapters: dict[str, Path], tmp_path: Path,
                                               card: dict[str, Any], param: str) -> None:
    cameo, url = served
    before = snapshot(cameo)
    field = param.rsplit(".", 1)[1]
    for folder in (_card_only(tmp_path, card), extra_adapters["alpha"]):
        files = None if folder != extra_adapters["alpha"] else {
            "adapter_config": ("adapter_config.json",
                               (folder / "adapter_config.json").read_bytes()),
            "adapter_model": ("adapter_model.safetensors",
                              (folder / "adapter_model.safetensors").read_bytes()),
            "persona": ("persona.json", json.dumps(card).encode())}
        response = upload(url, folder, "strict", files=files)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["param"], error["code"]) == (param, "invalid_card")
        assert f"unknown field '{param.removeprefix('persona.')}'" in error["message"]
        assert field in error["message"]
    assert snapshot(cameo) == before


def test_an_x_field_is_kept_and_returned(served: tuple[Cameo, str],
                                         extra_adapters: dict[str, Path]) -> None:
    cameo, url = served
    folder = extra_adapters["alpha"]
    card = {"display_name": "Ext", "x-voice": {"id": "v1", "speed": 1.2}, "x-author": "me"}
    files = {"adapter_config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
             "adapter_model": ("adapter_model.safetensors",
                               (folder / "adapter_model.safetensors").read_bytes()),
             "persona": ("persona.json", json.dumps(card).encode())}
    created = upload(url, folder, "ext", files=files)
    assert created.status_code == 201, created.text
    assert {k: created.json()["persona"][k] for k in ("x-voice", "x-author")} == {
        "x-voice": {"id": "v1", "speed": 1.2}, "x-author": "me"}
    stored = httpx.get(f"{url}/v1/adapters/ext").json()["persona"]
    assert stored["x-voice"] == card["x-voice"] and stored["x-author"] == "me"
    reopened = Registry.open(cameo.settings.registry_dir, cameo.base.model_id, cameo.base.shapes,
                             cameo.settings.max_lora_rank)  # the stored row reads back
    try:
        persona = reopened.get("ext")
        assert persona is not None and persona.card.extensions == {
            "x-voice": {"id": "v1", "speed": 1.2}, "x-author": "me"}
    finally:
        reopened.close()


def test_extensions_have_a_size_limit() -> None:
    with pytest.raises(CardError, match="x- extension fields"):
        parse_card({"x-blob": "a" * LIMITS["extensions"]}, "big")
    assert parse_card({"x-blob": "a" * 100}, "ok").extensions == {"x-blob": "a" * 100}


def test_the_seed_import_follows_the_rule(tmp_path: Path) -> None:
    """Shipped folders are checked as uploads are: a card with an unknown field is not imported
    (logged), the rest is; a stored row edited to hold one is quarantined, not fatal."""
    seed = tmp_path / "seed"
    for name, card in (("good", {"display_name": "Good", "x-note": "kept"}),
                       ("typo", {"display_name": "Typo", "greting": "Hi"})):
        (seed / name).mkdir(parents=True)
        (seed / name / "persona.json").write_text(json.dumps(card))
    registry = Registry.open(tmp_path / "registry", "base", None, 16,  # type: ignore[arg-type]
                             seed_dir=seed)  # prompt-only personas: no base shapes needed
    try:
        assert [p.name for p in registry.all()] == ["good"]
        good = registry.get("good")
        assert good is not None and good.card.extensions == {"x-note": "kept"}
        with sqlite3.connect(registry.catalog.path) as db:
            db.execute("UPDATE versions SET card = ? WHERE name = 'good'",
                       (json.dumps({"display_name": "Good", "mystery": 1}),))
        assert registry.all() == [] and "mystery" in registry.quarantined()["good@1"]
    finally:
        registry.close()


def test_the_schema_and_the_server_know_the_same_fields() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert tuple(schema["properties"]) == card_fields()
    assert schema["additionalProperties"] is False and list(schema["patternProperties"]) == ["^x-"]
    sampling = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                "frequency_penalty", "presence_penalty", "max_tokens"}
    assert set(schema["properties"]["sampling"]["properties"]) == sampling
    assert parse_card({"sampling": dict.fromkeys(sampling, 1)}, "all").sampling.keys() == sampling
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate({"display_name": "A", "x-anything": [1, {"b": None}]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"display_name": "A", "sytem_prompt": "x"}, schema)
