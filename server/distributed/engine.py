"""The engine deployment: each replica runs the Cameo engine on its own copy of the base model.

Persona adapters are Serve *multiplexed models* keyed by persona name: `get_model(name)` reads
the persona's current adapter into this replica's host cache, and Serve keeps at most
`adapter_slots` of them per replica (LRU) and tells the router which replica holds which, so a
persona's requests go to a replica that already has its adapter. Requests for the base (or a
prompt-only persona) carry no model id and may go to any replica.

`generate` is a streaming method: a `Placement` first, then the engine's `RequestOutput`s.
Closing the stream (the client left, or the ingress gave up) aborts the request in the engine.

Engine replicas never open the shared registry's catalog: the ingress resolves the persona and
sends its `AdapterRef` with the request (its folder is in the shared registry folder, written
once and never changed), so a replica holds only the engine service and reads adapter files.
Only the ingress writes the registry (uploads)
and reconciles it at start; a replica running `Registry.open` on the shared folder would
reconcile on every scale-up, and reconciliation discards staged uploads and uncommitted
folders, which on a shared folder may be another process's upload in flight. It also keeps
SQLite (WAL needs shared memory) off network filesystems when replicas run on other nodes.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import serve

from server.composition import local_service
from server.distributed.settings import settings_from_payload
from server.distributed.wire import Placement, ReplicaReport, Timing, receive
from server.engine.types import GenerationRequest, RequestOutput
from server.lora.ref import AdapterRef
from server.model.loader import load_base
from server.settings import EMBEDDED_MODEL, Settings

log = logging.getLogger(__name__)


class CameoEngine:
    """Deployment class (wrapped with `serve.deployment(...)` in `server.distributed.app`)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings_from_payload(settings)
        logging.getLogger("server").setLevel(self.settings.log_level.upper())
        prepare_model_files(self.settings)
        _, self.service = local_service(self.settings, load_base(self.settings))
        self.service.start()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._held: set[str] = set()  # personas Serve counts as loaded on this replica
        self._refs: dict[str, AdapterRef] = {}  # the latest version asked for, by persona
        self._hits = 0
        self._misses = 0

        async def load_persona(persona_id: str) -> _Held:
            return await self._load(persona_id)

        # Serve's multiplexing, sized by the engine's device slots (an instance attribute,
        # because the size is a setting: Serve detects multiplexed loaders set in __init__).
        self.get_model = serve.multiplexed(
            max_num_models_per_replica=self.settings.adapter_slots)(load_persona)
        log.info("engine replica %s ready (%d adapter slots)", self.replica_id,
                 self.settings.adapter_slots)

    async def _load(self, persona_id: str) -> _Held:
        """Read the persona's adapter into the host cache (off the event loop)."""
        ref = self._refs.get(persona_id)
        if ref is not None:
            await asyncio.to_thread(self.service.weights, ref)
        self._held.add(persona_id)
        return _Held(persona_id, self._held)

    async def generate(self, request: GenerationRequest,
                       timing: Timing) -> AsyncIterator[Placement | RequestOutput]:
        persona_id = serve.get_multiplexed_model_id()
        cached: bool | None = None
        ref = request.adapter
        if persona_id:
            if ref is not None and ref.name == persona_id:
                self._refs[persona_id] = ref
            cached = persona_id in self._held
            if cached:
                self._hits += 1
            else:
                self._misses += 1
            await self.get_model(persona_id)
        yield Placement(self.replica_id, cached, self.report())
        async for output in self.service.generate(receive(request, timing)):
            yield output

    def report(self) -> ReplicaReport:
        return ReplicaReport(replica=self.replica_id, stats=self.service.stats(),
                             personas=tuple(sorted(self._held)), affinity_hits=self._hits,
                             affinity_misses=self._misses)

    def check_health(self) -> None:
        """Serve's health check: a dead or stalled engine gets this replica replaced."""
        reason = self.service.health()
        if reason is not None:
            raise RuntimeError(reason)

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


class _Held:
    """A multiplexed model: the persona is 'loaded' here until Serve unloads it (LRU).

    The adapter itself stays in the host cache (its own LRU, `CAMEO_HOST_ADAPTERS`) and in a
    device slot (the engine's LRU); unloading only tells the router to prefer other replicas.
    """

    def __init__(self, persona_id: str, held: set[str]) -> None:
        self.persona_id = persona_id
        self._held: set[str] | None = held

    def __del__(self) -> None:  # Serve calls it on unload, and the GC may call it again
        if self._held is not None:
            self._held.discard(self.persona_id)
            self._held = None


def prepare_model_files(settings: Settings) -> None:
    """Convert the embedded model once per cache folder, whichever replica comes first (the
    others wait on a file lock instead of converting into the same folder at once)."""
    if settings.base_model != EMBEDDED_MODEL:
        return
    from server.model.embedded import ensure_converted

    with _file_lock(settings.cache_dir / "models" / ".cameo-convert.lock"):
        ensure_converted(settings.cache_dir)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
