"""Continuous batching: requests join a running batch at step boundaries and leave when done."""

from __future__ import annotations

import time

from server.composition import Cameo
from server.engine.types import GenerationRequest, SamplingParams
from tests.helpers import Collector, chat_prompt
from tests.numerics import assert_same_choice, logits_tolerance
from tests.scoring import EngineProbe


def test_late_request_streams_before_long_one_finishes(cameo: Cameo) -> None:
    tokenizer = cameo.base.tokenizer
    long = GenerationRequest("long", chat_prompt(tokenizer, "Write a long story."),
                             SamplingParams(max_tokens=120, temperature=0.0, ignore_eos=True))
    short = GenerationRequest("short", chat_prompt(tokenizer, "Say hi."),
                              SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    long_sink, short_sink = Collector(), Collector()
    EngineProbe.of(cameo).submit(long, long_sink)
    deadline = time.monotonic() + 60
    while long_sink.first_token_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    EngineProbe.of(cameo).submit(short, short_sink)
    assert short_sink.done.wait(120) and long_sink.done.wait(300)
    assert short_sink.first_token_at is not None and long_sink.finished_at is not None
    # the short request joined the running batch: it finished while the long one was decoding
    assert short_sink.finished_at is not None
    assert short_sink.finished_at < long_sink.finished_at
    assert len(long_sink.token_ids) == 120 and long_sink.finish_reason == "length"
    assert len(short_sink.token_ids) == 4


def test_rows_and_slots_are_freed_after_requests(cameo: Cameo) -> None:
    engine = EngineProbe.of(cameo)
    tokenizer = cameo.base.tokenizer
    request = GenerationRequest("free", chat_prompt(tokenizer, "Hi"),
                                SamplingParams(max_tokens=2, temperature=0.0))
    sink = Collector()
    engine.submit(request, sink)
    assert sink.done.wait(60)
    state = engine.call(lambda: (len(engine.scheduler.running), engine.scheduler.free_rows)).result()
    assert state == (0, engine.config.max_rows)


def test_abort_frees_the_row(cameo: Cameo) -> None:
    engine = EngineProbe.of(cameo)
    request = GenerationRequest("abort-me", chat_prompt(cameo.base.tokenizer, "Count."),
                                SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True))
    sink = Collector()
    engine.submit(request, sink)
    deadline = time.monotonic() + 60
    while sink.first_token_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.abort("abort-me")
    assert sink.done.wait(30)
    assert sink.finish_reason == "abort"
    assert len(sink.token_ids) < 400
    assert engine.call(lambda: len(engine.scheduler.running)).result() == 0


def test_long_prompt_is_prefilled_in_chunks(cameo: Cameo) -> None:
    """A prompt longer than one prefill chunk still produces the same first token."""
    tokenizer = cameo.base.tokenizer
    text = "Summarise: " + " ".join(f"item {i}" for i in range(90))
    prompt = chat_prompt(tokenizer, text)
    assert len(prompt) > EngineProbe.of(cameo).config.prefill_chunk_tokens
    sink = Collector()
    EngineProbe.of(cameo).submit(GenerationRequest("chunked", prompt,
                                            SamplingParams(max_tokens=3, temperature=0.0)), sink)
    assert sink.done.wait(120)
    (logits,) = EngineProbe.of(cameo).score([(list(prompt), None)])
    # The same token as one unchunked prefill, unless the kernel path's rounding makes it a tie.
    assert_same_choice(logits[-1], sink.token_ids[0],
                       logits_tolerance(EngineProbe.of(cameo).model, logits[-1]))


def test_prompt_over_the_context_fails_that_request_only(cameo: Cameo) -> None:
    too_long = tuple(range(1, EngineProbe.of(cameo).config.max_context + 5))
    sink = Collector()
    EngineProbe.of(cameo).submit(GenerationRequest("too-long", too_long, SamplingParams(max_tokens=2)),
                          sink)
    assert sink.done.wait(30)
    assert sink.finish_reason == "error" and sink.outputs[-1].error_code == "context_length_exceeded"
    assert cameo.service.worker.alive
