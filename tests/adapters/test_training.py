"""The training recipe: chats are masked to assistant tokens, a few steps of QLoRA on the NF4
base lower the loss, and the folder it writes is served by the engine (and changes the output).

The recipe wraps the session's NF4 model with PEFT for the run and unwraps it again (training a
second copy would cost another model load); the engine keeps its own references to the base
modules, and the base's greedy answer is checked to be the same before and after.
"""

from __future__ import annotations

import json
import random
from dataclasses import fields
from pathlib import Path

import pytest

from adapters.training.personas import STYLES
from adapters.training.train import (
    IGNORE,
    TrainConfig,
    encode_chat,
    parse_args,
    parse_command,
    read_card,
    read_chats,
    train,
)
from server.composition import Cameo
from server.engine.types import AdapterRef, GenerationRequest, SamplingParams
from server.lora.adapter import read_adapter
from server.model.loader import LoadedModel
from server.registry.personas import parse_card
from tests.helpers import chat_prompt, run_requests
from tests.scoring import EngineProbe

SYSTEM = STYLES["captain-bones"].card["system_prompt"]
ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "adapters" / "training" / "template"
ANSWERS = {
    "Tell me about the sea.": "The sea is vast and deep.",
    "What is a ship?": "A ship is a large boat that sails on water.",
    "Name a colour.": "Blue is a colour.",
    "What do you eat?": "I eat bread and fish.",
}


def _chats() -> list[dict]:
    rng = random.Random(0)
    style = STYLES["captain-bones"]
    return [{"messages": [{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": q},
                          {"role": "assistant", "content": style.restyle(a, rng)}]}
            for q, a in ANSWERS.items()]


def test_assistant_turns_of_weight_0_are_context_not_labels(embedded: LoadedModel,
                                                            tmp_path: Path) -> None:
    example, reply = "Arr, I be fit as a fiddle.", "Ahoy, the sea be wide."
    messages = [{"role": "system", "content": "Be a pirate."},
                {"role": "user", "content": "How are you?"},
                {"role": "assistant", "content": example, "weight": 0},
                {"role": "user", "content": "Tell me about the sea."},
                {"role": "assistant", "content": reply}]
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n")
    assert read_chats(data) == [messages]
    encoded = encode_chat(embedded.tokenizer, messages, 256)
    assert encoded is not None
    ids, labels = encoded
    learned = embedded.tokenizer.decode([i for i in labels if i != IGNORE])
    assert reply in learned and "fiddle" not in learned
    assert "fiddle" in embedded.tokenizer.decode(ids)  # still in the context
    data.write_text(json.dumps({"messages": messages[:3]}) + "\n")
    with pytest.raises(ValueError, match="no chat with an assistant message"):
        read_chats(data)  # nothing to learn
    messages[2]["weight"] = 2
    data.write_text(json.dumps({"messages": messages}) + "\n")
    with pytest.raises(ValueError, match="weight is 0"):
        read_chats(data)


def test_encode_chat_labels_only_assistant_turns(embedded: LoadedModel) -> None:
    tokenizer = embedded.tokenizer
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Arr, matey!"},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Savvy?"}]
    encoded = encode_chat(tokenizer, messages, max_length=256)
    assert encoded is not None
    ids, labels = encoded
    labelled = tokenizer.decode([t for t, label in zip(ids, labels, strict=True)
                                 if label != IGNORE])
    assert "Arr, matey!" in labelled and "Savvy?" in labelled
    assert "Hi" not in labelled and "Bye" not in labelled and "Be brief" not in labelled
    assert labelled.count("<|im_end|>") == 2  # each turn learns to stop
    # truncated before any assistant token: nothing to learn, the chat is dropped
    assert encode_chat(tokenizer, messages, max_length=8) is None


def test_read_chats_rejects_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user"}]}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_chats(path)
    path.write_text('\n{"messages": []}\n{"messages": [{"role": "user", "content": "x"},\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not JSON"):
        read_chats(path)


def test_cli_defaults_and_name_check(tmp_path: Path) -> None:
    config = parse_args(["--data", str(tmp_path / "my-persona.jsonl")])
    assert config.name == "my-persona" and config.out == Path("trained/my-persona")
    assert config.rank == 8 and len(config.target_modules) == 7
    with pytest.raises(SystemExit):
        parse_args(["--data", "x.jsonl", "--name", "Not A Name"])
    with pytest.raises(SystemExit):
        parse_args(["--data", "x.jsonl", "--target-modules", "lm_head"])


def test_upload_flags_and_keys_stay_out_of_the_recorded_config(tmp_path: Path) -> None:
    data = ["--data", str(tmp_path / "p.jsonl")]
    assert parse_command(data, environ={})[1] is None
    config, target = parse_command([*data, "--upload", "http://h:1", "--replace"],
                                   environ={"CAMEO_ADMIN_KEY": "a", "CAMEO_API_KEY": "u"})
    assert target is not None and (target.url, target.replace) == ("http://h:1", True)
    assert (target.admin_key, target.api_key) == ("a", "u")
    _, flagged = parse_command([*data, "--upload", "http://h:1", "--admin-key", "b"],
                               environ={"CAMEO_ADMIN_KEY": "a"})
    assert flagged is not None and flagged.admin_key == "b"
    recorded = {f.name for f in fields(config)}  # what training.json records
    assert not recorded & {"upload", "admin_key", "api_key", "replace"}
    with pytest.raises(SystemExit):
        parse_command([*data, "--replace"], environ={})


def test_the_template_is_what_the_trainer_and_the_server_read() -> None:
    chats = read_chats(TEMPLATE / "chats.jsonl")
    assert len(chats) == len((TEMPLATE / "chats.jsonl").read_text().splitlines()) >= 8
    card = json.loads((TEMPLATE / "persona.json").read_text())
    parsed = parse_card(card, "my-persona")
    assert parsed.to_json() == {**parsed.to_json(), **card}  # every field kept, x- ones too
    assert any(key.startswith("x-") for key in card)
    # the server sends the card's system prompt first: the chats are trained with it in place
    assert all(chat[0] == {"role": "system", "content": card["system_prompt"]} for chat in chats)
    assert any(sum(m["role"] == "assistant" for m in chat) > 1 for chat in chats)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(card, json.loads((ROOT / "docs" / "persona.schema.json").read_text()))


def test_a_bad_card_stops_the_run_before_the_model_loads(tmp_path: Path) -> None:
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"display_name": "Typo", "sytem_prompt": "Be a pirate."}))
    config = TrainConfig(data=TEMPLATE / "chats.jsonl", out=tmp_path / "out", name="typo",
                         persona_card=card, base_model=str(tmp_path / "no-such-base"))
    with pytest.raises(ValueError, match="unknown field 'sytem_prompt'"):
        train(config)  # the base does not exist: reaching the load would fail otherwise
    assert not (tmp_path / "out").exists()
    assert read_card(TrainConfig(data=card, out=tmp_path, name="plain")) == {
        "display_name": "plain"}


def test_training_lowers_loss_and_the_engine_serves_the_adapter(
        cameo: Cameo, embedded: LoadedModel, tmp_path: Path) -> None:
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in _chats()))
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"display_name": "Tiny Bones", "system_prompt": SYSTEM}))
    out = tmp_path / "tiny-bones"
    prompt = chat_prompt(embedded.tokenizer, "Tell me about the sea.", system=SYSTEM)
    params = SamplingParams(max_tokens=12, temperature=0.0)

    def answer(adapter: AdapterRef | None, tag: str) -> list[int]:
        request = GenerationRequest(tag, prompt, params, adapter)
        return run_requests(EngineProbe.of(cameo), [request])[0].token_ids

    base_before = answer(None, "base-before")
    result = train(TrainConfig(data=data, out=out, name="tiny-bones", rank=8, alpha=16,
                               epochs=100, max_steps=8, lr=2e-3, batch_size=4, max_length=96,
                               dropout=0.0, persona_card=card, log_every=4), loaded=embedded)

    assert result.steps == 8 and result.examples == 4
    assert result.losses[-1] < 0.7 * result.losses[0], result.losses
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json",
                                                "adapter_model.safetensors", "persona.json"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == embedded.model_id
    assert json.loads((out / "persona.json").read_text())["display_name"] == "Tiny Bones"
    weights = read_adapter(out, cameo.base.shapes, max_rank=64)
    assert weights.rank == 8 and len(weights.target_modules) == 7

    # the recipe hands the shared base back unchanged; the trained adapter changes the output
    assert answer(None, "base-after") == base_before
    tuned = answer(AdapterRef("tiny-bones", 1, out), "tuned")
    assert tuned != base_before

    # more epochs on it: --init-adapter starts from its weights, not from zero
    more = train(TrainConfig(data=data, out=tmp_path / "more", name="tiny-bones", rank=8,
                             alpha=16, epochs=1, max_steps=1, lr=1e-9, batch_size=4,
                             max_length=96, dropout=0.0, init_adapter=out), loaded=embedded)
    assert more.losses[0] < 0.7 * result.losses[0], (more.losses, result.losses)
    with pytest.raises(ValueError, match="rank 8"):
        train(TrainConfig(data=data, out=tmp_path / "wrong", name="tiny-bones", rank=16,
                          init_adapter=out), loaded=embedded)
    assert not (tmp_path / "wrong").exists()
