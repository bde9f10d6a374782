"""Persona routes: what frontends show (`GET /v1/personas[/{name}]`) and character card import.

`POST /v1/personas/import` (admin) turns a SillyTavern card into a persona: a prompt-only
persona on the base, or, with `adapter`, a new version of an existing adapter persona that
keeps its adapter files and takes the card. The card comes as `card` (a `chara_card_v2` object)
or as `card_file` (base64 of a `.json` or PNG card file); `server.registry.cards` reads both.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from fastapi import APIRouter, Depends

from server.api.admin_schemas import CardImport, PersonaInfo, PersonaList
from server.api.auth import require_admin, require_user
from server.api.deps import get_cameo
from server.api.errors import APIError, quote
from server.api.schemas import ErrorResponse
from server.composition import Cameo
from server.lora.adapter import CONFIG_FILE, WEIGHTS_FILE
from server.registry.cards import card_from_import
from server.registry.personas import Persona

router = APIRouter()
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 503)}


def persona_info(persona: Persona) -> PersonaInfo:
    card = persona.card
    return PersonaInfo(
        id=persona.name, version=persona.version, display_name=card.display_name,
        description=card.description, greeting=card.greeting, tags=list(card.tags),
        system_prompt=card.system_prompt, example_messages=[dict(m) for m in card.example_messages],
        sampling=dict(card.sampling), post_history_instructions=card.post_history_instructions,
        adapter=persona.name if persona.adapter is not None else None, avatar=card.avatar)


@router.get("/v1/personas", response_model=PersonaList, responses=_ERRORS,
            dependencies=[Depends(require_user)])
async def list_personas(cameo: Cameo = Depends(get_cameo)) -> PersonaList:
    return PersonaList(data=[persona_info(p) for p in cameo.registry.all()])


@router.get("/v1/personas/{name}", response_model=PersonaInfo, responses=_ERRORS,
            dependencies=[Depends(require_user)])
async def get_persona(name: str, cameo: Cameo = Depends(get_cameo)) -> PersonaInfo:
    persona = cameo.registry.get(name)
    if persona is None:
        raise APIError(404, f"the persona {quote(name)} does not exist", param="name",
                       code="model_not_found")
    return persona_info(persona)


@router.post("/v1/personas/import", response_model=PersonaInfo, status_code=201,
             responses=_ERRORS, dependencies=[Depends(require_admin)])
async def import_card(body: CardImport, cameo: Cameo = Depends(get_cameo)) -> PersonaInfo:
    suggested, card = card_from_import(body.card, body.card_file)  # CardError: a 400
    name = body.name or body.adapter or suggested
    staged = cameo.registry.stage()
    try:
        replace = body.replace
        if body.adapter is not None:
            source = cameo.registry.get(body.adapter)
            if source is None or source.adapter is None:
                raise APIError(404, f"no adapter persona named {quote(body.adapter)}",
                               param="adapter", code="model_not_found")
            for file in (CONFIG_FILE, WEIGHTS_FILE):
                shutil.copyfile(source.adapter.path / file, staged / file)
            replace = replace or name == body.adapter
        row = await asyncio.to_thread(cameo.registry.add, name, staged, replace=replace,
                                      force=True, card=card)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    persona = cameo.registry.get(row.name)
    assert persona is not None
    return persona_info(persona)
