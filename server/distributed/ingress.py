"""The ingress deployment: Cameo's FastAPI app, serving through engine replicas.

`CameoIngress` builds the very app `cameo-server` runs (`server.api.app.create_app`: auth,
validation, OpenAI schemas, admission, metrics) and hands it a `RemoteServing` as its runtime.
`RemoteServing` satisfies `server.serving.Serving` with no model weights: the tokenizer and the
model config for prompts and context checks, the shared registry for personas and uploads, and
`generate` forwarding to the engine deployment through a streaming deployment handle with
`multiplexed_model_id` = the persona (no id for the base and prompt-only personas).

Failures: a request whose engine replica dies or cannot be reached is sent again (at most
`CAMEO_RAY_RETRIES` times). Before its first token that is a plain retry; after it, the
ingress sends the continuation (see `server.distributed.wire.Resumption`), so the client sees
one uninterrupted answer either way.

Every chat response carries `x-cameo-replica` (the engine replica that produced it),
`x-cameo-adapter-cache` (`hit` when that replica already held the persona, `miss` when it had to
load it) and `x-cameo-attempts` (engine calls it took).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import cached_property
from types import SimpleNamespace
from typing import Any, cast

import torch
from fastapi import FastAPI
from prometheus_client import Counter
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.app import create_app
from server.distributed.engine import prepare_model_files
from server.distributed.settings import settings_from_payload
from server.distributed.wire import Placement, ReplicaReport, Resumption, continuation, send_timing
from server.engine.constraints import Grammars
from server.engine.runner import module_shapes
from server.engine.types import EngineStats, GenerationRequest, RequestOutput
from server.lora.adapter import AdapterError, ModuleShapes
from server.lora.merge import MergeError
from server.model.loader import _resolve_source
from server.registry.personas import Persona
from server.registry.registry import Registry
from server.serving import Serving
from server.settings import Settings

log = logging.getLogger(__name__)

_NO_MERGE = ("merged mode is not available when engines run as Ray Serve replicas: each replica "
             "serves many personas; run a dedicated deployment instead")

# Failures of the replica itself (not of the request): safe to send the request elsewhere.
REPLICA_FAILURES: tuple[type[BaseException], ...] = (
    RayActorError, ActorUnavailableError, ReplicaUnavailableError)

_placement: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "cameo_placement", default=None)


@dataclass(frozen=True)
class BaseInfo:
    """The base model without its weights: what the ingress needs of it."""

    model_id: str
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    max_position_embeddings: int
    shapes: ModuleShapes
    vocab_size: int = 0  # width of the logits


def load_base_info(settings: Settings) -> BaseInfo:
    """Tokenizer and config of the base (the embedded model's converted folder, a local folder
    or a cached hub id); the module shapes come from a weightless (meta device) model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    prepare_model_files(settings)
    source, default_id = _resolve_source(settings)
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return BaseInfo(model_id=settings.base_model_id or default_id, tokenizer=tokenizer,
                    max_position_embeddings=int(getattr(config, "max_position_embeddings", 2048)),
                    shapes=module_shapes(skeleton),
                    vocab_size=int(skeleton.get_output_embeddings().weight.shape[0]))


class ClusterEngine:
    """The engine replicas as the app sees them: `start()` does nothing (they run on their
    own), `stats` and `slots` add up the replicas' latest reports (for /metrics)."""

    def __init__(self, reports: dict[str, ReplicaReport]) -> None:
        self._reports = reports

    def start(self) -> None:
        pass

    @property
    def stats(self) -> EngineStats:
        reports = list(self._reports.values())
        resident: dict[str, int] = {}
        for report in reports:
            resident.update(report.resident_adapters)
        return EngineStats(
            steps=sum(r.steps for r in reports), running=sum(r.running for r in reports),
            waiting=sum(r.waiting for r in reports),
            prompt_tokens=sum(r.prompt_tokens for r in reports),
            generated_tokens=sum(r.generated_tokens for r in reports),
            resident_adapters=resident,
            running_adapters=frozenset().union(*(r.running_adapters for r in reports)),
            waiting_adapters=frozenset().union(*(r.waiting_adapters for r in reports)))

    @property
    def slots(self) -> SimpleNamespace:
        reports = list(self._reports.values())
        return SimpleNamespace(
            bank=SimpleNamespace(num_slots=sum(r.slots for r in reports) + 1),
            loads=sum(r.slot_loads for r in reports),
            evictions=sum(r.slot_evictions for r in reports))


class ClusterHostCache:
    """The replicas' host adapter caches, added up (for /metrics)."""

    def __init__(self, reports: dict[str, ReplicaReport]) -> None:
        self._reports = reports

    def __len__(self) -> int:
        return sum(len(r.host_keys) for r in self._reports.values())

    def __contains__(self, key: object) -> bool:
        return any(key in r.host_keys for r in self._reports.values())

    @property
    def capacity(self) -> int:
        return sum(r.host_capacity for r in self._reports.values())

    @property
    def stats(self) -> SimpleNamespace:
        reports = list(self._reports.values())
        return SimpleNamespace(hits=sum(r.host_hits for r in reports),
                               misses=sum(r.host_misses for r in reports),
                               evictions=sum(r.host_evictions for r in reports))


class RemoteServing:
    """`server.serving.Serving` for the ingress: generation runs on the engine deployment."""

    def __init__(self, settings: Settings, base: BaseInfo, registry: Registry,
                 engine: DeploymentHandle, retries: int, allow_zero_replicas: bool = False,
                 ) -> None:
        self.settings = settings
        self.loaded = base
        self.registry = registry
        self.max_context = min(settings.max_context, base.max_position_embeddings)
        self.engine_started = int(time.time())
        self.retries = retries
        self.allow_zero_replicas = allow_zero_replicas
        self.reports: dict[str, ReplicaReport] = {}
        self.engine = ClusterEngine(self.reports)
        self.host_cache = ClusterHostCache(self.reports)
        self.running_replicas = 0
        self.retried: Callable[[str], None] = lambda phase: None  # counts re-sent requests
        self._handle = engine
        self._ready = False

    @classmethod
    def build(cls, settings: Settings, engine: DeploymentHandle, retries: int,
              allow_zero_replicas: bool = False) -> RemoteServing:
        base = load_base_info(settings)
        registry = Registry.open(settings.registry_dir, base.model_id, base.shapes,
                                 settings.max_lora_rank, seed_dir=settings.seed_dir)
        log.info("ingress: registry %s: %d persona(s)", settings.registry_dir,
                 len(registry.all()))
        return cls(settings, base, registry, engine, retries, allow_zero_replicas)

    # ------------------------------------------------------------------ the Serving seam

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def stalled(self) -> bool:
        """Every replica that reported is stalled (Serve also replaces a stalled replica)."""
        reports = list(self.reports.values())
        return bool(reports) and all(r.stalled for r in reports)

    @cached_property
    def grammars(self) -> Grammars:
        """Grammars compiled here only to refuse what cannot compile; replicas compile their own."""
        eos = self.loaded.tokenizer.eos_token_id
        return Grammars(self.loaded.tokenizer, self.loaded.vocab_size,
                        [] if eos is None else [eos])

    def residency(self, key: str) -> tuple[int | None, bool]:
        """(device slot on some replica or None, whether some replica has it in host memory),
        from the replicas' latest reports."""
        slot = None
        for report in self.reports.values():
            slot = dict(report.resident_adapters).get(key, slot)
        return slot, key in self.host_cache

    def merge_state(self, key: str) -> tuple[bool, bool]:
        """Merged mode is per engine process; replicas do not merge (see `merge`)."""
        return False, False

    async def merge(self, persona: Persona) -> None:
        raise MergeError(_NO_MERGE)

    async def unmerge(self, persona: Persona) -> None:
        raise MergeError(_NO_MERGE)

    async def generate(self, request: GenerationRequest,
                       persona: Persona | None) -> AsyncIterator[RequestOutput]:
        model_id = persona.name if persona is not None and persona.adapter_key else ""
        handle = self._handle.options(stream=True, multiplexed_model_id=model_id)
        sent: list[int] = []  # token ids already handed to the caller
        attempt = 0
        while True:
            attempt += 1
            resumption = (Resumption(self.loaded.tokenizer, request, sent) if sent else None)
            current = continuation(request, sent) if sent else request
            stream = cast(DeploymentResponseGenerator[Placement | RequestOutput],
                          handle.generate.remote(current, send_timing(current), persona))
            finished = False
            try:
                async for item in stream:
                    if isinstance(item, Placement):
                        self._placed(item, attempt)
                        continue
                    output = resumption.adjust(item) if resumption else item
                    sent.extend(output.token_ids)
                    finished = output.finished
                    yield output
                    if finished:
                        return
                return  # the stream ended without a final output (cancelled on the replica)
            except REPLICA_FAILURES as exc:
                if attempt > self.retries:
                    log.error("request %s: engine replicas failed %d times, giving up: %s",
                              request.request_id, attempt, exc)
                    yield RequestOutput(
                        request_id=request.request_id, finish_reason="error",
                        error="the engine replica serving this request failed",
                        error_code="engine_unavailable", prompt_tokens=len(request.prompt_ids),
                        completion_tokens=len(sent))
                    return
                log.warning("request %s: engine replica failed after %d token(s), sending it "
                            "again (attempt %d): %s", request.request_id, len(sent),
                            attempt + 1, type(exc).__name__)
                self.retried("mid_stream" if sent else "before_first_token")
                await asyncio.sleep(min(0.2 * attempt, 2.0))
            except RayTaskError as exc:  # raised by the request's own code on the replica
                if isinstance(exc.cause, AdapterError):
                    raise exc.cause from None
                raise
            finally:
                if not finished:
                    stream.cancel()

    # ------------------------------------------------------------------ replica state

    def _placed(self, placement: Placement, attempt: int) -> None:
        self.note(placement.report)
        box = _placement.get()
        if box is not None:
            box["x-cameo-replica"] = placement.replica
            if placement.adapter_cached is not None:
                box["x-cameo-adapter-cache"] = "hit" if placement.adapter_cached else "miss"
            box["x-cameo-attempts"] = str(attempt)

    def note(self, report: ReplicaReport) -> None:
        self.reports[report.replica] = report

    async def watch(self, app_name: str, deployment: str, interval: float = 2.0) -> None:
        """Keep `ready` and the replica reports current: the engine deployment's running
        replica count from `serve.status()`, one report per interval through the handle (a
        random replica; reports also come with every request), stale reports dropped."""
        while True:
            try:
                self.running_replicas = await asyncio.to_thread(
                    running_replicas, app_name, deployment)
                self._ready = self.running_replicas > 0 or self.allow_zero_replicas
                if self.running_replicas > 0:
                    report = await asyncio.wait_for(self._handle.report.remote(), interval * 5)
                    self.note(report)
                horizon = max(30.0, 4 * interval * self.running_replicas)
                for replica, report in list(self.reports.items()):
                    if time.time() - report.at > horizon:
                        del self.reports[replica]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("ingress: cannot read the engine deployment's state: %r", exc)
            await asyncio.sleep(interval)


def _satisfies_the_seam(serving: RemoteServing) -> Serving:
    return serving  # mypy checks RemoteServing against the Serving protocol here


def running_replicas(app_name: str, deployment: str) -> int:
    app = serve.status().applications.get(app_name)
    details = app.deployments.get(deployment) if app else None
    if details is None:
        return 0
    states = details.replica_states.items()
    return sum(n for state, n in states if getattr(state, "value", state) == "RUNNING")


class IngressHeaders:
    """ASGI middleware: adds the `x-cameo-*` placement headers `RemoteServing.generate` noted
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
        token = _placement.set(box)
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
            _placement.reset(token)


@serve.ingress()
class CameoIngress:
    """Deployment class (wrapped with `serve.deployment(...)` in `server.distributed.app`)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
            self, settings: dict[str, Any], engine: DeploymentHandle, engine_deployment: str,
            retries: int, allow_zero_replicas: bool) -> None:
        self.settings = settings_from_payload(settings)
        logging.getLogger("server").setLevel(self.settings.log_level.upper())
        self.serving = await asyncio.to_thread(RemoteServing.build, self.settings, engine,
                                               retries, allow_zero_replicas)
        app_name = serve.get_replica_context().app_name
        self._watch = asyncio.get_running_loop().create_task(
            self.serving.watch(app_name, engine_deployment))

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self.settings, runtime=self.serving)
        app.add_middleware(IngressHeaders)
        retries = Counter("cameo_engine_retries", "Requests re-sent because their engine "
                          "replica failed, by when it failed", ["phase"],
                          registry=app.state.metrics.registry)
        self.serving.retried = lambda phase: retries.labels(phase).inc()
        return app

    def __del__(self) -> None:
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.cancel()
        serving = getattr(self, "serving", None)
        if serving is not None:
            serving.registry.close()
