"""Generation for many chats at once through Cameo's own engine (continuous batching).

`complete` runs any requests (prompt ids, sampling, adapter) and returns their texts; `generate`
is its greedy form over chat messages. Used by the data generator (the base model's own answers,
greedy) and by `benchmarks/persona_eval.py` (each card's own sampling, seeded).
Batched decoding on the server engine is far faster than HF `generate` on one prompt at a time:
a decode step for 16 rows costs about what one row costs on CPU.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.engine.engine import EngineConfig
from server.engine.types import AdapterRef, GenerationRequest, RequestOutput, SamplingParams
from server.model.loader import LoadedModel
from server.service.local import LocalEngineService

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Job:
    """One chat to complete: its messages (system first if any) and the adapter to run with."""

    messages: Messages
    adapter: AdapterRef | None = None


def adapter_ref(name: str, folder: Path) -> AdapterRef:
    """The engine's handle for a persona folder (version 1, as the registry numbers it)."""
    return AdapterRef(name, 1, Path(folder))


def build_engine(loaded: LoadedModel, *, max_rows: int = 16, max_context: int = 1024,
                 adapter_slots: int = 8, max_lora_rank: int = 64) -> LocalEngineService:
    """A started engine over `loaded`; call `engine.close()` when done."""
    engine = LocalEngineService.over(loaded, EngineConfig(
        max_rows=max_rows,
        max_context=min(max_context, loaded.max_position_embeddings),
        adapter_slots=adapter_slots,
        max_lora_rank=max_lora_rank,
        prefill_chunk_tokens=512,
    ))
    engine.start()
    return engine


def encode_chat(tokenizer: Any, messages: Messages) -> tuple[int, ...]:
    """The base's chat template with the assistant turn opened (as the server encodes it)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


class _Sink:
    def __init__(self, done: threading.Semaphore) -> None:
        self.parts: list[str] = []
        self.error: str | None = None
        self._done = done

    def __call__(self, output: RequestOutput) -> None:
        self.parts.append(output.text)
        if output.error:
            self.error = output.error
        if output.finished:
            self._done.release()


Completion = tuple[tuple[int, ...], SamplingParams, AdapterRef | None]  # prompt ids, sampling


def complete(engine: LocalEngineService, requests: Sequence[Completion], *,
             label: str = "generate", timeout: float = 3600.0, quiet: bool = False) -> list[str]:
    """The text of every request, all submitted at once (the engine batches them); progress on
    stderr every 16 replies unless `quiet`."""
    done = threading.Semaphore(0)
    sinks = [_Sink(done) for _ in requests]
    for index, ((prompt_ids, params, adapter), sink) in enumerate(
            zip(requests, sinks, strict=True)):
        engine.submit(GenerationRequest(f"{label}-{index}", prompt_ids, params, adapter), sink)
    start = time.monotonic()
    deadline = start + timeout
    for finished in range(1, len(requests) + 1):
        if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"{label}: {len(requests) - finished + 1} request(s) did not finish")
        if not quiet and (finished % 16 == 0 or finished == len(requests)):
            print(f"[{label}] {finished}/{len(requests)} done ({time.monotonic() - start:.0f} s)",
                  file=sys.stderr, flush=True)
    errors = [s.error for s in sinks if s.error]
    if errors:
        raise RuntimeError(f"{label}: {len(errors)} request(s) failed: {errors[0]}")
    return ["".join(s.parts).strip() for s in sinks]


def generate(engine: LocalEngineService, tokenizer: Any, jobs: Sequence[Job], *, max_tokens: int = 48,
             label: str = "generate", timeout: float = 3600.0, quiet: bool = False) -> list[str]:
    """Greedy answers for every job, submitted at once (the engine batches them)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return complete(engine, [(encode_chat(tokenizer, job.messages), params, job.adapter)
                             for job in jobs], label=label, timeout=timeout, quiet=quiet)
