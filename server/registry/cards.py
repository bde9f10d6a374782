"""SillyTavern character cards (`chara_card_v2`, and V1 and PNG cards) into a Cameo persona card.

Contract: `card_from_import(card, card_file)` reads the card of an import request, an object or
a card file (base64 of a `.json` file or of a PNG card, read by `png_card.py`), and
`card_from_v2(obj)` validates it (spec, required name, field sizes) and returns
`(suggested_name, PersonaCard)`; both raise `CardError` naming the bad field. A V1 card (the
flat fields, no `spec`) is read as the V2 card it would be. The `{{char}}` and `{{user}}`
macros are resolved (the user is called "User"). The system prompt is the card's own
`system_prompt` when it has one (with `{{original}}` replaced by the composed prompt), else it is
composed from name, description, personality and scenario.

Each V2 field is held to the limit of the persona field it becomes (`personas.LIMITS`), so a
card is refused here, naming its own field, rather than stored and failing later; the registry
checks the finished persona card once more, as it checks an uploaded persona.json. A card file
is at most `MAX_CARD_FILE_BYTES`.

A PNG card file is also the persona's picture: its image (the PNG without its text chunks)
becomes the card's `avatar` as a `data:image/png;base64` URL when that fits `LIMITS["avatar"]`;
a larger picture is left out (the import still succeeds, and frontends show initials).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.registry.personas import LIMITS, CardError, PersonaCard, parse_card
from server.registry.png_card import SIGNATURE, CardFileError, card_from_png, image_only

_PROMPT = LIMITS["system_prompt"]  # personality and scenario go into the system prompt
MAX_CARD_FILE_BYTES = 16 << 20  # SillyTavern's PNG cards are a few MB at most
_V1_FIELDS = ("name", "description", "first_mes")  # any of them, and no spec: a V1 card


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


def card_from_import(card: dict[str, Any] | None, card_file: str | None) -> tuple[str, PersonaCard]:
    """The persona of `POST /v1/personas/import`, whose body has `card` or `card_file`."""
    if card is not None and card_file is not None:
        raise CardError("send the card once: as card (an object) or as card_file, not both",
                        "card_file")
    if card_file is not None:
        raw = decode_card_file(card_file)
        suggested, persona = card_from_v2(read_card_file(raw))
        return suggested, replace(persona, avatar=png_avatar(raw))
    if card is None:
        raise CardError("send a card: card (a Character Card V2 object) or card_file (base64 "
                        "of a .json or .png card file)", "card")
    return card_from_v2(card)


def decode_card_file(encoded: str) -> bytes:
    """A card file's bytes from its base64, within MAX_CARD_FILE_BYTES."""
    if len(encoded) > (MAX_CARD_FILE_BYTES + 2) // 3 * 4:
        raise CardFileError(f"card_file decodes to about {len(encoded) * 3 // 4:,} bytes; a "
                            f"card file is at most {MAX_CARD_FILE_BYTES:,} bytes",
                            code="card_too_large")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CardFileError(f"card_file is not base64: {exc}") from exc
    return raw


def read_card_file(raw: bytes) -> dict[str, Any]:
    """The card object in a card file: a PNG card's, or the file's own JSON."""
    if raw.startswith(SIGNATURE):
        return card_from_png(raw, MAX_CARD_FILE_BYTES)
    try:
        card = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardFileError("card_file is neither a PNG character card nor a JSON card "
                            f"file: {exc}") from exc
    if not isinstance(card, dict):
        raise CardFileError("card_file's JSON is not an object: not a Character Card V2")
    return card


def png_avatar(raw: bytes) -> str | None:
    """The avatar of a card file: its PNG image as a data: URL, or None (not a PNG, too big)."""
    if not raw.startswith(SIGNATURE):
        return None
    url = "data:image/png;base64," + base64.b64encode(image_only(raw)).decode("ascii")
    return url if len(url) <= LIMITS["avatar"] else None


def card_from_v2(obj: Any) -> tuple[str, PersonaCard]:
    if not isinstance(obj, dict):
        raise CardError("the card must be a JSON object", "card")
    if "spec" not in obj and any(key in obj for key in _V1_FIELDS):
        obj = {"spec": "chara_card_v2", "spec_version": "2.0", "data": obj}
    if obj.get("spec") != "chara_card_v2":
        raise CardError("not a Character Card V2: card.spec must be 'chara_card_v2' (got "
                        f"{obj.get('spec')!r})", "card.spec")
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
