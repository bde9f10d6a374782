"""Which requests run in the next forward: the queue, the batch rows and the adapter slots.

Contract: plain Python, no thread, no tensors (the engine's worker thread is its only caller).
`add` queues a `Sequence`; `admit` moves waiting sequences into free batch rows in FIFO order,
giving each the device slot of its adapter: when the head of the queue waits for a slot (every
slot is held by running rows), nothing behind it jumps ahead, so no persona starves however
many personas share few slots. `plan` splits the running rows into this step's work: prefill
chunks within a token budget (chunked prefill, so a long prompt never stalls the decoding rows
for more than one chunk) and one token for every decoding row. `finish` frees a row and its
slot at once (continuous batching). `retire` frees a replaced version's slot once no row uses
it; keys are never reused, so a queued request of the old version still gets the old weights.

It does not sample, detokenize, build tensors, or call the model: `server.engine.engine` does.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.engine.types import GenerationRequest
from server.lora.adapter import AdapterWeights


class SlotAllocator(Protocol):
    """The device slots (`server.lora.manager.SlotManager`): LRU with reference counts."""

    def acquire(self, key: str, load: Callable[[], AdapterWeights]) -> int | None: ...

    def release(self, key: str) -> None: ...

    def users(self, key: str) -> int: ...

    def drop(self, key: str) -> bool: ...


@dataclass(eq=False)
class Sequence:
    """One request from submission to its last token; `state` is the engine's per-row state
    (sampling and output), opaque here."""

    request: GenerationRequest
    weights: AdapterWeights | None  # the adapter's host-memory copy (None: the base)
    state: Any = None
    row: int = -1  # batch row (and KV-cache row) while running
    slot: int = 0  # device slot of its adapter while running (0: the base)
    tokens: list[int] = field(default_factory=list)  # prompt, then generated tokens
    cached: int = 0  # tokens already in the KV cache
    generated: list[int] = field(default_factory=list)
    admitted_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = list(self.request.prompt_ids)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def key(self) -> str | None:
        """The adapter version's key (None: the plain base)."""
        return self.request.adapter.key if self.request.adapter else None

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def decoding(self) -> bool:
        return self.cached > 0 and len(self.tokens) - self.cached == 1


@dataclass(frozen=True)
class Chunk:
    """New tokens of one running sequence for this step's forward, from position `start`."""

    seq: Sequence
    tokens: list[int]

    @property
    def start(self) -> int:
        return self.seq.cached


@dataclass(frozen=True)
class StepPlan:
    prefill: list[Chunk]
    decode: list[Chunk]


@dataclass(frozen=True)
class LoadFailure:
    """A waiting sequence whose adapter could not be copied into a slot."""

    seq: Sequence
    error: Exception


class Scheduler:
    def __init__(self, max_rows: int, prefill_chunk_tokens: int, slots: SlotAllocator) -> None:
        self.slots = slots
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: dict[str, Sequence] = {}
        # a min-heap: a request takes the lowest free row, so the running rows stay packed in
        # the KV cache's first rows, and a step's attention, which reads the cache's first
        # max(row) + 2 rows (server.engine.step), reads as few rows as are running
        self._free_rows = list(range(max_rows))
        self._retiring: set[str] = set()

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    @property
    def free_rows(self) -> int:
        return len(self._free_rows)

    def all(self) -> Iterator[Sequence]:
        yield from self.running.values()
        yield from self.waiting

    def keys(self) -> tuple[set[str | None], set[str | None]]:
        """Adapter keys of the running and of the waiting sequences (None: the plain base)."""
        return {s.key for s in self.running.values()}, {s.key for s in self.waiting}

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def admit(self) -> tuple[list[Sequence], list[LoadFailure]]:
        """Move waiting sequences into free rows (FIFO); returns those admitted and those
        whose adapter failed to load (already out of the queue, holding nothing)."""
        admitted: list[Sequence] = []
        failed: list[LoadFailure] = []
        while self.waiting and self._free_rows:
            seq = self.waiting[0]
            try:
                slot = self._acquire(seq)
            except Exception as exc:  # a bad file, or out of memory: this sequence fails alone
                self.waiting.popleft()
                failed.append(LoadFailure(seq, exc))
                continue
            if slot is None:
                break  # every slot is held by running rows: wait, and let nobody jump ahead
            self.waiting.popleft()
            seq.row, seq.slot, seq.admitted_at = heapq.heappop(self._free_rows), slot, \
                time.monotonic()
            self.running[seq.request_id] = seq
            admitted.append(seq)
        return admitted, failed

    def plan(self) -> StepPlan:
        """This step's work: prefill chunks within the token budget, one token per decoder."""
        prefill: list[Chunk] = []
        budget = self.prefill_chunk_tokens
        for seq in self.running.values():
            if seq.decoding or budget <= 0:
                continue
            pending = seq.tokens[seq.cached:][:budget]
            budget -= len(pending)
            prefill.append(Chunk(seq, pending))
        decode = [Chunk(seq, seq.tokens[-1:]) for seq in self.running.values() if seq.decoding]
        return StepPlan(prefill, decode)

    def finish(self, seq: Sequence) -> None:
        """Free `seq`'s row and slot (it may be waiting or running; a no-op when gone)."""
        if self.running.pop(seq.request_id, None) is seq:
            heapq.heappush(self._free_rows, seq.row)
            if seq.key is not None:
                self.release(seq.key)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def find(self, request_id: str) -> Sequence | None:
        return self.running.get(request_id) or next(
            (s for s in self.waiting if s.request_id == request_id), None)

    def expired(self, now: float) -> list[Sequence]:
        return [s for s in self.all()
                if s.request.deadline is not None and s.request.deadline <= now]

    def take_rows(self, count: int) -> list[int]:
        """`count` free rows for work outside a request (scoring); give them back with
        `return_rows`."""
        if count > len(self._free_rows):
            raise RuntimeError("not enough free batch rows")
        return [heapq.heappop(self._free_rows) for _ in range(count)]

    def return_rows(self, rows: list[int]) -> None:
        for row in rows:
            heapq.heappush(self._free_rows, row)

    def release(self, key: str) -> None:
        self.slots.release(key)
        self._drop_retired(key)

    def retire(self, key: str) -> None:
        """`key` was replaced or deleted: free its slot as soon as no row uses it."""
        self._retiring.add(key)
        self._drop_retired(key)

    def _acquire(self, seq: Sequence) -> int | None:
        if seq.key is None:
            return 0
        weights = seq.weights
        if weights is None:
            raise RuntimeError(f"no weights were sent with adapter {seq.key}")
        return self.slots.acquire(seq.key, lambda: weights)

    def _drop_retired(self, key: str) -> None:
        # Retired keys stay in the set: a request queued before the swap may still load the old
        # version later, and its slot must be freed again when it ends. Keys are never reused.
        if key in self._retiring and self.slots.users(key) == 0:
            self.slots.drop(key)
