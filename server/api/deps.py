"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from fastapi import Request

from server.api.errors import APIError
from server.composition import Cameo


def get_cameo(request: Request) -> Cameo:
    """The process's composition, or 503 while the model is still loading or the engine is
    down."""
    cameo: Cameo | None = getattr(request.app.state, "cameo", None)
    if cameo is None:
        raise APIError(503, "the model is still loading; retry shortly", code="not_ready",
                       headers={"Retry-After": "5"})
    reason = not_ready_reason(request)
    if reason is not None:
        raise APIError(503, f"not ready: {reason}", code="not_ready",
                       headers={"Retry-After": "5"})
    return cameo


def not_ready_reason(request: Request) -> str | None:
    """Why the server cannot take requests now, or None when it can."""
    state = request.app.state
    cameo: Cameo | None = getattr(state, "cameo", None)
    if state.draining:
        return "shutting down"
    fatal = getattr(state, "fatal", None)
    if fatal is not None:
        return f"start-up failed: {fatal}"
    if cameo is None:
        return "the model is still loading"
    return cameo.service.health()
