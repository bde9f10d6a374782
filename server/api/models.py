"""`GET /v1/models` (the base and every persona) and the health probes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.auth import require_user
from server.api.deps import get_runtime, not_ready_reason
from server.api.errors import APIError
from server.api.schemas import ModelCard, ModelList
from server.serving import Serving

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, dependencies=[Depends(require_user)])
async def list_models(runtime: Serving = Depends(get_runtime)) -> ModelList:
    base = runtime.loaded.model_id
    cards = [ModelCard(id=base, created=runtime.engine_started, root=base)]
    for persona in runtime.registry.all():
        card = persona.card
        cards.append(ModelCard(
            id=persona.name, created=persona.created, root=base, parent=base,
            display_name=card.display_name, description=card.description,
            greeting=card.greeting, tags=list(card.tags)))
    return ModelList(data=cards)


@router.get("/health", response_model=None)
async def health(request: Request) -> dict[str, str] | JSONResponse:
    """Alive: the process answers (the model may still be loading); 503 once start-up failed."""
    fatal = getattr(request.app.state, "fatal", None)
    if fatal is not None:
        return APIError(503, f"start-up failed: {fatal}", code="startup_failed").response()
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Ready: the model is loaded and the engine thread runs; 503 otherwise."""
    reason = not_ready_reason(request)
    if reason is not None:
        return APIError(503, f"not ready: {reason}", code="not_ready").response()
    return JSONResponse({"status": "ready", "model": request.app.state.runtime.loaded.model_id})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition; behind the API keys unless CAMEO_METRICS_REQUIRE_KEY=false."""
    if request.app.state.settings.metrics_require_key:
        require_user(request)
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
