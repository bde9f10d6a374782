"""Values that cross the engine's boundary: what a request asks for and what it gets back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from server.engine.constraints import GrammarSpec
from server.lora.ref import AdapterRef

FinishReason = Literal["stop", "length", "error", "abort"]
# Why a request failed (`RequestOutput.error_code`); the HTTP edge maps each to a status once.
ErrorCode = Literal[
    "context_length_exceeded", "invalid_seed", "invalid_grammar", "adapter_load_failed",
    "timeout", "numerical_error", "sampling_error", "grammar_error", "engine_error",
    "engine_unavailable"]
MAX_LOGPROBS = 20  # top alternatives per token, OpenAI's limit


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model's distribution (the logits before sampling
    filters: penalties, bias, grammar), and the `top` alternatives, best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; temperature 0 means greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: int | None = None  # None: none; N: each token's logprob and the top N alternatives
    prompt_logprobs: int | None = None  # the same for each prompt token after the first (echo)
    grammar: GrammarSpec | None = None  # constrained decoding (server.engine.constraints)
    grammar_consumed: tuple[int, ...] = ()  # generated tokens the grammar already took (resumed)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    adapter: AdapterRef | None = None
    deadline: float | None = None  # time.monotonic() after which the request is failed
    submitted_at: float = field(default_factory=time.monotonic, compare=False)


@dataclass(frozen=True)
class RequestOutput:
    """One increment of a request's result; the last one has `finish_reason` set."""

    request_id: str
    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    error_code: ErrorCode | None = None
    queue_seconds: float | None = None  # on the first token: time from submit to admission
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token of `token_ids`, when asked
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # first output; [0] is None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class MergeStats:
    """Merged mode's state (see `server.engine.merging`); keys are `name@version`."""

    merged: str | None = None  # the adapter merged into the base layers now
    pinned: str | None = None  # the adapter the admin asked to merge
    merges: int = 0
    unmerges: int = 0
    last_merge_seconds: float = 0.0
    last_unmerge_seconds: float = 0.0


@dataclass
class EngineStats:
    """Counters the engine keeps for /metrics and tests (read without locks: approximate)."""

    steps: int = 0
    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    resident_adapters: dict[str, int] = field(default_factory=dict)
    running_adapters: frozenset[str] = frozenset()  # persona names (adapter keys less @version)
    waiting_adapters: frozenset[str] = frozenset()
    merge: MergeStats = field(default_factory=MergeStats)
