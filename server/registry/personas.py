"""Persona cards and persona records: what frontends show and how the prompt is built.

`parse_card(data, name)` validates a `persona.json` object (see docs/persona.schema.json) and
returns a frozen `PersonaCard`; it raises `CardError` naming the offending field. A `Persona` is
one servable version: a card plus, for adapter personas, the folder of its adapter files.
"""

from __future__ import annotations

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
          "post_history_instructions": 4000, "example_message": 8000, "tag": 64, "source": 64}


class CardError(CameoError, ValueError):
    """A persona card that does not validate; `param` names the field."""

    code = "invalid_card"


class _Message(BaseModel):
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
    """The persona.json format (extra keys are kept out, not refused)."""

    model_config = ConfigDict(extra="ignore")

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

    def to_json(self) -> dict[str, Any]:
        return {
            "display_name": self.display_name, "description": self.description,
            "system_prompt": self.system_prompt, "greeting": self.greeting,
            "tags": list(self.tags), "example_messages": [dict(m) for m in self.example_messages],
            "sampling": dict(self.sampling), "markers": list(self.markers),
            "post_history_instructions": self.post_history_instructions, "source": self.source,
        }


def parse_card(data: Any, name: str) -> PersonaCard:
    """Validate a persona.json object; raises CardError naming the bad field."""
    if not isinstance(data, dict):
        raise CardError("persona.json must hold a JSON object", "persona")
    try:
        card = _CardFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CardError(f"persona.json: {where}: {first['msg']}", "persona") from exc
    if any(len(tag) > LIMITS["tag"] for tag in card.tags):
        raise CardError(f"persona.json: tags are at most {LIMITS['tag']} characters each",
                        "persona")
    sampling = {k: float(v) for k, v in card.sampling.model_dump().items() if v is not None}
    return PersonaCard(
        display_name=card.display_name or name, description=card.description,
        system_prompt=card.system_prompt, greeting=card.greeting, tags=tuple(card.tags),
        example_messages=tuple(m.model_dump() for m in card.example_messages),
        sampling=sampling, markers=tuple(card.markers),
        post_history_instructions=card.post_history_instructions, source=card.source)


@dataclass(frozen=True)
class Persona:
    """One servable version of a persona."""

    name: str
    card: PersonaCard
    adapter: AdapterRef | None  # None: a prompt-only persona on the base
    version: int = 1
    created: int = 0
