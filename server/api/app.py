"""The FastAPI application: routes, error handlers, and the runtime's lifetime.

`create_app(settings, runtime=None)`: with a runtime (tests, tools) the app serves it at once;
without one the app starts answering `/health` immediately and loads the model in a background
thread, with `/ready` at 503 until the engine runs. The engine is stopped at shutdown only when
the app built it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from server import __version__
from server.api import adapters, chat, models, personas
from server.api.errors import install_error_handlers
from server.api.limits import BodyLimitMiddleware
from server.runtime import Runtime
from server.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    owns_runtime = runtime is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader: asyncio.Task[None] | None = None
        if runtime is not None:
            _serve(app, runtime)
        else:
            loader = asyncio.create_task(_load(app, settings))
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
            current: Runtime | None = getattr(app.state, "runtime", None)
            if owns_runtime and current is not None:
                current.engine.stop()
                current.registry.close()

    app = FastAPI(title="Cameo", version=__version__, lifespan=lifespan,
                  description="One quantized LLM, many LoRA personas, OpenAI-compatible.")
    app.state.settings = settings
    app.state.runtime = None
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, default_limit=settings.max_request_bytes,
                       upload_limit=settings.max_upload_bytes)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(adapters.router)
    app.include_router(personas.router)
    return app


def _serve(app: FastAPI, runtime: Runtime) -> None:
    runtime.engine.start()
    app.state.runtime = runtime


async def _load(app: FastAPI, settings: Settings) -> None:
    try:
        runtime = await asyncio.to_thread(Runtime.build, settings)
    except Exception:
        log.exception("loading the model failed; the server stays unready")
        return
    _serve(app, runtime)
    log.info("ready: serving %s with %d persona(s) on %s", runtime.loaded.model_id,
             len(runtime.registry.all()), runtime.loaded.device)
