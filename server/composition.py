"""What one server process holds, put together once: settings, the base, registry, service.

Contract: `Cameo.local(settings)` does the slow part once (registry preflight, model load,
engine, registry open and reconciliation) and returns the finished composition; the HTTP app
receives it. The registry is injected beside the engine service, never through it, and hears
nothing of the engine except `retire` (a version stopped being current). A Ray ingress builds
its own `Cameo` with the Ray service (`server.distributed.ingress`). Tests build one and share
it between apps.

`Cameo.load(settings)` is `Cameo.local` for an event loop: it runs on a thread of its own that
ends with the load. The load and the runner's probe forward run torch's parallel (OpenMP)
regions, and libgomp keeps a pool of helper threads for every thread that ever ran one; with
more of them alive than CPUs it stops spinning between regions, so every region of every later
engine step pays a futex wake-up. Measured on a 2-core CPU (docs/BENCHMARKS.md, "The CPU's
4-bit path and the engine's thread"): a decode forward on the engine thread took 76-86 ms when
the model had been loaded on the main thread or on asyncio's (kept) executor thread, 44-59 ms
when it had been loaded on a thread that then ended. `in_passing_thread(fn)` is the same for
synchronous callers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from server.engine.engine import EngineConfig
from server.engine.step import should_compile
from server.model.loader import LoadedModel, load_base
from server.registry.registry import Registry
from server.service.base import BaseInfo
from server.service.local import LocalEngineService
from server.service.protocol import EngineService
from server.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Cameo:
    settings: Settings
    base: BaseInfo
    registry: Registry
    service: EngineService
    started: int = field(default_factory=lambda: int(time.time()))  # `created` in /v1/models

    @classmethod
    def local(cls, settings: Settings, loaded: LoadedModel | None = None) -> Cameo:
        """The engine in this process (`loaded`: an already loaded base, for tests)."""
        Registry.preflight(settings.registry_dir)  # before the slow model load
        base, service = local_service(settings, loaded or load_base(settings))
        return cls.assemble(settings, base, service)

    @classmethod
    async def load(cls, settings: Settings) -> Cameo:
        """`Cameo.local(settings)` on a thread that ends with it (see the module docstring);
        asyncio's executor thread only waits for it."""
        return await asyncio.to_thread(in_passing_thread, lambda: cls.local(settings))

    @classmethod
    def assemble(cls, settings: Settings, base: BaseInfo, service: EngineService) -> Cameo:
        """Open the registry for `base` and wire its retirements to `service`."""
        registry = Registry.open(settings.registry_dir, base.model_id, base.shapes,
                                 settings.max_lora_rank, seed_dir=settings.seed_dir)
        registry.on_retire(service.retire)
        log.info("registry %s: %d persona(s)", settings.registry_dir, len(registry.all()))
        return cls(settings, base, registry, service)

    @property
    def max_context(self) -> int:
        """Prompt plus generated tokens a request may use."""
        return min(self.settings.max_context, self.base.max_position_embeddings)

    def close(self) -> None:
        self.service.close()
        self.registry.close()


def in_passing_thread(fn: Callable[[], T]) -> T:
    """`fn()` on a new thread that ends with it, for start-up work that runs torch before an
    engine thread does (see the module docstring); its exception is raised here."""
    box: dict[str, T] = {}
    failure: list[BaseException] = []

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="cameo-setup")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return box["result"]


def local_service(settings: Settings, loaded: LoadedModel) -> tuple[BaseInfo, LocalEngineService]:
    """The engine over `loaded`, with its host adapter cache (not started)."""
    base = BaseInfo.of(loaded)
    return base, LocalEngineService.over(
        loaded, engine_config(settings, base, loaded), host_adapters=settings.host_adapters,
        stall_timeout=settings.stall_timeout, grammars=lambda: base.grammars)


def engine_config(settings: Settings, base: BaseInfo, loaded: LoadedModel) -> EngineConfig:
    return EngineConfig(
        compile=should_compile(settings.compile, loaded.device, loaded.quantization),
        lora_bank=settings.lora_bank,
        max_rows=settings.max_batch_size,
        max_context=min(settings.max_context, base.max_position_embeddings),
        adapter_slots=settings.adapter_slots, max_lora_rank=settings.max_lora_rank,
        prefill_chunk_tokens=settings.prefill_chunk_tokens, merge_mode=settings.merge_mode,
        merge_format=settings.merge_format, merge_after_steps=settings.merge_after_steps)
