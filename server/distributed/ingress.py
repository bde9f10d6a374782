"""The ingress deployment: Cameo's FastAPI app, serving through engine replicas.

`CameoIngress` builds the very app `cameo-server` runs (`server.api.app.create_app`: auth,
validation, OpenAI schemas, admission, metrics) over a `Cameo` composition whose engine service
is `server.distributed.service.RayEngineService`: no model weights here, the tokenizer and the
model config (`load_base_info`) for prompts and context checks, the shared registry for
personas and uploads, and generation on the engine deployment.

Every chat response carries `x-cameo-replica` (the engine replica that produced it),
`x-cameo-adapter-cache` (`hit` when that replica already held the persona, `miss` when it had to
load it) and `x-cameo-attempts` (engine calls it took).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from prometheus_client import Counter
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.app import create_app
from server.composition import Cameo
from server.distributed.engine import prepare_model_files
from server.distributed.service import RayEngineService, placement_box
from server.distributed.settings import settings_from_payload
from server.service.base import load_base_info
from server.settings import Settings

log = logging.getLogger(__name__)


def build_ingress(settings: Settings, engine: DeploymentHandle, retries: int,
                  allow_zero_replicas: bool) -> tuple[Cameo, RayEngineService]:
    """The composition of an ingress: the base without weights, the shared registry, Ray."""
    prepare_model_files(settings)
    base = load_base_info(settings)
    service = RayEngineService(engine, base.tokenizer, retries, allow_zero_replicas)
    return Cameo.assemble(settings, base, service), service


class IngressHeaders:
    """ASGI middleware: adds the `x-cameo-*` placement headers `RayEngineService.generate` noted
    for this request (the note is made before the response starts, also for streams), and
    leaves `x-request-id` to Serve's proxy, which echoes the same id on every response (the
    app's own copy would make it appear twice)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        box: dict[str, str] = {}
        token = placement_box.set(box)
        incoming = dict(scope.get("headers", [])).get(b"x-request-id")

        async def send_with_placement(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if not (k.lower() == b"x-request-id" and v == incoming)]
                message["headers"] = headers + [(k.encode(), v.encode()) for k, v in box.items()]
            await send(message)

        try:
            await self.app(scope, receive, send_with_placement)
        finally:
            placement_box.reset(token)


@serve.ingress()
class CameoIngress:
    """Deployment class (wrapped with `serve.deployment(...)` in `server.distributed.app`)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
            self, settings: dict[str, Any], engine: DeploymentHandle, engine_deployment: str,
            retries: int, allow_zero_replicas: bool) -> None:
        self.settings = settings_from_payload(settings)
        logging.getLogger("server").setLevel(self.settings.log_level.upper())
        self.cameo, self.service = await asyncio.to_thread(
            build_ingress, self.settings, engine, retries, allow_zero_replicas)
        app_name = serve.get_replica_context().app_name
        self._watch = asyncio.get_running_loop().create_task(
            self.service.watch(app_name, engine_deployment))

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self.settings, self.cameo)
        app.add_middleware(IngressHeaders)
        retries = Counter("cameo_engine_retries", "Requests re-sent because their engine "
                          "replica failed, by when it failed", ["phase"],
                          registry=app.state.metrics.registry)
        self.service.retried = lambda phase: retries.labels(phase).inc()
        return app

    def __del__(self) -> None:
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.cancel()
        cameo = getattr(self, "cameo", None)
        if cameo is not None:
            cameo.registry.close()
