"""Admin routes for the registry: upload, list, inspect and delete persona adapters.

`POST /v1/adapters` takes a multipart form (files `adapter_config`, `adapter_model`, optional
`persona`; fields `name`, `replace`, `force`). Files are streamed to a staging folder on the
registry's filesystem; the registry validates everything before the new version becomes
visible, and the staging folder is removed on any failure.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile

from server.api.admin_schemas import AdapterInfo, AdapterList, Deleted, Residency, VersionInfo
from server.api.auth import require_admin
from server.api.deps import get_cameo
from server.api.errors import APIError, domain_error, quote
from server.api.schemas import ErrorResponse
from server.composition import Cameo
from server.lora.adapter import CONFIG_FILE, WEIGHTS_FILE
from server.lora.merge import MergeError
from server.lora.ref import AdapterRef, adapter_key
from server.registry.catalog import VersionRow
from server.registry.personas import CARD_FILE
from server.registry.registry import check_name

router = APIRouter(dependencies=[Depends(require_admin)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 503)}
FILE_FIELDS = {"adapter_config": CONFIG_FILE, "adapter_model": WEIGHTS_FILE, "persona": CARD_FILE}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _flag(form: Any, key: str) -> bool:
    value = str(form.get(key) or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise APIError(400, f"{key} must be true or false", param=key, code="invalid_value")


@router.post("/v1/adapters", response_model=AdapterInfo, status_code=201, responses=_ERRORS)
async def upload_adapter(request: Request, cameo: Cameo = Depends(get_cameo)) -> AdapterInfo:
    form = await request.form(max_files=len(FILE_FIELDS), max_fields=8, max_part_size=1 << 16)
    try:
        name = str(form.get("name") or "")
        check_name(name)  # a RegistryError is answered by the domain-error handler
        replace, force = _flag(form, "replace"), _flag(form, "force")
        staged = cameo.registry.stage()
        try:
            await _stage_files(form, staged)
            row = await asyncio.to_thread(cameo.registry.add, name, staged, replace=replace,
                                          force=force)
        finally:
            shutil.rmtree(staged, ignore_errors=True)  # gone already when the upload committed
    finally:
        await form.close()
    return adapter_info(cameo, row.name, published=row)


async def _stage_files(form: Any, staged: Path) -> None:
    for key in form:
        if key not in FILE_FIELDS and isinstance(form.get(key), UploadFile):
            raise APIError(400, f"unexpected file field {quote(key)}; expected "
                           f"{', '.join(FILE_FIELDS)}", param=key, code="invalid_value")
    if form.get("adapter_model") is None and form.get("persona") is None:
        raise APIError(400, "send adapter_config and adapter_model (a PEFT LoRA adapter), a "
                       "persona card, or both", param="adapter_model", code="missing_files")
    for field, filename in FILE_FIELDS.items():
        upload = form.get(field)
        if upload is None:
            continue
        if not isinstance(upload, UploadFile):
            raise APIError(400, f"{field} must be a file", param=field, code="invalid_value")
        if field == "adapter_model":
            await _refuse_pickle(upload)
        with open(staged / filename, "wb") as out:
            while chunk := await upload.read(1 << 20):
                out.write(chunk)


async def _refuse_pickle(upload: UploadFile) -> None:
    head = await upload.read(8)
    await upload.seek(0)
    named_pickle = (upload.filename or "").lower().endswith(_PICKLE_SUFFIXES)
    if named_pickle or head[:1] == b"\x80" or head[:2] == b"PK":
        raise APIError(400, "adapter_model must be a safetensors file; pickled weights (.bin, "
                       ".pt) are refused and never unpickled", param="adapter_model",
                       code="unsafe_format")


@router.get("/v1/adapters", response_model=AdapterList, responses=_ERRORS)
async def list_adapters(cameo: Cameo = Depends(get_cameo)) -> AdapterList:
    return AdapterList(data=[adapter_info(cameo, p.name) for p in cameo.registry.all()],
                       quarantined=cameo.registry.quarantined())


@router.get("/v1/adapters/{name}", response_model=AdapterInfo, responses=_ERRORS)
async def get_adapter(name: str, cameo: Cameo = Depends(get_cameo)) -> AdapterInfo:
    return adapter_info(cameo, name)


@router.delete("/v1/adapters/{name}", response_model=Deleted, responses=_ERRORS)
async def delete_adapter(name: str, cameo: Cameo = Depends(get_cameo)) -> Deleted:
    versions = await asyncio.to_thread(cameo.registry.delete, name)
    return Deleted(id=name, versions=versions)


@router.post("/v1/adapters/{name}/merge", response_model=AdapterInfo, responses=_ERRORS)
async def merge_adapter(name: str, cameo: Cameo = Depends(get_cameo)) -> AdapterInfo:
    """Pin the persona as merged into the base layers whenever the batch is its own."""
    return await _switch_merge(cameo, name, merge=True)


@router.post("/v1/adapters/{name}/unmerge", response_model=AdapterInfo, responses=_ERRORS)
async def unmerge_adapter(name: str, cameo: Cameo = Depends(get_cameo)) -> AdapterInfo:
    """Drop the pin and unmerge the persona now (a no-op when it is not merged)."""
    return await _switch_merge(cameo, name, merge=False)


async def _switch_merge(cameo: Cameo, name: str, merge: bool) -> AdapterInfo:
    ref = _adapter_ref(cameo, name)
    service = cameo.service
    try:
        await (service.merge(ref) if merge else service.unmerge(ref))
    except MergeError as exc:  # the name is the param at fault
        raise domain_error(MergeError(exc.message, "name")) from exc
    return adapter_info(cameo, name)


def _adapter_ref(cameo: Cameo, name: str) -> AdapterRef:
    persona = cameo.registry.get(name)
    if persona is None:
        raise APIError(404, f"the persona {quote(name)} does not exist", param="name",
                       code="model_not_found")
    if persona.adapter is None:
        raise APIError(400, f"the persona {quote(name)} is prompt-only: it has no adapter to merge",
                       param="name", code="no_adapter")
    return persona.adapter


def adapter_info(cameo: Cameo, name: str,
                 published: VersionRow | None = None) -> AdapterInfo:
    """The persona's current version; or `published`, the version an upload just committed
    (answered even when a concurrent upload or delete already changed the current one)."""
    versions = cameo.registry.versions(name)
    persona = cameo.registry.get(name)
    if published is not None:
        current = published
        versions = versions if published in versions else [published]
        card = published.card
    elif not versions or persona is None:
        raise APIError(404, f"the persona {quote(name)} does not exist", param="name",
                       code="model_not_found")
    else:
        current = next(v for v in versions if v.version == persona.version)
        card = persona.card.to_json()
    resident = Residency()
    if current.kind == "adapter":
        key = adapter_key(name, current.version)
        stats = cameo.service.stats()
        resident = Residency(device_slot=stats.slot_of(key), host=key in stats.host_keys,
                             merged=stats.merged == key, pinned=stats.pinned == key)
    return AdapterInfo(
        id=name, name=name, version=current.version,
        current_version=persona.version if persona else current.version,
        created=int(current.created), kind=current.kind,  # type: ignore[arg-type]
        rank=current.rank, alpha=current.alpha, target_modules=list(current.target_modules),
        base_model=current.base_model, files=list(current.files),  # type: ignore[arg-type]
        versions=[_version_info(v) for v in versions], persona=card,
        resident=resident)


def _version_info(row: VersionRow) -> VersionInfo:
    return VersionInfo.model_validate({
        "version": row.version, "created": int(row.created), "kind": row.kind, "rank": row.rank,
        "alpha": row.alpha, "target_modules": list(row.target_modules),
        "base_model": row.base_model, "files": list(row.files)})
