"""What one server process holds, put together once: settings, the base, registry, service.

Contract: `Cameo.local(settings)` does the slow part once (registry preflight, model load,
engine, registry open and reconciliation) and returns the finished composition; the HTTP app
receives it. The registry is injected beside the engine service, never through it, and hears
nothing of the engine except `retire` (a version stopped being current). A Ray ingress builds
its own `Cameo` with the Ray service (`server.distributed.ingress`). Tests build one and share
it between apps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from server.engine.engine import EngineConfig
from server.model.loader import LoadedModel, load_base
from server.registry.registry import Registry
from server.service.base import BaseInfo
from server.service.local import LocalEngineService
from server.service.protocol import EngineService
from server.settings import Settings

log = logging.getLogger(__name__)


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


def local_service(settings: Settings, loaded: LoadedModel) -> tuple[BaseInfo, LocalEngineService]:
    """The engine over `loaded`, with its host adapter cache (not started)."""
    base = BaseInfo.of(loaded)
    return base, LocalEngineService.over(
        loaded, engine_config(settings, base), host_adapters=settings.host_adapters,
        stall_timeout=settings.stall_timeout, grammars=lambda: base.grammars)


def engine_config(settings: Settings, base: BaseInfo) -> EngineConfig:
    return EngineConfig(
        max_rows=settings.max_batch_size,
        max_context=min(settings.max_context, base.max_position_embeddings),
        adapter_slots=settings.adapter_slots, max_lora_rank=settings.max_lora_rank,
        prefill_chunk_tokens=settings.prefill_chunk_tokens, merge_mode=settings.merge_mode,
        merge_format=settings.merge_format, merge_after_steps=settings.merge_after_steps)
