"""Turning sampled tokens into a request's outputs: text, stop strings and finish reasons.

Contract: `RowOutput` holds one running request's text state (incremental detokenizer, stop
matcher) and its sink. `RowOutput.token(...)` takes the request's next token and returns the
`RequestOutput` to send, with `finish_reason` set when EOS, a stop string, the grammar's end,
`max_tokens` or the context ends the request. `error_output` builds a failed request's last
output with an `ErrorCode`. `deliver` hands an output to a sink; a sink that raises (its
consumer is gone, e.g. an event loop closed under a stream) loses that output and is logged,
and never takes the engine's worker down with it.

It does not sample, hold rows or slots, or call sinks for other requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from server.engine.detokenizer import IncrementalDetokenizer, StopMatcher
from server.engine.types import ErrorCode, FinishReason, GenerationRequest, RequestOutput, TokenLogprob

Sink = Callable[[RequestOutput], None]

log = logging.getLogger(__name__)


def deliver(sink: Sink, output: RequestOutput) -> None:
    try:
        sink(output)
    except Exception as exc:
        log.warning("request %s: its output could not be delivered (%r); dropped",
                    output.request_id, exc)


@dataclass
class RowOutput:
    request: GenerationRequest
    sink: Sink
    detok: IncrementalDetokenizer
    stop: StopMatcher
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # sent with the first token

    def send(self, output: RequestOutput) -> None:
        deliver(self.sink, output)

    @classmethod
    def start(cls, request: GenerationRequest, sink: Sink, tokenizer: object) -> RowOutput:
        return cls(request, sink, IncrementalDetokenizer(tokenizer),
                   StopMatcher(request.sampling.stop))

    def token(self, token: int, generated: int, length: int, *, eos: Collection[int],
              max_context: int, grammar_done: bool, queue_seconds: float | None,
              logprob: TokenLogprob | None) -> RequestOutput:
        """The output for the request's `generated`-th token; `length`: its prompt plus
        generated tokens so far."""
        sampling = self.request.sampling
        finish: FinishReason | None = None
        text = ""
        if grammar_done or (token in eos and not sampling.ignore_eos):
            finish = "stop"
        else:
            text = self.stop.feed(self.detok.push(token))
            if self.stop.stopped:
                finish = "stop"
            elif generated >= sampling.max_tokens or length >= max_context:
                finish = "length"
        if finish is not None:
            text += self.stop.flush()
        first = generated == 1
        return RequestOutput(
            request_id=self.request.request_id, text=text, token_ids=(token,),
            finish_reason=finish, prompt_tokens=len(self.request.prompt_ids),
            completion_tokens=generated, queue_seconds=queue_seconds if first else None,
            logprobs=(logprob,) if logprob is not None else (),
            prompt_logprobs=self.prompt_logprobs if first else None)


def error_output(request: GenerationRequest, message: str, code: ErrorCode,
                 completion_tokens: int = 0) -> RequestOutput:
    return RequestOutput(request_id=request.request_id, finish_reason="error",
                         prompt_tokens=len(request.prompt_ids), completion_tokens=completion_tokens,
                         error=message, error_code=code)


def abort_output(request: GenerationRequest, completion_tokens: int = 0) -> RequestOutput:
    return RequestOutput(request_id=request.request_id, finish_reason="abort",
                         prompt_tokens=len(request.prompt_ids),
                         completion_tokens=completion_tokens)
