"""The one seam between the HTTP routes and whatever runs the model: `EngineService`.

Contract: the routes reach the engine only through these members. `generate` takes a complete
request (its `adapter` resolved by the registry) and yields its outputs; it raises
`AdapterError` before the first output when the adapter cannot be read. `stats()` is one frozen
snapshot. `merge`/`unmerge` pin and unpin merged mode (`MergeError` where it is unavailable).
`health()` is None when requests can be served, else the reason. `retire` tells the engine a
version stopped being current (the registry calls it). Implementations: the local one
(`server.service.local`) and the Ray Serve one (`server.distributed.service`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from server.engine.types import GenerationRequest, RequestOutput
from server.lora.ref import AdapterRef
from server.service.stats import ServiceStats


class EngineService(Protocol):
    def start(self) -> None:
        """Start serving (a no-op where the engines run on their own)."""
        ...

    def close(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]: ...

    def stats(self) -> ServiceStats: ...

    def health(self) -> str | None: ...

    async def merge(self, ref: AdapterRef) -> None: ...

    async def unmerge(self, ref: AdapterRef) -> None: ...

    def retire(self, key: str) -> None: ...
