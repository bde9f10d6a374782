"""Personas read from the registry folder: `<registry>/<name>/` with a PEFT adapter and a card.

Contract: `PersonaCatalog.scan(folder)` finds every sub-folder whose name is a valid persona name
and that holds `adapter_config.json` (an adapter persona) or only `persona.json` (a prompt-only
persona on the base). A folder that is broken is skipped with a logged reason, never half-served.

This module does not validate adapter tensors (the engine does, when it loads them) and does not
write anything.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.lora.adapter import CONFIG_FILE, AdapterError, read_config

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
CARD_FILE = "persona.json"


@dataclass(frozen=True)
class PersonaCard:
    """What frontends show and how the prompt is built."""

    display_name: str
    description: str = ""
    system_prompt: str = ""
    greeting: str = ""
    tags: tuple[str, ...] = ()
    sampling: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any], name: str) -> PersonaCard:
        sampling = data.get("sampling") or {}
        return cls(
            display_name=str(data.get("display_name") or name),
            description=str(data.get("description") or ""),
            system_prompt=str(data.get("system_prompt") or ""),
            greeting=str(data.get("greeting") or ""),
            tags=tuple(str(t) for t in data.get("tags") or ()),
            sampling={k: float(v) for k, v in sampling.items() if isinstance(v, int | float)},
        )


@dataclass(frozen=True)
class Persona:
    name: str
    card: PersonaCard
    adapter_dir: Path | None  # None: a prompt-only persona on the base
    version: int = 1
    created: int = 0

    @property
    def adapter_key(self) -> str | None:
        return None if self.adapter_dir is None else f"{self.name}@{self.version}"


class PersonaCatalog:
    """Personas by name; replaced whole by `scan`, read by the API."""

    def __init__(self, personas: dict[str, Persona] | None = None) -> None:
        self._personas = dict(personas or {})

    @classmethod
    def scan(cls, folder: Path) -> PersonaCatalog:
        personas: dict[str, Persona] = {}
        if not folder.is_dir():
            log.warning("registry folder %s does not exist: serving the base only", folder)
            return cls()
        for child in sorted(folder.iterdir()):
            persona = _read_persona(child)
            if persona is not None:
                personas[persona.name] = persona
        log.info("registry %s: %d persona(s): %s", folder, len(personas),
                 ", ".join(personas) or "none")
        return cls(personas)

    def get(self, name: str) -> Persona | None:
        return self._personas.get(name)

    def all(self) -> list[Persona]:
        return list(self._personas.values())


def _read_persona(folder: Path) -> Persona | None:
    if not folder.is_dir() or not NAME_PATTERN.match(folder.name):
        return None
    has_adapter = (folder / CONFIG_FILE).is_file()
    if not has_adapter and not (folder / CARD_FILE).is_file():
        return None
    try:
        if has_adapter:
            read_config(folder)
        card = _read_card(folder)
    except (AdapterError, ValueError) as exc:
        log.warning("skipping persona folder %s: %s", folder, exc)
        return None
    created = int(folder.stat().st_mtime)
    return Persona(name=folder.name, card=card, adapter_dir=folder if has_adapter else None,
                   created=created)


def _read_card(folder: Path) -> PersonaCard:
    path = folder / CARD_FILE
    if not path.is_file():
        return PersonaCard(display_name=folder.name)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{CARD_FILE} must hold a JSON object")
    return PersonaCard.from_json(data, folder.name)
