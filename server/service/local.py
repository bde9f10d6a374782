"""`EngineService` in this process: the engine's worker thread and the host adapter cache.

Contract: `generate` reads the request's adapter into host memory first (the host cache, on a
thread of asyncio's pool: never on the event loop, never on the engine thread), then submits the
request with those weights to the worker and streams its outputs. Merging goes through the same
loader. This is the one place adapter weights are read for serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from server.engine import async_engine
from server.engine.build import build_engine
from server.engine.constraints import Grammars
from server.engine.engine import Engine, EngineConfig
from server.engine.output import Sink
from server.engine.runner import module_shapes
from server.engine.types import GenerationRequest, RequestOutput
from server.engine.worker import EngineWorker
from server.lora.adapter import AdapterError, AdapterWeights, ModuleShapes, read_adapter
from server.lora.host_cache import HostAdapterCache
from server.lora.merge import MergeError
from server.lora.ref import AdapterRef
from server.model.loader import LoadedModel
from server.service.stats import ServiceStats


class LocalEngineService:
    def __init__(self, engine: Engine, shapes: ModuleShapes, max_lora_rank: int,
                 host_cache: HostAdapterCache, stall_timeout: float) -> None:
        self.engine = engine
        self.worker = EngineWorker(engine)
        self.shapes = shapes
        self.max_lora_rank = max_lora_rank
        self.host_cache = host_cache
        self.stall_timeout = stall_timeout

    @classmethod
    def over(cls, loaded: LoadedModel, config: EngineConfig, *, host_adapters: int = 64,
             stall_timeout: float = 60.0,
             grammars: Callable[[], Grammars] | None = None) -> LocalEngineService:
        """An engine over `loaded` with its host adapter cache (not started)."""
        shapes = module_shapes(loaded.model)
        engine = build_engine(loaded, config, grammars)
        host_cache = HostAdapterCache(host_adapters, pin=loaded.device.type == "cuda")
        return cls(engine, shapes, config.max_lora_rank, host_cache, stall_timeout)

    def start(self) -> None:
        self.worker.start()

    def close(self) -> None:
        self.worker.stop()

    def weights(self, ref: AdapterRef) -> AdapterWeights:
        """The adapter's host-memory copy, read and validated on a miss (blocking)."""
        return self.host_cache.get(ref.key, lambda: read_adapter(ref.path, self.shapes,
                                                                 self.max_lora_rank))

    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        """Outside asyncio (tools, benchmarks): read the adapter here, then queue the request;
        `sink` is called on the worker thread. Raises AdapterError when it cannot be read."""
        ref = request.adapter
        self.worker.submit(request, sink, None if ref is None else self.weights(ref))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        ref = request.adapter
        weights = None if ref is None else await asyncio.to_thread(self.weights, ref)
        async for output in async_engine.generate(self.worker, request, weights):
            yield output

    def health(self) -> str | None:
        if not self.worker.alive or self.worker.failure is not None:
            return "the engine is not running"
        if self.worker.stalled(self.stall_timeout):
            return "the engine has stalled"
        return None

    def stats(self) -> ServiceStats:
        engine, host = self.engine, self.host_cache
        counters, merge, slots = engine.stats, engine.stats.merge, engine.slots
        return ServiceStats(
            ready=self.worker.alive and self.worker.failure is None,
            stalled=self.worker.stalled(self.stall_timeout),
            running=counters.running, waiting=counters.waiting, steps=counters.steps,
            prompt_tokens=counters.prompt_tokens, generated_tokens=counters.generated_tokens,
            slots=slots.capacity, slot_loads=slots.loads, slot_evictions=slots.evictions,
            resident=tuple(sorted(counters.resident_adapters.items())),
            running_personas=counters.running_adapters, waiting_personas=counters.waiting_adapters,
            merged=merge.merged, pinned=merge.pinned, merges=merge.merges,
            unmerges=merge.unmerges, host_keys=frozenset(host.keys()),
            host_capacity=host.capacity, host_hits=host.stats.hits,
            host_misses=host.stats.misses, host_evictions=host.stats.evictions)

    async def merge(self, ref: AdapterRef) -> None:
        try:
            weights = await asyncio.to_thread(self.weights, ref)
        except AdapterError as exc:
            raise MergeError(f"the adapter could not be loaded: {exc.message}") from exc
        await asyncio.wrap_future(self.worker.call(lambda: self.engine.merge(ref, weights)))

    async def unmerge(self, ref: AdapterRef) -> None:
        await asyncio.wrap_future(self.worker.call(lambda: self.engine.unmerge(ref.key)))

    def retire(self, key: str) -> None:
        """A version stopped being current: drop it from host memory and, once idle, its slot."""
        self.host_cache.discard(key)
        self.worker.retire(key)
