"""SillyTavern Character Card V2 (`chara_card_v2`) into a Cameo persona card.

Contract: `card_from_v2(obj)` validates the card (spec, required name, field sizes) and returns
`(suggested_name, PersonaCard)`; it raises `CardError` naming the bad field. The `{{char}}` and
`{{user}}` macros are resolved (the user is called "User"). The system prompt is the card's own
`system_prompt` when it has one (with `{{original}}` replaced by the composed prompt), else it is
composed from name, description, personality and scenario.

Each V2 field is held to the limit of the persona field it becomes (`personas.LIMITS`), so a
card is refused here, naming its own field, rather than stored and failing later; the registry
checks the finished persona card once more, as it checks an uploaded persona.json.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.registry.personas import LIMITS, CardError, PersonaCard, parse_card

_PROMPT = LIMITS["system_prompt"]  # personality and scenario go into the system prompt


class _V2Data(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=LIMITS["display_name"])
    description: str = Field(default="", max_length=LIMITS["description"])
    personality: str = Field(default="", max_length=_PROMPT)
    scenario: str = Field(default="", max_length=_PROMPT)
    first_mes: str = Field(default="", max_length=LIMITS["greeting"])
    mes_example: str = Field(default="", max_length=_PROMPT)
    system_prompt: str = Field(default="", max_length=_PROMPT)
    post_history_instructions: str = Field(default="",
                                           max_length=LIMITS["post_history_instructions"])
    creator_notes: str = Field(default="", max_length=LIMITS["description"])
    tags: list[str] = Field(default_factory=list, max_length=32)


class _V2Card(BaseModel):
    model_config = ConfigDict(extra="ignore")

    spec: str
    spec_version: str = "2.0"
    data: _V2Data


def card_from_v2(obj: Any) -> tuple[str, PersonaCard]:
    if not isinstance(obj, dict):
        raise CardError("the card must be a JSON object", "card")
    if obj.get("spec") != "chara_card_v2":
        raise CardError(f"card.spec must be 'chara_card_v2' (got {obj.get('spec')!r})",
                        "card.spec")
    try:
        card = _V2Card.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CardError(f"card.{where}: {first['msg']}", f"card.{where}") from exc
    data = card.data
    if not data.name.strip():
        raise CardError("card.data.name must not be blank", "card.data.name")
    if any(len(tag) > LIMITS["tag"] for tag in data.tags):
        raise CardError(f"card.data.tags are at most {LIMITS['tag']} characters each",
                        "card.data.tags")

    def fill(text: str) -> str:
        return text.replace("{{char}}", data.name).replace("{{user}}", "User").strip()

    composed = "\n".join(part for part in (
        f"You are {data.name}.",
        fill(data.description),
        f"Personality: {fill(data.personality)}" if data.personality.strip() else "",
        f"Scenario: {fill(data.scenario)}" if data.scenario.strip() else "",
    ) if part)
    system = fill(data.system_prompt).replace("{{original}}", composed) or composed
    persona = PersonaCard(
        display_name=data.name.strip(),
        description=fill(data.description) or fill(data.creator_notes),
        system_prompt=system,
        greeting=fill(data.first_mes),
        tags=tuple(t.strip() for t in data.tags if t.strip()),
        example_messages=tuple(_examples(fill(data.mes_example), data.name)),
        post_history_instructions=fill(data.post_history_instructions),
        source="chara_card_v2",
    )
    try:  # the composed prompt and resolved macros can still pass a limit
        parse_card(persona.to_json(), slugify(data.name))
    except CardError as exc:
        raise CardError(f"the card does not fit a persona once composed: {exc.message}",
                        "card") from exc
    return slugify(data.name), persona


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:64]
    return slug or "persona"


def _examples(text: str, name: str) -> list[dict[str, str]]:
    """`<START>` blocks of `User:` / `<name>:` lines into chat messages."""
    messages: list[dict[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.upper() == "<START>":
            continue
        for prefix, role in (("User:", "user"), (f"{name}:", "assistant")):
            if line.startswith(prefix):
                messages.append({"role": role, "content": line[len(prefix):].strip()})
                break
        else:
            if messages:
                messages[-1]["content"] += "\n" + line
    return messages[:64]
