"""The engine: a synchronous `step()` that runs one iteration of continuous batching.

Each step
  1. fails requests past their deadline,
  2. unmerges when merged mode cannot serve what is running or waiting (`merging`),
  3. admits waiting requests into free batch rows with their adapter in a device slot
     (`server.engine.scheduler`: FIFO, no persona jumps the queue),
  4. runs the prefill chunks of admitted prompts and one token for every decoding row, all in
     ONE forward over the `Runner`, whatever adapters the rows use,
  5. samples on the logits (bias, grammar masks, the request's own generator), turns tokens into
     outputs (`server.engine.output`) and hands them to each request's sink; finished rows free
     their batch row and slot at once,
  6. lets merged mode fold a persona into the base layers when the batch is its own.

A failure that belongs to one request (its seed, grammar, adapter file, logits, sampler) fails
that request only. Not thread-safe: `server.engine.worker.EngineWorker` owns the thread and
calls it; tests drive it directly over a fake runner. Sinks must not block. It knows nothing
about HTTP, personas, chat templates or where adapter weights come from (they arrive with each
request, read by the host cache).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Protocol

import torch

from server.engine.constraints import Grammars
from server.engine.decode import next_tokens, rows_of
from server.engine.merging import MergeController, MergeMode
from server.engine.output import Sink, abort_output, deliver, error_output
from server.engine.rows import Refused, RowState
from server.engine.runner import ForwardBatch
from server.engine.sampling import token_logprobs
from server.engine.scheduler import Chunk, Scheduler, Sequence
from server.engine.types import (
    AdapterRef,
    EngineStats,
    ErrorCode,
    GenerationRequest,
    RequestOutput,
    TokenLogprob,
)
from server.lora.adapter import AdapterError, AdapterWeights
from server.lora.manager import SlotManager
from server.lora.merge import MergeFormat
from server.lora.slots import SlotLinear

log = logging.getLogger(__name__)


class Runner(Protocol):
    """One forward over a ragged batch, logits out (`server.engine.runner.ModelRunner`)."""

    def forward(self, batch: ForwardBatch, all_logits: bool = False) -> torch.Tensor: ...

    def slot_linears(self) -> dict[str, SlotLinear]:
        """The LoRA-capable linears by module key (what merged mode folds adapters into)."""
        ...

    def trim(self) -> None:
        """Give back memory that only live requests needed (no request is running or waiting)."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    max_rows: int
    max_context: int
    adapter_slots: int
    max_lora_rank: int
    prefill_chunk_tokens: int
    merge_mode: MergeMode = "explicit"
    merge_format: MergeFormat = "dense"
    merge_after_steps: int = 32
    compile: bool = False  # compile the engine step (server.engine.step)
    lora_bank: str = "auto"  # the slot bank's storage (server.engine.build.bank_dtype)


ScoredSequence = tuple[list[int], AdapterRef | None, AdapterWeights | None]


class Engine:
    def __init__(self, runner: Runner, slots: SlotManager, config: EngineConfig, *,
                 tokenizer: object, eos_token_ids: Collection[int], device: torch.device,
                 grammars: Callable[[], Grammars]) -> None:
        self.runner = runner
        self.slots = slots
        self.config = config
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.device = device
        self.grammars = grammars
        self.merging = MergeController(runner.slot_linears(), slots, self.merge_loader,
                                       config.merge_mode, config.merge_format,
                                       config.merge_after_steps)
        self.scheduler = Scheduler(config.max_rows, config.prefill_chunk_tokens, slots)
        self.stats = EngineStats(merge=self.merging.stats)
        self._pinned_weights: dict[str, AdapterWeights] = {}

    # ------------------------------------------------------------------ requests

    @property
    def idle(self) -> bool:
        return self.scheduler.idle

    def add(self, request: GenerationRequest, sink: Sink,
            weights: AdapterWeights | None = None) -> None:
        """Queue `request` (with its adapter's weights); a request that cannot run (its
        prompt, seed or grammar) gets its error output at once."""
        try:
            state = RowState.start(request, sink, self.tokenizer, self.device,
                                   self.config.max_context, self.grammars)
        except Refused as exc:
            deliver(sink, error_output(request, exc.message, exc.code))
            return
        self.scheduler.add(Sequence(request, weights, state))

    def abort(self, request_id: str) -> None:
        seq = self.scheduler.find(request_id)
        if seq is not None:
            self.scheduler.finish(seq)
            seq.state.out.send(abort_output(seq.request, len(seq.generated)))

    def retire(self, key: str) -> None:
        """A replaced or deleted version: never merged again, its slot freed once idle."""
        self.merging.forget(key)
        self._pinned_weights.pop(key, None)
        self.scheduler.retire(key)

    def merge(self, ref: AdapterRef, weights: AdapterWeights) -> bool:
        """Pin `ref` as the merged adapter; returns whether it is merged right away (it is
        whenever nothing else is running or waiting). Raises MergeError when merging is
        disabled or the base layers cannot hold a merge."""
        self.merging.pin(ref)
        if self.config.compile:
            log.warning("%s is pinned for merged mode, but merged steps run eagerly (a merge "
                        "swaps layers the compiled step holds): on a CPU that is slower than "
                        "the compiled step serving it unmerged (docs/BENCHMARKS.md)", ref.key)
        self._pinned_weights = {ref.key: weights}
        self.merging.maybe_merge(*self.scheduler.keys(), self._refs())
        return self.merging.merged_key == ref.key

    def unmerge(self, key: str) -> None:
        self.merging.unpin(key)
        self._pinned_weights.pop(key, None)

    # ------------------------------------------------------------------ the step

    def step(self) -> None:
        """One iteration: expire, admit, prefill a chunk, decode every running row."""
        self._expire()
        self.merging.reconcile(*self.scheduler.keys())  # before admitting a row it cannot serve
        self._admit()
        plan = self.scheduler.plan()
        if plan.prefill or plan.decode:
            self._run(plan.prefill + plan.decode)  # one forward for both
        self.merging.maybe_merge(*self.scheduler.keys(), self._refs())  # from the next step
        if self.scheduler.idle:
            self.runner.trim()  # e.g. the KV cache's growth for a long request now finished
        self.stats.steps += 1
        self.publish_stats()

    def publish_stats(self) -> None:
        """Refresh the counters other threads read (each assignment is atomic)."""
        scheduler = self.scheduler
        self.stats.running = len(scheduler.running)
        self.stats.waiting = len(scheduler.waiting)
        self.stats.resident_adapters = self.slots.resident()
        self.stats.running_adapters = _personas(scheduler.running.values())
        self.stats.waiting_adapters = _personas(scheduler.waiting)

    def fail_running(self, message: str) -> None:
        for seq in list(self.scheduler.running.values()):
            self._fail(seq, message, "engine_error")

    def fail_all(self, message: str) -> None:
        for seq in list(self.scheduler.all()):
            self._fail(seq, message, "engine_error")

    def score(self, sequences: Seq[ScoredSequence], rows: list[int] | None = None,
              ) -> list[torch.Tensor]:
        """Teacher-forced logits (T, vocab) of each sequence, all in ONE batched forward, in
        `rows` of the KV cache (default: free rows, given back after)."""
        taken = self.scheduler.take_rows(len(sequences)) if rows is None else []
        keys = {ref.key if ref else None for _, ref, _ in sequences}
        self.merging.reconcile(keys, set())
        acquired: list[str] = []
        try:
            slots = []
            for _, ref, weights in sequences:
                slot = 0 if ref is None else self.slots.acquire(ref.key, _loader(ref, weights))
                if slot is None:
                    raise RuntimeError("not enough free adapter slots to score these sequences")
                if ref is not None:
                    acquired.append(ref.key)
                slots.append(self.merging.slot(ref.key if ref else None, slot))
            batch = self._batch([ids for ids, _, _ in sequences], rows or taken,
                                [0] * len(sequences), slots)
            logits = self.runner.forward(batch, all_logits=True)  # (B, T, vocab)
            return [logits[i, : len(ids)].cpu() for i, (ids, _, _) in enumerate(sequences)]
        finally:
            for key in acquired:
                self.scheduler.release(key)
            self.scheduler.return_rows(taken)

    # ------------------------------------------------------------------ admission

    def _expire(self) -> None:
        for seq in self.scheduler.expired(time.monotonic()):
            running = seq.request_id in self.scheduler.running
            self._fail(seq, "the request ran past its deadline" if running
                       else "the request waited past its deadline", "timeout")

    def _admit(self) -> None:
        admitted, failed = self.scheduler.admit()
        for failure in failed:
            exc = failure.error
            message = exc.message if isinstance(exc, AdapterError) else repr(exc)
            log.warning("request %s: adapter load failed: %s", failure.seq.request_id, message)
            failure.seq.state.out.send(error_output(
                failure.seq.request, f"adapter could not be loaded: {message}",
                "adapter_load_failed"))
        for seq in admitted:
            self.stats.prompt_tokens += seq.prompt_len
            if seq.request.sampling.prompt_logprobs is not None:
                self._score_prompt(seq)

    def _score_prompt(self, seq: Sequence) -> None:
        """The prompt tokens' logprobs (echo), from one extra teacher-forced forward; a request
        with max_tokens 0 ends here."""
        request, out = seq.request, seq.state.out
        try:  # in the row's own KV cache row, which its prefill then writes again
            (logits,) = self.score([(list(request.prompt_ids), request.adapter, seq.weights)],
                                   [seq.row])
        except Exception as exc:  # this request fails, not the step
            log.warning("request %s: scoring the prompt failed: %r", request.request_id, exc)
            self._fail(seq, f"scoring the prompt failed: {exc}", "engine_error")
            return
        counts = [request.sampling.prompt_logprobs or 0] * (len(request.prompt_ids) - 1)
        out.prompt_logprobs = (None, *token_logprobs(logits[:-1], request.prompt_ids[1:], counts))
        if request.sampling.max_tokens == 0:
            self.scheduler.finish(seq)
            out.send(RequestOutput(request_id=request.request_id, finish_reason="length",
                                   prompt_tokens=seq.prompt_len,
                                   prompt_logprobs=out.prompt_logprobs))

    # ------------------------------------------------------------------ forward and sampling

    def _run(self, chunks: list[Chunk]) -> None:
        """One forward over `chunks`, then sample the rows whose prompt is now all cached."""
        slots = [self.merging.slot(c.seq.key, c.seq.slot) for c in chunks]
        batch = self._batch([c.tokens for c in chunks], [c.seq.row for c in chunks],
                            [c.start for c in chunks], slots)
        logits = self.runner.forward(batch)  # (B, vocab)
        ready: list[int] = []
        for index, chunk in enumerate(chunks):
            chunk.seq.cached += len(chunk.tokens)
            if chunk.seq.cached == len(chunk.seq.tokens):
                ready.append(index)
        if ready:
            self._sample([chunks[i].seq for i in ready], rows_of(logits, ready))

    def _batch(self, tokens: list[list[int]], rows: list[int], start: list[int],
               slots: list[int]) -> ForwardBatch:
        return ForwardBatch(tokens, rows, start, slots if any(slots) else None)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        for seq, draw in zip(seqs, next_tokens(logits, seqs, self.grammars), strict=True):
            if draw.failure is not None:
                self._fail(seq, *draw.failure)
            elif draw.token is not None:
                self._advance(seq, draw.token, draw.logprob)

    def _advance(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        state: RowState = seq.state
        if state.grammar is not None and not state.grammar.accept(token):
            self._fail(seq, "the sampled token broke the request's grammar", "grammar_error")
            return
        seq.tokens.append(token)
        seq.generated.append(token)
        self.stats.generated_tokens += 1
        output = state.out.token(
            token, len(seq.generated), len(seq.tokens), eos=self.eos_token_ids,
            max_context=self.config.max_context,
            grammar_done=state.grammar is not None and state.grammar.done,
            queue_seconds=seq.admitted_at - seq.request.submitted_at, logprob=logprob)
        if output.finished:
            self.scheduler.finish(seq)
        state.out.send(output)

    def _fail(self, seq: Sequence, message: str, code: ErrorCode) -> None:
        self.scheduler.finish(seq)
        seq.state.out.send(error_output(seq.request, message, code, len(seq.generated)))

    def _refs(self) -> dict[str, AdapterRef]:
        return {s.key: s.request.adapter for s in self.scheduler.running.values()
                if s.key is not None and s.request.adapter is not None}

    def merge_loader(self, ref: AdapterRef) -> Callable[[], AdapterWeights]:
        """Weights for merged mode: the pinned adapter's, or a running row's (resident)."""
        weights = self._pinned_weights.get(ref.key) or next(
            (s.weights for s in self.scheduler.running.values() if s.key == ref.key), None)
        return _loader(ref, weights)


def _loader(ref: AdapterRef, weights: AdapterWeights | None) -> Callable[[], AdapterWeights]:
    def load() -> AdapterWeights:
        if weights is None:
            raise RuntimeError(f"no weights were sent with adapter {ref.key}")
        return weights
    return load


def _personas(seqs: Collection[Sequence]) -> frozenset[str]:
    return frozenset(s.request.adapter.name for s in seqs if s.request.adapter is not None)
