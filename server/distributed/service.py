"""`EngineService` on a Ray cluster: generation runs on the engine deployment's replicas.

Contract: `RayEngineService.generate` forwards a complete request (its `AdapterRef` resolved by
the ingress's registry) through a streaming deployment handle with `multiplexed_model_id` = the
persona's name (none for the base and prompt-only personas), so Serve routes a persona to a
replica that already holds its adapter. A request whose replica dies or cannot be reached is
sent again, at most `retries` times: before its first token as a plain retry, after it as the
continuation (`server.distributed.wire.Resumption`), so the client sees one answer either way.
`stats()` combines the replicas' latest reports (they come with every stream and from `watch`);
merged mode is per engine process, so `merge` is refused here.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from server.distributed.wire import Placement, ReplicaReport, Resumption, continuation, send_timing
from server.engine.types import GenerationRequest, RequestOutput
from server.lora.adapter import AdapterError
from server.lora.merge import MergeError
from server.lora.ref import AdapterRef
from server.service.protocol import EngineService
from server.service.stats import ServiceStats, combine

log = logging.getLogger(__name__)

_NO_MERGE = ("merged mode is not available when engines run as Ray Serve replicas: each replica "
             "serves many personas; run a dedicated deployment instead")

# Failures of the replica itself (not of the request): safe to send the request elsewhere.
REPLICA_FAILURES: tuple[type[BaseException], ...] = (
    RayActorError, ActorUnavailableError, ReplicaUnavailableError)

# Where the placement of the current HTTP request is noted (`ingress.IngressHeaders` sets it).
placement_box: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "cameo_placement", default=None)


class RayEngineService:
    def __init__(self, engine: DeploymentHandle, tokenizer: object, retries: int,
                 allow_zero_replicas: bool = False) -> None:
        self.tokenizer = tokenizer  # for resuming a stream's text after a replica failure
        self.retries = retries
        self.allow_zero_replicas = allow_zero_replicas
        self.reports: dict[str, ReplicaReport] = {}
        self.running_replicas = 0
        self.retried: Callable[[str], None] = lambda phase: None  # counts re-sent requests
        self._handle = engine
        self._ready = False

    def start(self) -> None:
        """The replicas run on their own."""

    def close(self) -> None:
        pass

    def retire(self, key: str) -> None:
        """Replicas key their caches by version, never reused: a retired one ages out (LRU)."""

    def health(self) -> str | None:
        if not self._ready:
            return "the engine is not running"
        if self.stats().stalled:
            return "the engine has stalled"
        return None

    def stats(self) -> ServiceStats:
        combined = combine(r.stats for r in self.reports.values())
        return ServiceStats(**{**combined.__dict__, "ready": self._ready})

    async def merge(self, ref: AdapterRef) -> None:
        raise MergeError(_NO_MERGE)

    async def unmerge(self, ref: AdapterRef) -> None:
        raise MergeError(_NO_MERGE)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        model_id = request.adapter.name if request.adapter is not None else ""
        handle = self._handle.options(stream=True, multiplexed_model_id=model_id)
        sent: list[int] = []  # token ids already handed to the caller
        attempt = 0
        while True:
            attempt += 1
            resumption = Resumption(self.tokenizer, request, sent) if sent else None
            current = continuation(request, sent) if sent else request
            stream = cast(DeploymentResponseGenerator[Placement | RequestOutput],
                          handle.generate.remote(current, send_timing(current)))
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
        box = placement_box.get()
        if box is not None:
            box["x-cameo-replica"] = placement.replica
            if placement.adapter_cached is not None:
                box["x-cameo-adapter-cache"] = "hit" if placement.adapter_cached else "miss"
            box["x-cameo-attempts"] = str(attempt)

    def note(self, report: ReplicaReport) -> None:
        self.reports[report.replica] = report

    async def watch(self, app_name: str, deployment: str, interval: float = 2.0) -> None:
        """Keep readiness and the replica reports current: the engine deployment's running
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


def _satisfies_the_seam(service: RayEngineService) -> EngineService:
    return service  # mypy checks RayEngineService against the EngineService protocol here


def running_replicas(app_name: str, deployment: str) -> int:
    app = serve.status().applications.get(app_name)
    details = app.deployments.get(deployment) if app else None
    if details is None:
        return 0
    states = details.replica_states.items()
    return sum(n for state, n in states if getattr(state, "value", state) == "RUNNING")
