"""The seam between the HTTP routes and whatever runs the model: the `Serving` protocol.

The routes in `server.api` use the object in `app.state.runtime` only through these members.
`server.runtime.Runtime` (one process: model, engine and registry together) satisfies it, and
so does the Ray Serve ingress's `server.distributed.ingress.RemoteServing`, which holds only the
tokenizer and the registry and forwards `generate` to engine replicas.

One reader goes further, untyped: the /metrics collector (`server.api.metrics`) reads
`engine.stats`, `engine.slots` (`bank.num_slots`, `loads`, `evictions`) and `host_cache`
(`len`, `capacity`, `stats`) when the runtime has an `engine`; `RemoteServing` provides them
as sums over the engine replicas' reports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from server.engine.constraints import Grammars
from server.engine.types import GenerationRequest, RequestOutput
from server.registry.personas import Persona
from server.registry.registry import Registry
from server.settings import Settings


class BaseModelInfo(Protocol):
    """What the routes read of the base model: its served name and its tokenizer."""

    @property
    def model_id(self) -> str: ...

    @property
    def tokenizer(self) -> Any: ...  # transformers PreTrainedTokenizerBase (untyped upstream)


class EngineControl(Protocol):
    """The app starts the engine when it is handed a runtime (a no-op where it runs elsewhere)."""

    def start(self) -> None: ...


class Serving(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def loaded(self) -> BaseModelInfo: ...

    @property
    def engine(self) -> EngineControl: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def max_context(self) -> int:
        """Prompt plus generated tokens a request may use."""
        ...

    @property
    def ready(self) -> bool:
        """Whether generation requests can be served now."""
        ...

    @property
    def stalled(self) -> bool:
        """Whether the engine has stopped coming round its loop (/ready reports it)."""
        ...

    @property
    def engine_started(self) -> int:
        """Unix time the serving side started (the base model's `created` in /v1/models)."""
        ...

    @property
    def grammars(self) -> Grammars:
        """Compiled grammars for the base's tokenizer: the API compiles a request's grammar
        here first, so that one the library cannot compile is a 400 before any engine work."""
        ...

    def residency(self, key: str) -> tuple[int | None, bool]:
        """(device slot or None, whether in host memory) of adapter version `key`."""
        ...

    def merge_state(self, key: str) -> tuple[bool, bool]:
        """(merged into the base layers now, pinned by an admin) of adapter version `key`."""
        ...

    async def merge(self, persona: Persona) -> None:
        """Pin `persona`'s adapter as merged (merged at once when nothing else is running or
        waiting); raises MergeError when merging is unavailable."""
        ...

    async def unmerge(self, persona: Persona) -> None:
        """Drop the pin on `persona`'s adapter and unmerge it now."""
        ...

    def generate(self, request: GenerationRequest,
                 persona: Persona | None) -> AsyncIterator[RequestOutput]:
        """Run `request` with `persona`'s adapter (None: the base); raises AdapterError when the
        adapter cannot be loaded, before the first output."""
        ...
