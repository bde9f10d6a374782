"""Everything one server process holds: settings, the loaded base, the engine, the registry.

`Runtime.build(settings)` does the slow part (model loading, registry reconciliation) once; the
HTTP app receives the finished runtime. Tests build one runtime and share it between apps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from server.engine.async_engine import AsyncEngine
from server.engine.constraints import Grammars
from server.engine.engine import Engine, EngineConfig
from server.engine.types import AdapterRef, GenerationRequest, RequestOutput
from server.lora.adapter import AdapterError, read_adapter
from server.lora.host_cache import HostAdapterCache
from server.lora.merge import MergeError
from server.model.loader import LoadedModel, load_base
from server.registry.personas import Persona
from server.registry.registry import Registry
from server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    loaded: LoadedModel
    engine: Engine
    async_engine: AsyncEngine
    registry: Registry
    host_cache: HostAdapterCache
    engine_started: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def build(cls, settings: Settings, loaded: LoadedModel | None = None) -> Runtime:
        Registry.preflight(settings.registry_dir)  # before the slow model load
        loaded = loaded or load_base(settings)
        max_context = min(settings.max_context, loaded.max_position_embeddings)
        engine = Engine(loaded, EngineConfig(
            max_rows=settings.max_batch_size,
            max_context=max_context,
            adapter_slots=settings.adapter_slots,
            max_lora_rank=settings.max_lora_rank,
            prefill_chunk_tokens=settings.prefill_chunk_tokens,
            merge_mode=settings.merge_mode,
            merge_format=settings.merge_format,
            merge_after_steps=settings.merge_after_steps,
        ))
        registry = Registry.open(settings.registry_dir, loaded.model_id, engine.shapes,
                                 settings.max_lora_rank, seed_dir=settings.seed_dir)
        host_cache = HostAdapterCache(settings.host_adapters, pin=loaded.device.type == "cuda")
        runtime = cls(settings, loaded, engine, AsyncEngine(engine), registry, host_cache)
        registry.on_retire(runtime.retire)
        log.info("registry %s: %d persona(s)", settings.registry_dir, len(registry.all()))
        return runtime

    @property
    def max_context(self) -> int:
        return self.engine.config.max_context

    @property
    def ready(self) -> bool:
        return self.engine.alive and self.engine.failure is None

    @property
    def stalled(self) -> bool:
        return self.engine.stalled(self.settings.stall_timeout)

    def adapter_ref(self, persona: Persona) -> AdapterRef | None:
        """The request's handle on the persona's adapter, read into host memory (blocking)."""
        if persona.adapter_dir is None or persona.adapter_key is None:
            return None
        path = persona.adapter_dir
        weights = self.host_cache.get(persona.adapter_key, lambda: read_adapter(
            path, self.engine.shapes, self.settings.max_lora_rank))
        return AdapterRef(persona.adapter_key, path, weights)

    async def generate(self, request: GenerationRequest,
                       persona: Persona | None) -> AsyncIterator[RequestOutput]:
        """Run `request` with `persona`'s adapter; the adapter is read into host memory first,
        off the event loop and off the engine thread. Raises AdapterError if it cannot load."""
        if persona is not None and persona.adapter_key is not None:
            ref = await asyncio.to_thread(self.adapter_ref, persona)
            request = dataclasses.replace(request, adapter=ref)
        async for output in self.async_engine.generate(request):
            yield output

    @property
    def grammars(self) -> Grammars:
        return self.engine.grammars

    def residency(self, key: str) -> tuple[int | None, bool]:
        """(device slot or None, whether in host memory) of adapter version `key`."""
        return self.engine.stats.resident_adapters.get(key), key in self.host_cache

    def merge_state(self, key: str) -> tuple[bool, bool]:
        merge = self.engine.stats.merge
        return merge.merged == key, merge.pinned == key

    async def merge(self, persona: Persona) -> None:
        try:
            ref = await asyncio.to_thread(self.adapter_ref, persona)
        except AdapterError as exc:
            raise MergeError(f"the adapter could not be loaded: {exc.message}") from exc
        if ref is None:
            raise MergeError(f"the persona {persona.name!r} has no adapter to merge")
        await asyncio.wrap_future(self.engine.merge(ref))

    async def unmerge(self, persona: Persona) -> None:
        if persona.adapter_key is not None:
            await asyncio.wrap_future(self.engine.unmerge(persona.adapter_key))

    def retire(self, key: str) -> None:
        """A version stopped being current: drop it from host memory and, once idle, its slot."""
        self.host_cache.discard(key)
        self.engine.retire(key)
