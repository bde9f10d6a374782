"""The engine: one worker thread owns the model and runs `step()` in a loop (continuous batching).

Each step
  1. takes new requests and aborts from the inbox (any thread may `submit` or `abort`),
  2. admits waiting requests into free batch rows, putting their adapter into a device slot
     (FIFO: when the head of the queue waits for a slot, nothing behind it jumps ahead),
  3. prefills admitted prompts, at most `prefill_chunk_tokens` per step so that a long prompt
     does not freeze the other streams,
  4. decodes one token for every running row in one forward pass, whatever adapters they use,
  5. samples, detokenizes, checks stop conditions and hands `RequestOutput`s to each request's
     sink; finished rows free their batch row and their adapter slot at once,
  6. lets merged mode (`merging`) fold a persona into the base layers when the batch is its own;
     before the next admission it unmerges if anything else is running or waiting.

Sinks are called on the worker thread and must not block (the async layer hands them to its
event loop). This module knows nothing about HTTP, personas, or chat templates.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import torch

from server.engine.constraints import GrammarError, Grammars, RowGrammar
from server.engine.detokenizer import IncrementalDetokenizer, StopMatcher
from server.engine.merging import MergeController, MergeMode
from server.engine.runner import ForwardBatch, ModelRunner, module_shapes
from server.engine.sampling import apply_logit_bias, sample, token_logprobs
from server.engine.types import (
    AdapterRef,
    EngineStats,
    FinishReason,
    GenerationRequest,
    RequestOutput,
    TokenLogprob,
)
from server.lora.adapter import AdapterError, AdapterWeights, read_adapter
from server.lora.manager import SlotManager
from server.lora.merge import MergeFormat
from server.lora.slots import LoraSlots
from server.model.loader import LoadedModel

log = logging.getLogger(__name__)

Sink = Callable[[RequestOutput], None]
T = TypeVar("T")


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


@dataclass
class _Row:
    """A running request: its batch row, adapter slot, tokens and text state."""

    request: GenerationRequest
    sink: Sink
    row: int
    slot: int
    tokens: list[int]
    detok: IncrementalDetokenizer
    stop: StopMatcher
    generator: torch.Generator | None
    grammar: RowGrammar | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # sent with the first token
    cached: int = 0  # tokens already in the KV cache
    generated: list[int] = field(default_factory=list)
    admitted_at: float = 0.0

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def adapter_key(self) -> str | None:
        return self.request.adapter.key if self.request.adapter else None

    @property
    def decoding(self) -> bool:
        return self.cached > 0 and len(self.tokens) - self.cached == 1


class Engine:
    """Continuous-batching engine over one `LoadedModel`."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        self.loaded = loaded
        self.config = config
        self.shapes = module_shapes(loaded.model)
        # On a CPU the LoRA matmuls run in float32 whatever the model's dtype: without AVX-512
        # BF16, bfloat16 matmuls of many rows are slower there (docs/BENCHMARKS.md).
        bank_dtype = torch.float32 if loaded.device.type == "cpu" else loaded.dtype
        bank = LoraSlots(self.shapes, config.adapter_slots, config.max_lora_rank,
                         bank_dtype, loaded.device)
        self.slots = SlotManager(bank)
        self.runner = ModelRunner(loaded.model, bank, config.max_rows, config.max_context,
                                  loaded.dtype, loaded.device)
        self.merging = MergeController(self.runner.slot_linears(), self.slots,
                                       self.adapter_loader, config.merge_mode,
                                       config.merge_format, config.merge_after_steps)
        self.stats = EngineStats(merge=self.merging.stats)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._waiting: deque[tuple[GenerationRequest, Sink]] = deque()
        self._rows: dict[str, _Row] = {}
        self._free_rows = list(range(config.max_rows - 1, -1, -1))
        self._thread: threading.Thread | None = None
        self._retiring: set[str] = set()
        self._stopping = threading.Event()
        self.last_heartbeat = time.monotonic()
        self.failure: BaseException | None = None

    # ------------------------------------------------------------------ public, any thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cameo-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stalled(self, timeout: float) -> bool:
        """True when the worker has not come round its loop for `timeout` seconds."""
        return self.alive and time.monotonic() - self.last_heartbeat > timeout

    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        """Queue a request; its outputs go to `sink` (called on the worker thread)."""
        self._post("add", (request, sink))

    def abort(self, request_id: str) -> None:
        """Stop a request at the next step boundary and free its row."""
        self._post("abort", request_id)

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the worker thread between two steps (model access for tools and tests)."""
        future: Future[T] = Future()
        self._post("call", (fn, future))
        return future

    def score(self, sequences: list[tuple[list[int], AdapterRef | None]]) -> list[torch.Tensor]:
        """Teacher-forced logits (T, vocab) of each sequence, all in ONE batched forward.

        Used to check that a mixed-adapter batch computes what each adapter computes alone.
        Blocks until the worker has run it between two steps.
        """
        return self.call(lambda: self._score(sequences)).result()

    def merge(self, ref: AdapterRef) -> Future[bool]:
        """Pin `ref` as the merged adapter; resolves to whether it is merged right away (it is
        whenever no request for anything else is running or waiting). Raises MergeError when
        merging is disabled or the base layers cannot hold a merge."""
        def pin() -> bool:
            self.merging.pin(ref)
            self.merging.maybe_merge(*self._keys(), self._refs())
            return self.merging.merged_key == ref.key
        return self.call(pin)

    def unmerge(self, key: str) -> Future[None]:
        """Drop the pin on adapter `key` and unmerge it if it is merged."""
        return self.call(lambda: self.merging.unpin(key))

    def retire(self, key: str) -> None:
        """Free adapter `key`'s slot once no running row uses it (a replaced or deleted version)."""
        self._post("retire", key)

    @cached_property
    def grammars(self) -> Grammars:
        """Compiled grammars for this tokenizer (built on first use; the API compiles a
        request's grammar here before submitting it, so the worker finds it cached)."""
        return Grammars(self.loaded.tokenizer, _vocab_size(self.loaded.model),
                        sorted(self.loaded.eos_token_ids))

    def adapter_loader(self, ref: AdapterRef) -> Callable[[], AdapterWeights]:
        if ref.weights is not None:
            weights = ref.weights
            return lambda: weights
        return lambda: read_adapter(ref.path, self.shapes, self.config.max_lora_rank)

    # ------------------------------------------------------------------ worker thread

    def _post(self, kind: str, payload: Any) -> None:
        self._inbox.put((kind, payload))
        self._wake.set()

    def _loop(self) -> None:
        log.info("engine worker started")
        try:
            while not self._stopping.is_set():
                self.last_heartbeat = time.monotonic()
                self._drain_inbox()
                self.last_heartbeat = time.monotonic()
                self._publish_stats()
                if not self._rows and not self._waiting:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    self.step()
                except Exception as exc:  # a failed step fails its rows, not the server
                    log.exception("engine step failed")
                    self._fail_running(f"engine step failed: {exc}")
        except BaseException as exc:  # the worker dying must not be silent
            self.failure = exc
            log.exception("engine worker died")
            self._fail_all(f"engine failure: {exc}")
            raise
        finally:
            log.info("engine worker stopped")

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self._waiting.append(payload)
            elif kind == "abort":
                self._abort(payload)
            elif kind == "retire":
                self._retiring.add(payload)
                self.merging.forget(payload)
                self._drop_retired(payload)
            elif kind == "call":
                fn, future = payload
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:
                        future.set_exception(exc)

    def step(self) -> None:
        """One engine iteration: admit, prefill a chunk, decode every running row."""
        self._expire()
        self.merging.reconcile(*self._keys())  # before admitting a row the merge cannot serve
        self._admit()
        prefill = [r for r in self._rows.values() if not r.decoding]
        decode = [r for r in self._rows.values() if r.decoding]
        if prefill:
            self._run(prefill, budget=self.config.prefill_chunk_tokens)
        if decode:
            self._run(decode, budget=None)
        self.merging.maybe_merge(*self._keys(), self._refs())  # takes effect from the next step
        self.stats.steps += 1
        self._publish_stats()

    def _keys(self) -> tuple[set[str | None], set[str | None]]:
        """Adapter keys of the running and of the waiting requests (None: the plain base)."""
        running = {row.adapter_key for row in self._rows.values()}
        waiting = {r.adapter.key if r.adapter else None for r, _ in self._waiting}
        return running, waiting

    def _refs(self) -> dict[str, AdapterRef]:
        return {r.request.adapter.key: r.request.adapter for r in self._rows.values()
                if r.request.adapter}

    def _publish_stats(self) -> None:
        """Refresh the counters other threads read (each assignment is atomic)."""
        self.stats.running = len(self._rows)
        self.stats.waiting = len(self._waiting)
        self.stats.resident_adapters = self.slots.resident()
        self.stats.running_adapters = frozenset(
            _persona(r.request) for r in self._rows.values() if r.request.adapter)
        self.stats.waiting_adapters = frozenset(
            _persona(r) for r, _ in self._waiting if r.adapter)

    def _score(self, sequences: list[tuple[list[int], AdapterRef | None]],
               rows: list[int] | None = None) -> list[torch.Tensor]:
        """`rows`: the batch rows (KV cache rows) to score in; default, free ones."""
        if rows is None and len(sequences) > len(self._free_rows):
            raise RuntimeError("not enough free batch rows to score these sequences")
        rows = rows if rows is not None else self._free_rows[-len(sequences):]
        keys = {ref.key if ref else None for _, ref in sequences}
        self.merging.reconcile(keys, set())
        acquired: list[str] = []
        try:
            slots = []
            for _, ref in sequences:
                slot = 0 if ref is None else self.slots.acquire(ref.key, self.adapter_loader(ref))
                if slot is None:
                    raise RuntimeError("not enough free adapter slots to score these sequences")
                if ref is not None:
                    acquired.append(ref.key)
                slots.append(self.merging.slot(ref.key if ref else None, slot))
            device = self.loaded.device
            width = max(len(ids) for ids, _ in sequences)
            batch = ForwardBatch(
                tokens=torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in sequences],
                                    device=device),
                rows=torch.tensor(rows, device=device),
                start=torch.zeros(len(sequences), dtype=torch.long, device=device),
                lengths=torch.tensor([len(ids) for ids, _ in sequences], device=device),
                slots=torch.tensor(slots, device=device),
            )
            logits = self.runner.forward(batch, all_logits=True)  # (B, T, vocab)
            return [logits[i, : len(ids)].cpu() for i, (ids, _) in enumerate(sequences)]
        finally:
            for key in acquired:
                self._release(key)

    def _expire(self) -> None:
        """Fail requests whose deadline has passed, waiting or running."""
        now = time.monotonic()
        expired = [r for r, _ in self._waiting if r.deadline is not None and r.deadline <= now]
        for request in expired:
            self._abort(request.request_id, reason="timeout")
        for row in [r for r in self._rows.values()
                    if r.request.deadline is not None and r.request.deadline <= now]:
            self._fail_row(row, "the request ran past its deadline", "timeout")

    def _admit(self) -> None:
        while self._waiting and self._free_rows:
            request, sink = self._waiting[0]
            if len(request.prompt_ids) >= self.config.max_context or not request.prompt_ids:
                self._waiting.popleft()
                sink(_error_output(request, f"the prompt has {len(request.prompt_ids)} tokens; "
                                   f"the context holds {self.config.max_context}",
                                   "context_length_exceeded"))
                continue
            try:
                generator = self._generator(request)
            except (RuntimeError, ValueError, OverflowError) as exc:  # a seed out of range
                self._waiting.popleft()
                sink(_error_output(request, f"invalid seed: {exc}", "invalid_seed"))
                continue
            try:
                grammar = self._grammar(request)
            except GrammarError as exc:
                self._waiting.popleft()
                sink(_error_output(request, f"invalid grammar: {exc.message}", "invalid_grammar"))
                continue
            try:
                slot = self._acquire_slot(request)
            except Exception as exc:  # a bad file, or out of memory: this request fails, not all
                self._waiting.popleft()
                message = exc.message if isinstance(exc, AdapterError) else repr(exc)
                log.warning("request %s: adapter load failed: %s", request.request_id, message)
                sink(_error_output(request, f"adapter could not be loaded: {message}",
                                   "adapter_load_failed"))
                continue
            if slot is None:
                return  # every slot is held by running rows: wait, and let nobody jump ahead
            self._waiting.popleft()
            row = self._rows[request.request_id] = self._new_row(request, sink, slot, generator)
            row.grammar = grammar
            row.admitted_at = time.monotonic()
            self.stats.prompt_tokens += len(request.prompt_ids)
            if request.sampling.prompt_logprobs is not None:
                self._score_prompt(row)

    def _grammar(self, request: GenerationRequest) -> RowGrammar | None:
        spec = request.sampling.grammar
        if spec is None:
            return None
        row = self.grammars.row(spec)
        for token in request.sampling.grammar_consumed:  # a resumed request: where it was
            if not row.accept(token):
                raise GrammarError("the tokens generated before the resumption break the grammar")
        return row

    def _score_prompt(self, row: _Row) -> None:
        """The prompt tokens' logprobs (echo), from one extra teacher-forced forward; a request
        with max_tokens 0 ends here."""
        request = row.request
        try:  # in the row's own KV cache row, which its prefill then writes again
            (logits,) = self._score([(list(request.prompt_ids), request.adapter)], [row.row])
        except Exception as exc:  # this request fails, not the step
            log.warning("request %s: scoring the prompt failed: %r", request.request_id, exc)
            self._fail_row(row, f"scoring the prompt failed: {exc}", "engine_error")
            return
        counts = [request.sampling.prompt_logprobs or 0] * (len(request.prompt_ids) - 1)
        scored = token_logprobs(logits[:-1], request.prompt_ids[1:], counts)
        row.prompt_logprobs = (None, *scored)
        if request.sampling.max_tokens == 0:
            row.sink(RequestOutput(request_id=request.request_id, finish_reason="length",
                                   prompt_tokens=row.prompt_len,
                                   prompt_logprobs=row.prompt_logprobs))
            self._free(row)

    def _acquire_slot(self, request: GenerationRequest) -> int | None:
        if request.adapter is None:
            return 0
        return self.slots.acquire(request.adapter.key, self.adapter_loader(request.adapter))

    def _generator(self, request: GenerationRequest) -> torch.Generator | None:
        """The request's own sampling generator, on the device the logits live on."""
        if request.sampling.seed is None:
            return None
        return torch.Generator(device=self.loaded.device).manual_seed(request.sampling.seed)

    def _new_row(self, request: GenerationRequest, sink: Sink, slot: int,
                 generator: torch.Generator | None) -> _Row:
        return _Row(request=request, sink=sink, row=self._free_rows.pop(), slot=slot,
                    tokens=list(request.prompt_ids),
                    detok=IncrementalDetokenizer(self.loaded.tokenizer),
                    stop=StopMatcher(request.sampling.stop), generator=generator)

    def _run(self, rows: list[_Row], budget: int | None) -> None:
        """One forward over `rows` (their pending tokens, up to `budget` in all), then sample."""
        chunks: list[tuple[_Row, list[int]]] = []
        for row in rows:
            pending = row.tokens[row.cached:]
            if budget is not None:
                if budget <= 0:
                    break
                pending = pending[:budget]
                budget -= len(pending)
            chunks.append((row, pending))
        batch = self._batch(chunks)
        logits = self.runner.forward(batch)  # (B, vocab)
        ready: list[int] = []
        for index, (row, pending) in enumerate(chunks):
            row.cached += len(pending)
            if row.cached == len(row.tokens):
                ready.append(index)
        if ready:
            self._sample([chunks[i][0] for i in ready], logits[ready])

    def _batch(self, chunks: list[tuple[_Row, list[int]]]) -> ForwardBatch:
        device = self.loaded.device
        width = max(len(tokens) for _, tokens in chunks)
        padded = [tokens + [0] * (width - len(tokens)) for _, tokens in chunks]
        slots = [self.merging.slot(row.adapter_key, row.slot) for row, _ in chunks]
        return ForwardBatch(
            tokens=torch.tensor(padded, device=device),
            rows=torch.tensor([row.row for row, _ in chunks], device=device),
            start=torch.tensor([row.cached for row, _ in chunks], device=device),
            lengths=torch.tensor([len(tokens) for _, tokens in chunks], device=device),
            slots=torch.tensor(slots, device=device) if any(slots) else None,
        )

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> None:
        finite = torch.isfinite(logits).all(dim=-1).tolist()  # (B,)
        if not all(finite):  # a numerical fault in one row fails that row only
            for row, ok in zip(rows, finite, strict=True):
                if not ok:
                    log.warning("request %s: non-finite logits", row.request.request_id)
                    self._fail_row(row, "the model produced non-finite logits for this request",
                                   "numerical_error")
            keep = [i for i, ok in enumerate(finite) if ok]
            rows, logits = [rows[i] for i in keep], logits[keep]
            if not rows:
                return
        params = [row.request.sampling for row in rows]
        histories = [row.generated for row in rows]
        generators = [row.generator for row in rows]
        raw = logits  # what logprobs report: the model's own distribution
        if any(p.logit_bias for p in params) or any(row.grammar for row in rows):
            logits = logits.float().clone()  # (B, vocab)
            apply_logit_bias(logits, params)
            self.grammars.apply(logits, [row.grammar for row in rows])
        try:
            tokens: list[int | None] = list(sample(logits, params, histories, generators))
        except Exception:  # find the rows at fault: each fails alone, the others go on
            tokens = [self._sample_one(row, logits[i:i + 1]) for i, row in enumerate(rows)]
        logprobs = self._logprobs(raw, rows, tokens)
        for row, token, logprob in zip(rows, tokens, logprobs, strict=True):
            if token is not None:
                self._advance(row, token, logprob)

    @staticmethod
    def _logprobs(logits: torch.Tensor, rows: list[_Row],
                  tokens: list[int | None]) -> list[TokenLogprob | None]:
        asked = [i for i, (row, token) in enumerate(zip(rows, tokens, strict=True))
                 if token is not None and row.request.sampling.logprobs is not None]
        found: list[TokenLogprob | None] = [None] * len(rows)
        if asked:
            counts = [rows[i].request.sampling.logprobs or 0 for i in asked]
            scored = token_logprobs(logits[asked], [tokens[i] or 0 for i in asked], counts)
            for i, logprob in zip(asked, scored, strict=True):
                found[i] = logprob
        return found

    def _sample_one(self, row: _Row, logits: torch.Tensor) -> int | None:
        try:
            return sample(logits, [row.request.sampling], [row.generated], [row.generator])[0]
        except Exception as exc:
            log.warning("request %s: sampling failed: %r", row.request.request_id, exc)
            self._fail_row(row, f"sampling failed for this request: {exc}", "sampling_error")
            return None

    def _advance(self, row: _Row, token: int, logprob: TokenLogprob | None = None) -> None:
        sampling = row.request.sampling
        if row.grammar is not None and not row.grammar.accept(token):
            self._fail_row(row, "the sampled token broke the request's grammar",
                           "grammar_error")
            return
        row.tokens.append(token)
        row.generated.append(token)
        self.stats.generated_tokens += 1
        finish: FinishReason | None = None
        text = ""
        done = row.grammar is not None and row.grammar.done  # the grammar took its stop token
        if done or (token in self.loaded.eos_token_ids and not sampling.ignore_eos):
            finish = "stop"
        else:
            text = row.stop.feed(row.detok.push(token))
            if row.stop.stopped:
                finish = "stop"
            elif len(row.generated) >= sampling.max_tokens or len(row.tokens) >= self.config.max_context:
                finish = "length"
        if finish is not None:
            text += row.stop.flush()
        first = len(row.generated) == 1
        row.sink(RequestOutput(
            request_id=row.request.request_id, text=text, token_ids=(token,),
            finish_reason=finish, prompt_tokens=row.prompt_len,
            completion_tokens=len(row.generated),
            queue_seconds=row.admitted_at - row.request.submitted_at if first else None,
            logprobs=(logprob,) if logprob is not None else (),
            prompt_logprobs=row.prompt_logprobs if first else None))
        if finish is not None:
            self._free(row)

    def _free(self, row: _Row) -> None:
        del self._rows[row.request.request_id]
        self._free_rows.append(row.row)
        if row.request.adapter is not None:
            self._release(row.request.adapter.key)

    def _release(self, key: str) -> None:
        self.slots.release(key)
        self._drop_retired(key)

    def _drop_retired(self, key: str) -> None:
        # Retired keys stay in the set: a request queued before the swap may still load the old
        # version later, and its slot must be freed again when it ends. Keys are never reused.
        if key in self._retiring and self.slots.users(key) == 0:
            self.slots.drop(key)

    def _abort(self, request_id: str, reason: str = "abort") -> None:
        for index, (request, sink) in enumerate(self._waiting):
            if request.request_id == request_id:
                del self._waiting[index]
                if reason == "timeout":
                    sink(_error_output(request, "the request waited past its deadline", "timeout"))
                else:
                    sink(RequestOutput(request_id=request_id, finish_reason="abort"))
                return
        row = self._rows.get(request_id)
        if row is not None:
            self._free(row)
            row.sink(RequestOutput(request_id=request_id, finish_reason="abort",
                                   prompt_tokens=row.prompt_len,
                                   completion_tokens=len(row.generated)))

    def _fail_row(self, row: _Row, message: str, code: str) -> None:
        self._free(row)
        row.sink(_error_output(row.request, message, code, len(row.generated)))

    def _fail_running(self, message: str) -> None:
        for row in list(self._rows.values()):
            self._fail_row(row, message, "engine_error")

    def _fail_all(self, message: str) -> None:
        self._fail_running(message)
        while self._waiting:
            request, sink = self._waiting.popleft()
            sink(_error_output(request, message, "engine_error"))


def _vocab_size(model: Any) -> int:
    """Width of the logits (the output embedding's rows; may exceed the tokenizer's size)."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0])


def _persona(request: GenerationRequest) -> str:
    assert request.adapter is not None
    return request.adapter.key.rsplit("@", 1)[0]


def _error_output(request: GenerationRequest, message: str, code: str,
                  completion_tokens: int = 0) -> RequestOutput:
    return RequestOutput(request_id=request.request_id, finish_reason="error",
                         prompt_tokens=len(request.prompt_ids), completion_tokens=completion_tokens,
                         error=message, error_code=code)
