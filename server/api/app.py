"""The FastAPI application: routes, error handlers, middleware, and the composition's lifetime.

`create_app(settings, cameo=None)`: with a composition (tests, tools, the Ray ingress) the app
serves it at once;
without one the app starts answering `/health` immediately and loads the model in a background
thread, with `/ready` at 503 until the engine runs. The engine is stopped at shutdown only when
the app built it. When that load fails, `app.state.fatal` holds the error, `/health` and
`/ready` answer 503 with it, and `app.state.on_fatal` (set by `cameo-server` to stop uvicorn,
which then exits non-zero) is called. `app.state` holds what the routes share: settings,
the composition (`server.composition.Cameo`), admission control, metrics, the in-flight count
and the draining flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from server import __version__
from server.api import adapters, chat, completions, models, personas, tokenize
from server.api.admission import Admission
from server.api.auth import require_user
from server.api.errors import install_error_handlers
from server.api.framing import FramingMiddleware
from server.api.headers import SecurityHeadersMiddleware, docs_csp
from server.api.limits import BodyLimitMiddleware
from server.api.metrics import Metrics
from server.api.middleware import RequestContextMiddleware
from server.api.webmount import WebMount, web_dir
from server.composition import Cameo
from server.errors import CameoError
from server.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, cameo: Cameo | None = None) -> FastAPI:
    owns_cameo = cameo is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader: asyncio.Task[None] | None = None
        if cameo is not None:
            _serve(app, cameo)
        else:
            loader = asyncio.create_task(_load(app, settings))
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
            current: Cameo | None = getattr(app.state, "cameo", None)
            if owns_cameo and current is not None:
                current.close()

    app = FastAPI(title="Cameo", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None,
                  description="One quantized LLM, many LoRA personas, OpenAI-compatible.")
    state = app.state
    state.settings = settings
    state.cameo = None
    state.fatal = None
    state.on_fatal = None
    state.draining = False
    state.in_flight = 0
    state.admission = Admission(settings.max_waiting_requests, settings.max_waiting_tokens,
                                settings.rate_limit_per_minute)
    state.metrics = Metrics(state)
    install_error_handlers(app)
    # Each add_middleware wraps the ones before: the last added sees a request first.
    app.add_middleware(BodyLimitMiddleware, default_limit=settings.max_request_bytes,
                       upload_limit=settings.max_upload_bytes)
    app.add_middleware(FramingMiddleware)
    app.add_middleware(RequestContextMiddleware, state=state)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id"])
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: on every response, even a 503
    for module in (chat, completions, tokenize, models, adapters, personas):
        app.include_router(module.router)
    _add_docs_routes(app)
    # The web chat: static files at "/" after every API route, so no route is shadowed (and
    # unknown routes stay 404, wrong methods 405). The page holds no data; everything it shows
    # comes from the API behind the keys.
    app.router.routes.append(WebMount(app.router, web_dir()))
    return app


def _add_docs_routes(app: FastAPI) -> None:
    """The OpenAPI schema and Swagger UI, behind the same keys as the inference routes.

    The endpoints are module-level functions that reach the app through the request: FastAPI
    caches dependency callables globally, so a closure over `app` would keep every app (and its
    composition, with the KV cache) alive for the life of the process.
    """
    auth = [Depends(require_user)]
    app.add_api_route("/openapi.json", _openapi, include_in_schema=False, dependencies=auth)
    app.add_api_route("/docs", _docs, include_in_schema=False, dependencies=auth)


async def _openapi(request: Request) -> JSONResponse:
    return JSONResponse(_without_422(request.app.openapi()))


async def _docs() -> HTMLResponse:
    page = get_swagger_ui_html(openapi_url="/openapi.json", title="Cameo API")
    page.headers["Content-Security-Policy"] = docs_csp(bytes(page.body).decode())
    return page


def _without_422(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents a 422 on every route with a body; Cameo answers 400 instead."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    return schema


def _serve(app: FastAPI, cameo: Cameo) -> None:
    cameo.service.start()
    app.state.cameo = cameo


async def _load(app: FastAPI, settings: Settings) -> None:
    try:
        cameo = await Cameo.load(settings)
    except Exception as exc:
        # An expected refusal (a base that cannot be served, a registry folder or catalog that
        # cannot be used: the message names the path) needs no traceback.
        expected = isinstance(exc, (CameoError, OSError))
        log.critical("start-up failed: %s", exc, exc_info=not expected)
        app.state.fatal = exc
        if app.state.on_fatal is not None:
            app.state.on_fatal()
        return
    _serve(app, cameo)
    log.info("ready: serving %s with %d persona(s)", cameo.base.model_id,
             len(cameo.registry.all()))
