"""Everything one server process holds: settings, the loaded base, the engine, the personas.

`Runtime.build(settings)` does the slow part (model loading) and is called once; the HTTP app
receives the finished runtime. Tests build one runtime and share it between apps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from server.engine.async_engine import AsyncEngine
from server.engine.engine import Engine, EngineConfig
from server.model.loader import LoadedModel, load_base
from server.registry.personas import PersonaCatalog
from server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    loaded: LoadedModel
    engine: Engine
    async_engine: AsyncEngine
    personas: PersonaCatalog
    engine_started: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def build(cls, settings: Settings, loaded: LoadedModel | None = None) -> Runtime:
        loaded = loaded or load_base(settings)
        max_context = min(settings.max_context, loaded.max_position_embeddings)
        engine = Engine(loaded, EngineConfig(
            max_rows=settings.max_batch_size,
            max_context=max_context,
            adapter_slots=settings.adapter_slots,
            max_lora_rank=settings.max_lora_rank,
            prefill_chunk_tokens=settings.prefill_chunk_tokens,
        ))
        personas = PersonaCatalog.scan(settings.registry_dir)
        return cls(settings, loaded, engine, AsyncEngine(engine), personas)

    @property
    def max_context(self) -> int:
        return self.engine.config.max_context

    @property
    def ready(self) -> bool:
        return self.engine.alive and self.engine.failure is None
