"""Persona cards and persona records: what frontends show and how the prompt is built.

`parse_card(data, name)` validates a `persona.json` object (see docs/persona.schema.json) and
returns a frozen `PersonaCard`; it raises `CardError` naming the offending field (`param`:
`persona.<field>`). A `Persona` is one servable version: a card plus, for adapter personas, the
folder of its adapter files.

Unknown fields, the one rule: a top-level field whose name starts with `x-` is an extension,
kept as it is (`PersonaCard.extensions`, written back by `to_json`, at most `LIMITS["extensions"]`
characters of JSON together); any other field the card format does not define is refused,
naming it, at every level (so a misspelt `sytem_prompt` is an error, not a silent default).
Every path applies it through `parse_card`: uploads, the seed import, cards built by the
character card import (`cards.py`, which reads SillyTavern's own format and maps only the fields
it knows) and stored rows read back (written by `to_json`, so they pass; one that does not is
quarantined by the registry, never fatal).

A card's `avatar` (optional) is a picture for frontends: a `data:image/(png|jpeg|webp|gif);base64`
URL whose bytes are an image of that type, or an `http(s)://` URL, at most `LIMITS["avatar"]`
characters; `avatar_problem(url)` says what is wrong with one (None: it is fine).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.errors import CameoError
from server.lora.ref import AdapterRef

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def valid_name(name: str) -> bool:
    """A persona name: the whole string matches NAME_PATTERN (no trailing newline slips by)."""
    return NAME_PATTERN.fullmatch(name) is not None

CARD_FILE = "persona.json"

# Characters per card field: the one limit that uploads, imports and reads all apply.
LIMITS = {"display_name": 128, "description": 4000, "system_prompt": 16000, "greeting": 4000,
          "post_history_instructions": 4000, "example_message": 8000, "tag": 64, "source": 64,
          "avatar": 256 * 1024, "extensions": 64 * 1024}
EXTENSION_PREFIX = "x-"
# The first bytes of each image type an avatar's data: URL may hold.
_IMAGE_MAGIC = {"png": (b"\x89PNG\r\n\x1a\n",), "jpeg": (b"\xff\xd8\xff",),
                "gif": (b"GIF87a", b"GIF89a"), "webp": (b"RIFF",)}
_DATA_URL = re.compile(r"data:image/(png|jpeg|webp|gif);base64,([A-Za-z0-9+/]+={0,2})")
_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s\"'<>\\`]*)?")


class CardError(CameoError, ValueError):
    """A persona card that does not validate; `param` names the field."""

    code = "invalid_card"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=LIMITS["example_message"])


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=1000)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=1 << 20)


class _CardFile(BaseModel):
    """The persona.json format without its `x-` extensions: any other key is refused."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(default=None, max_length=LIMITS["display_name"])
    description: str = Field(default="", max_length=LIMITS["description"])
    system_prompt: str = Field(default="", max_length=LIMITS["system_prompt"])
    greeting: str = Field(default="", max_length=LIMITS["greeting"])
    example_messages: list[_Message] = Field(default_factory=list, max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=32)
    sampling: _Sampling = Field(default_factory=_Sampling)
    markers: list[str] = Field(default_factory=list, max_length=256)
    post_history_instructions: str = Field(default="", max_length=LIMITS["post_history_instructions"])
    source: str | None = Field(default=None, max_length=LIMITS["source"])
    avatar: str | None = Field(default=None, max_length=LIMITS["avatar"])


def avatar_problem(url: str) -> str | None:
    """Why `url` cannot be a card's avatar, or None when it can."""
    if len(url) > LIMITS["avatar"]:
        return f"at most {LIMITS['avatar']} characters"
    if _HTTP_URL.fullmatch(url):
        return None
    found = _DATA_URL.fullmatch(url)
    if found is None:
        return "must be a data:image/(png|jpeg|webp|gif);base64 URL or an http(s) URL"
    try:
        image = base64.b64decode(found.group(2), validate=True)
    except (binascii.Error, ValueError):
        return "the data: URL is not base64"
    kind = found.group(1)
    if not image.startswith(_IMAGE_MAGIC[kind]) or (kind == "webp" and image[8:12] != b"WEBP"):
        return f"the data: URL does not hold a {kind} image"
    return None


@dataclass(frozen=True)
class PersonaCard:
    display_name: str
    description: str = ""
    system_prompt: str = ""
    greeting: str = ""
    tags: tuple[str, ...] = ()
    example_messages: tuple[dict[str, str], ...] = ()
    sampling: dict[str, float] = field(default_factory=dict)
    markers: tuple[str, ...] = ()
    post_history_instructions: str = ""
    source: str | None = None
    avatar: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)  # the `x-` fields, as uploaded

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "display_name": self.display_name, "description": self.description,
            "system_prompt": self.system_prompt, "greeting": self.greeting,
            "tags": list(self.tags), "example_messages": [dict(m) for m in self.example_messages],
            "sampling": dict(self.sampling), "markers": list(self.markers),
            "post_history_instructions": self.post_history_instructions, "source": self.source,
        }
        if self.avatar:  # only when set: cards without one read and compare as before
            data["avatar"] = self.avatar
        data.update(self.extensions)
        return data


def card_fields() -> tuple[str, ...]:
    """The top-level fields a persona.json may hold besides `x-` extensions."""
    return tuple(_CardFile.model_fields)


def parse_card(data: Any, name: str) -> PersonaCard:
    """Validate a persona.json object; raises CardError naming the bad field."""
    if not isinstance(data, dict):
        raise CardError("persona.json must hold a JSON object", "persona")
    extensions = {k: v for k, v in data.items() if str(k).startswith(EXTENSION_PREFIX)}
    try:
        card = _CardFile.model_validate(
            {k: v for k, v in data.items() if k not in extensions})
    except ValidationError as exc:
        raise _card_error(exc) from exc
    if any(len(tag) > LIMITS["tag"] for tag in card.tags):
        raise CardError(f"persona.json: tags are at most {LIMITS['tag']} characters each",
                        "persona.tags")
    problem = card.avatar and avatar_problem(card.avatar)
    if problem:
        raise CardError(f"persona.json: avatar: {problem}", "persona.avatar")
    if extensions and len(json.dumps(extensions, ensure_ascii=False)) > LIMITS["extensions"]:
        raise CardError(f"persona.json: the x- extension fields together are at most "
                        f"{LIMITS['extensions']} characters of JSON", "persona")
    sampling = {k: float(v) for k, v in card.sampling.model_dump().items() if v is not None}
    return PersonaCard(
        display_name=card.display_name or name, description=card.description,
        system_prompt=card.system_prompt, greeting=card.greeting, tags=tuple(card.tags),
        example_messages=tuple(m.model_dump() for m in card.example_messages),
        sampling=sampling, markers=tuple(card.markers),
        post_history_instructions=card.post_history_instructions, source=card.source,
        avatar=card.avatar or None, extensions=extensions)


def _card_error(exc: ValidationError) -> CardError:
    """The first problem of a card, naming its field; an unknown field says what to do."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        top = len(first["loc"]) == 1
        hint = (f"; fields of your own must start with {EXTENSION_PREFIX!r} (known fields: "
                f"{', '.join(card_fields())})") if top else ""
        return CardError(f"persona.json: unknown field {where!r}{hint}", f"persona.{where}")
    return CardError(f"persona.json: {where}: {first['msg']}", f"persona.{where}")


@dataclass(frozen=True)
class Persona:
    """One servable version of a persona."""

    name: str
    card: PersonaCard
    adapter: AdapterRef | None  # None: a prompt-only persona on the base
    version: int = 1
    created: int = 0
