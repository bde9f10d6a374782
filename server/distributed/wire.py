"""What travels between the ingress and the engine replicas, and how a failed stream resumes.

All plain frozen dataclasses (picklable, no Ray import), so this module is testable alone.

- A request crosses with its deadline and age as durations (`Timing`): `time.monotonic()` is
  per machine, so the replica rebuilds both on its own clock.
- The engine's stream starts with a `Placement` (which replica, whether it already held the
  persona, and the replica's `ReplicaReport`), then the `RequestOutput`s.
- `Resumption`: when a replica dies after some tokens were already handed to the client, the
  ingress sends a continuation (prompt + those tokens, the remaining token budget) to another
  replica and passes its outputs through `Resumption.adjust`, which re-detokenizes them with the
  same incremental detokenizer and stop matcher the engine uses, primed with the tokens already
  sent, so text withheld at the break (half a UTF-8 character, the start of a stop string) and a
  stop string spanning the break come out exactly as in an uninterrupted run. Greedy requests
  resume exactly; a sampled one continues with fresh randomness, and the repetition penalties
  of the continuation only see its own tokens.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from server.engine.detokenizer import IncrementalDetokenizer, StopMatcher
from server.engine.types import GenerationRequest, RequestOutput
from server.service.stats import ServiceStats


@dataclass(frozen=True)
class Timing:
    """A request's clock-dependent fields as durations from 'now' on the sending machine."""

    age: float  # seconds since the request was submitted
    remaining: float | None  # seconds left before its deadline (None: no deadline)


def send_timing(request: GenerationRequest) -> Timing:
    now = time.monotonic()
    deadline = request.deadline
    return Timing(age=max(now - request.submitted_at, 0.0),
                  remaining=None if deadline is None else deadline - now)


def receive(request: GenerationRequest, timing: Timing) -> GenerationRequest:
    """The request on this machine's monotonic clock."""
    now = time.monotonic()
    deadline = None if timing.remaining is None else now + timing.remaining
    return dataclasses.replace(request, deadline=deadline, submitted_at=now - timing.age)


@dataclass(frozen=True)
class ReplicaReport:
    """One engine replica's state, as the ingress shows it in /metrics and /ready."""

    replica: str
    stats: ServiceStats
    at: float = field(default_factory=time.time)
    personas: tuple[str, ...] = ()  # multiplexed model ids the replica holds
    affinity_hits: int = 0  # requests that found their persona already held
    affinity_misses: int = 0


@dataclass(frozen=True)
class Placement:
    """First item of every engine stream: where the request runs."""

    replica: str
    adapter_cached: bool | None  # None: no adapter (the base or a prompt-only persona)
    report: ReplicaReport


def continuation(request: GenerationRequest, sent: list[int]) -> GenerationRequest:
    """The rest of `request` after the tokens `sent` (prompt extended, budget reduced)."""
    sampling = dataclasses.replace(
        request.sampling, max_tokens=request.sampling.max_tokens - len(sent),
        grammar_consumed=request.sampling.grammar_consumed + tuple(sent))
    return dataclasses.replace(request, prompt_ids=request.prompt_ids + tuple(sent),
                               sampling=sampling)


class Resumption:
    """Turns a continuation's outputs into what the original request would have produced."""

    def __init__(self, tokenizer: Any, request: GenerationRequest, sent: list[int]) -> None:
        self._detok = IncrementalDetokenizer(tokenizer)
        self._stop = StopMatcher(request.sampling.stop)
        for token in sent:  # the same state the failed replica had (the caller saw its output)
            self._stop.feed(self._detok.push(token))
        self._prompt_tokens = len(request.prompt_ids)
        self._sent = len(sent)

    def adjust(self, output: RequestOutput) -> RequestOutput:
        counts: dict[str, Any] = {"prompt_tokens": self._prompt_tokens,
                                  "completion_tokens": self._sent + output.completion_tokens}
        if output.error is not None or output.finish_reason == "abort":
            return dataclasses.replace(output, **counts)
        text = "".join(self._stop.feed(self._detok.push(t)) for t in output.token_ids)
        finish = output.finish_reason
        if self._stop.stopped:
            finish = "stop"
        elif finish is not None:
            text += self._stop.flush()
        return dataclasses.replace(output, text=text, finish_reason=finish, **counts)
