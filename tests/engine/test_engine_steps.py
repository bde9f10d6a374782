"""The engine's step over a fake runner, in milliseconds: what each request gets, mixed slots
in one forward, aborts, deadlines, and failures that stay with their request."""

from __future__ import annotations

import time

import torch

from server.engine.runner import ForwardBatch
from tests.engine.fakes import (
    EOS,
    VOCAB,
    CountingRunner,
    Outputs,
    make_engine,
    ref,
    request,
    run,
    weights,
)


def test_each_request_gets_its_own_tokens_and_finish_reason() -> None:
    engine, out = make_engine(), Outputs()
    engine.add(request("a", (0, 1, 2), tokens=3), out.sink)
    engine.add(request("b", (10,), tokens=2), out.sink)
    run(engine)
    assert out.tokens("a") == [3, 4, 5] and out.tokens("b") == [11, 12]
    assert "".join(o.text for o in out.by_id["a"]) == "def"
    assert out.last("a").finish_reason == "length" and out.last("a").completion_tokens == 3
    assert out.last("b").prompt_tokens == 1
    assert engine.stats.generated_tokens == 5 and engine.stats.prompt_tokens == 4


def test_rows_of_different_adapters_share_one_forward() -> None:
    runner = CountingRunner()
    engine, out = make_engine(runner=runner), Outputs()
    engine.add(request("base", (0,), tokens=2), out.sink)
    engine.add(request("p", (0,), tokens=2, adapter=ref("pirate")), out.sink, weights())
    engine.add(request("q", (0,), tokens=2, adapter=ref("bard")), out.sink, weights())
    run(engine)
    # the fake adds each row's slot to its next token: base +0, first adapter slot 1, second 2
    assert out.tokens("base") == [1, 2]
    assert out.tokens("p") == [2, 4] and out.tokens("q") == [3, 6]
    decode = [b for b in runner.forwards if b.width == 1 and len(b.rows) == 3]
    assert decode and decode[0].slots is not None and sorted(decode[0].slots) == [0, 1, 2]


def test_eos_stops_a_request() -> None:
    engine, out = make_engine(), Outputs()
    engine.add(request("a", (EOS - 2,), tokens=10), out.sink)
    run(engine)
    assert out.tokens("a") == [EOS - 1, EOS] and out.last("a").finish_reason == "stop"


def test_a_long_prompt_is_prefilled_in_chunks_beside_a_decoding_row() -> None:
    runner = CountingRunner()
    engine, out = make_engine(chunk=4, runner=runner), Outputs()
    engine.add(request("short", (0,), tokens=6), out.sink)
    engine.step()  # short is prefilled and has its first token
    engine.add(request("long", tuple(range(10)), tokens=1), out.sink)
    for _ in range(3):
        engine.step()
    widths = [(len(b.rows), b.width) for b in runner.forwards]
    # one forward per step: the prompt's chunk of 4, 4 and 2 tokens beside the decoding row
    assert widths[1:] == [(2, 4), (2, 4), (2, 2)]
    assert [b.lengths for b in runner.forwards[1:]] == [[4, 1], [4, 1], [2, 1]]
    assert len(out.tokens("short")) == 4  # it kept decoding while the prompt was filled
    run(engine)
    assert out.tokens("long") == [10]


def test_abort_frees_the_row_for_the_next_request() -> None:
    engine, out = make_engine(rows=1), Outputs()
    engine.add(request("a", tokens=50), out.sink)
    engine.add(request("b", tokens=1), out.sink)
    engine.step()
    engine.abort("a")
    assert out.last("a").finish_reason == "abort"
    run(engine)
    assert out.finished == ["a", "b"] and out.last("b").finish_reason == "length"


def test_deadlines_fail_waiting_and_running_requests_with_timeout() -> None:
    engine, out = make_engine(rows=1), Outputs()
    soon = time.monotonic() + 0.05
    engine.add(request("running", tokens=50, deadline=soon), out.sink)
    engine.add(request("waiting", tokens=1, deadline=soon), out.sink)
    engine.step()
    time.sleep(0.06)
    run(engine)
    for rid in ("running", "waiting"):
        assert out.last(rid).error_code == "timeout"
    assert "ran past" in (out.last("running").error or "")
    assert "waited past" in (out.last("waiting").error or "")


def test_a_prompt_too_long_or_a_bad_seed_fails_at_once_and_alone() -> None:
    engine, out = make_engine(max_context=8), Outputs()
    engine.add(request("long", tuple(range(8))), out.sink)
    engine.add(request("seed", seed=2**64), out.sink)
    engine.add(request("fine", tokens=1), out.sink)
    assert out.last("long").error_code == "context_length_exceeded"
    assert out.last("seed").error_code == "invalid_seed"
    run(engine)
    assert out.tokens("fine") == [3]


def test_an_adapter_without_weights_fails_that_request_only() -> None:
    engine, out = make_engine(), Outputs()
    engine.add(request("broken", adapter=ref("pirate"), tokens=2), out.sink)  # no weights
    engine.add(request("fine", tokens=2), out.sink)
    run(engine)
    assert out.last("broken").error_code == "adapter_load_failed"
    assert out.tokens("fine") == [3, 4]
    assert engine.slots.resident() == {}


def test_non_finite_logits_fail_their_row_only() -> None:
    class NaNForRowOne(CountingRunner):
        def forward(self, batch: ForwardBatch, all_logits: bool = False) -> torch.Tensor:
            logits = super().forward(batch, all_logits)
            logits[torch.tensor(batch.rows) == 1] = float("nan")
            return logits

    engine, out = make_engine(runner=NaNForRowOne()), Outputs()
    engine.add(request("row0", tokens=2), out.sink)
    engine.add(request("row1", tokens=2), out.sink)
    run(engine)
    assert out.last("row1").error_code == "numerical_error"
    assert out.tokens("row0") == [3, 4]


def test_a_failed_step_fails_its_rows_and_the_engine_goes_on() -> None:
    runner = CountingRunner()
    engine, out = make_engine(runner=runner), Outputs()
    runner.fail_on = lambda batch: True
    engine.add(request("a"), out.sink)
    try:
        engine.step()
    except RuntimeError:
        engine.fail_running("engine step failed")  # what the worker does
    assert out.last("a").error_code == "engine_error"
    runner.fail_on = lambda batch: False
    engine.add(request("b", tokens=1), out.sink)
    run(engine)
    assert out.tokens("b") == [3]
    assert engine.scheduler.idle


def test_a_retired_version_keeps_serving_its_running_row() -> None:
    engine, out = make_engine(slots=1), Outputs()
    old, new = ref("pirate", 1), ref("pirate", 2)
    engine.add(request("old", (0,), tokens=4, adapter=old), out.sink, weights())
    engine.step()
    engine.retire(old.key)
    engine.add(request("new", (0,), tokens=1, adapter=new), out.sink, weights())
    engine.step()
    assert "new" not in out.by_id  # the only slot is held by the old version's running row
    run(engine)
    assert len(out.tokens("old")) == 4 and out.last("new").finish_reason == "length"
    assert set(engine.slots.resident()) == {new.key}


def test_scores_teacher_forced_logits_in_one_forward() -> None:
    runner = CountingRunner()
    engine = make_engine(runner=runner)
    (base, adapted) = engine.score([([0, 1, 2], None, None), ([5, 6], ref("bard"), weights())])
    assert base.shape == (3, VOCAB) and adapted.shape == (2, VOCAB)
    assert base.argmax(-1).tolist() == [1, 2, 3] and adapted.argmax(-1).tolist() == [7, 8]
    assert len(runner.forwards) == 1 and engine.scheduler.idle
    assert engine.slots.users("bard@1") == 0  # released after scoring


def test_a_sink_that_raises_loses_its_output_and_nothing_else() -> None:
    engine, out = make_engine(), Outputs()

    def gone(output: object) -> None:  # e.g. the event loop of a stream closed under it
        raise RuntimeError("Event loop is closed")

    engine.add(request("gone", tokens=3), gone)
    engine.add(request("fine", tokens=3), out.sink)
    run(engine)
    engine.fail_all("shutting down")  # what the worker does when it dies: must not raise
    assert out.tokens("fine") == [3, 4, 5] and engine.scheduler.idle
