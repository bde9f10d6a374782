"""The ingress/engine wire without Ray: request timing across clocks, and resuming a stream.

`Resumption` must turn a continuation's outputs into exactly what the uninterrupted request
would have produced, whichever token the replica died after: checked at every split point,
with multi-byte characters and stop strings that straddle the split.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from transformers import AutoTokenizer

from server.distributed.wire import Resumption, continuation, receive, send_timing
from server.engine.detokenizer import IncrementalDetokenizer, StopMatcher
from server.engine.types import GenerationRequest, RequestOutput, SamplingParams
from server.model.embedded import ensure_converted
from server.settings import Settings

TEXT = "Héllo wörld — naïve café 😀 then STOP-HERE and ☃ 日本語 more text after it."
PROMPT = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def tokenizer(embedded_settings: Settings) -> object:
    return AutoTokenizer.from_pretrained(ensure_converted(embedded_settings.cache_dir))


def engine_run(tokenizer: object, request: GenerationRequest,
               tokens: list[int], eos: int) -> list[RequestOutput]:
    """What the engine emits when its sampler picks `tokens` (mirrors Engine._advance)."""
    detok, stop = IncrementalDetokenizer(tokenizer), StopMatcher(request.sampling.stop)
    outputs = []
    for count, token in enumerate(tokens, start=1):
        finish, text = None, ""
        if token == eos:
            finish = "stop"
        else:
            text = stop.feed(detok.push(token))
            if stop.stopped:
                finish = "stop"
            elif count >= request.sampling.max_tokens:
                finish = "length"
        if finish is not None:
            text += stop.flush()
        outputs.append(RequestOutput(request.request_id, text=text, token_ids=(token,),
                                     finish_reason=finish, prompt_tokens=len(request.prompt_ids),
                                     completion_tokens=count))
        if finish is not None:
            break
    return outputs


@pytest.mark.parametrize("stop,with_eos", [((), False), (("STOP-HERE",), False),
                                           (("☃",), False), ((), True)])
def test_a_resumed_stream_reads_as_one_uninterrupted_answer(tokenizer: object,
                                                            stop: tuple[str, ...],
                                                            with_eos: bool) -> None:
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    tokens = list(tokenizer(TEXT, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    tokens += [eos] if with_eos else []
    request = GenerationRequest("r", PROMPT, SamplingParams(max_tokens=len(tokens), stop=stop))
    whole = engine_run(tokenizer, request, tokens, eos)
    want_text, want_last = "".join(o.text for o in whole), whole[-1]
    assert want_last.finished
    for split in range(1, len(whole)):
        sent = [t for o in whole[:split] for t in o.token_ids]
        rest = continuation(request, sent)
        assert rest.prompt_ids == PROMPT + tuple(sent)
        assert rest.sampling.max_tokens == request.sampling.max_tokens - split
        resumption = Resumption(tokenizer, request, sent)
        got = list(whole[:split])
        for output in engine_run(tokenizer, rest, tokens[split:], eos):
            got.append(resumption.adjust(output))
            if got[-1].finished:
                break
        assert "".join(o.text for o in got) == want_text, split
        last = got[-1]
        assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
            want_last.finish_reason, want_last.prompt_tokens, want_last.completion_tokens)


def test_deadline_and_age_travel_as_durations() -> None:
    now = time.monotonic()
    request = GenerationRequest("r", PROMPT, SamplingParams(max_tokens=4), deadline=now + 30,
                                submitted_at=now - 2)
    timing = send_timing(request)
    assert 29 < (timing.remaining or 0) <= 30 and 2 <= timing.age < 3
    skewed = dataclasses.replace(request, deadline=now + 1e6, submitted_at=now + 1e6)
    here = receive(skewed, timing)  # the other machine's clock values are ignored
    assert 29 < (here.deadline or 0) - time.monotonic() <= 30
    assert 2 <= time.monotonic() - here.submitted_at < 3
    assert receive(request, send_timing(dataclasses.replace(request, deadline=None))).deadline \
        is None
