"""The local engine as the tests drive it: submit, score (teacher-forced), merge, inspect.

`EngineProbe.of(cameo)` wraps a composition's `LocalEngineService`. Scoring lives here, with
the tests: `score(sequences)` runs the engine's own batch builder and runner for every sequence
in ONE forward, on the worker thread between two steps, with each adapter read through the host
cache exactly as a request's would be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import torch

from server.engine.engine import Engine
from server.engine.output import Sink
from server.engine.types import GenerationRequest
from server.lora.ref import AdapterRef
from server.service.local import LocalEngineService

T = TypeVar("T")


class EngineProbe:
    def __init__(self, service: LocalEngineService) -> None:
        self.service = service

    @classmethod
    def of(cls, cameo: Any) -> EngineProbe:
        return cls(cameo.service)

    @property
    def engine(self) -> Engine:
        return self.service.engine

    @property
    def model(self) -> Any:
        """The transformers model the engine runs (for the tolerance of its kernel path)."""
        return self.engine.runner.hf  # type: ignore[attr-defined]

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def __getattr__(self, name: str) -> Any:  # stats, slots, config, runner, scheduler, ...
        return getattr(self.service.engine, name)

    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        self.service.submit(request, sink)

    def call(self, fn: Callable[[], T]) -> Future[T]:
        return self.service.worker.call(fn)

    def score(self, sequences: Sequence[tuple[list[int], AdapterRef | None]]) -> list[torch.Tensor]:
        with_weights = [(ids, ref, None if ref is None else self.service.weights(ref))
                        for ids, ref in sequences]
        return self.call(lambda: self.engine.score(with_weights)).result()

    def merge(self, ref: AdapterRef) -> Future[bool]:
        weights = self.service.weights(ref)
        return self.call(lambda: self.engine.merge(ref, weights))

    def unmerge(self, key: str) -> Future[None]:
        return self.call(lambda: self.engine.unmerge(key))
