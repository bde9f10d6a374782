"""`GET /v1/models` (the base and every persona; `HEAD` answers 200), `GET /v1/models/{id}`
(one of them, 404 `model_not_found` in OpenAI's error shape for any other id; ids may hold
`/`, as the base's does), and the health probes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.auth import require_user
from server.api.deps import get_cameo, not_ready_reason
from server.api.errors import APIError, quote
from server.api.schemas import ErrorResponse, ModelCard, ModelList
from server.composition import Cameo
from server.registry.personas import Persona

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, dependencies=[Depends(require_user)])
async def list_models(cameo: Cameo = Depends(get_cameo)) -> ModelList:
    return ModelList(data=[_base_card(cameo), *(_persona_card(cameo, p)
                                                  for p in cameo.registry.all())])


@router.head("/v1/models", include_in_schema=False,
             dependencies=[Depends(require_user), Depends(get_cameo)])
async def probe_models() -> Response:
    """What clients send to check a connection: GET's status, without the body."""
    return Response(status_code=200, media_type="application/json")


@router.get("/v1/models/{model_id:path}", response_model=ModelCard,
            responses={s: {"model": ErrorResponse} for s in (401, 404, 503)},
            dependencies=[Depends(require_user)])
async def retrieve_model(model_id: str, cameo: Cameo = Depends(get_cameo)) -> ModelCard:
    if model_id == cameo.base.model_id:
        return _base_card(cameo)
    persona = cameo.registry.get(model_id)
    if persona is None:
        raise APIError(404, f"the model {quote(model_id)} does not exist; GET /v1/models lists "
                       "them", param="model", code="model_not_found")
    return _persona_card(cameo, persona)


def _base_card(cameo: Cameo) -> ModelCard:
    base = cameo.base.model_id
    return ModelCard(id=base, created=cameo.started, root=base)


def _persona_card(cameo: Cameo, persona: Persona) -> ModelCard:
    base, card = cameo.base.model_id, persona.card
    return ModelCard(id=persona.name, created=persona.created, root=base, parent=base,
                     display_name=card.display_name, description=card.description,
                     greeting=card.greeting, tags=list(card.tags), avatar=card.avatar)


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
    return JSONResponse({"status": "ready", "model": request.app.state.cameo.base.model_id})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition; behind the API keys unless CAMEO_METRICS_REQUIRE_KEY=false."""
    if request.app.state.settings.metrics_require_key:
        require_user(request)
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
