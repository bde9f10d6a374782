"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from fastapi import Request

from server.api.errors import APIError
from server.serving import Serving


def get_runtime(request: Request) -> Serving:
    """The process's runtime, or 503 while the model is still loading or the engine is down."""
    runtime: Serving | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise APIError(503, "the model is still loading; retry shortly", code="not_ready",
                       headers={"Retry-After": "5"})
    reason = not_ready_reason(request)
    if reason is not None:
        raise APIError(503, f"not ready: {reason}", code="not_ready",
                       headers={"Retry-After": "5"})
    return runtime


def not_ready_reason(request: Request) -> str | None:
    """Why the server cannot take requests now, or None when it can."""
    state = request.app.state
    runtime = getattr(state, "runtime", None)
    if state.draining:
        return "shutting down"
    fatal = getattr(state, "fatal", None)
    if fatal is not None:
        return f"start-up failed: {fatal}"
    if runtime is None:
        return "the model is still loading"
    if not runtime.ready:
        return "the engine is not running"
    if runtime.stalled:
        return "the engine has stalled"
    return None
