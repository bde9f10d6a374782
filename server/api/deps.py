"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from fastapi import Request

from server.api.errors import APIError
from server.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The process's runtime, or 503 while the model is still loading or the engine is down."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise APIError(503, "the model is still loading; retry shortly", code="not_ready",
                       headers={"Retry-After": "5"})
    if not runtime.ready:
        raise APIError(503, "the engine is not running", code="engine_down")
    return runtime
