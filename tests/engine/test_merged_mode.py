"""Merged mode on the embedded NF4 model: same logits as the unmerged slot path, bit-exact
unmerge, and switching between merged and mixed batches while requests are running."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from server.engine.types import AdapterRef, GenerationRequest, SamplingParams
from server.lora.merge import MergeError
from tests.conftest import CameoFactory
from tests.helpers import Collector, assert_greedy_consistent, chat_prompt
from tests.numerics import assert_logits_close, logits_tolerance
from tests.scoring import EngineProbe

# Dense merge computes x @ (W + BA)^T in float32 where the slot path computes x @ W^T + (x @ A^T)
# @ B^T on the base's kernel path: summation order in float32 (measured ~1.2e-4 on logits of ~20),
# and on an AVX512-BF16 CPU the base's bfloat16 rounding as well (1.1 measured through
# tests/emulation). Both within `logits_tolerance` of that path (tests/numerics.py).


def _tolerance(engine: EngineProbe, logits: torch.Tensor) -> float:
    return logits_tolerance(engine.model, logits, across_precision=True)


def _ref(persona_dirs: dict[str, Path], name: str) -> AdapterRef:
    return AdapterRef(name, 1, persona_dirs[name])


def _score(engine: EngineProbe, ids: list[int], ref: AdapterRef | None) -> torch.Tensor:
    return engine.score([(ids, ref)])[0]


def _wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _prompt(engine: EngineProbe, text: str) -> list[int]:
    return list(chat_prompt(engine.tokenizer, text))


def test_pinned_merge_gives_the_adapters_logits_and_unmerge_is_bit_exact(
        make_cameo: CameoFactory, persona_dirs: dict[str, Path]) -> None:
    engine = EngineProbe.of(make_cameo())
    bravo = _ref(persona_dirs, "bravo")  # rank 16 on all seven projections
    ids = _prompt(engine, "What is your favourite food?")
    base_before, bravo_before = _score(engine, ids, None), _score(engine, ids, bravo)
    assert not torch.equal(base_before.argmax(-1), bravo_before.argmax(-1))  # the adapter matters

    assert engine.merge(bravo).result(60) is True  # idle engine: merged at once
    assert engine.stats.merge.merged == bravo.key and engine.stats.merge.pinned == bravo.key
    assert_logits_close(_score(engine, ids, bravo), bravo_before,
                        _tolerance(engine, bravo_before))

    engine.unmerge(bravo.key).result(60)
    assert engine.stats.merge.merged is None and engine.stats.merge.pinned is None
    assert torch.equal(_score(engine, ids, None), base_before)
    assert torch.equal(_score(engine, ids, bravo), bravo_before)
    assert engine.stats.merge.merges == 1 and engine.stats.merge.unmerges == 1


def test_a_request_for_another_persona_unmerges_and_the_pin_merges_again(
        make_cameo: CameoFactory, persona_dirs: dict[str, Path]) -> None:
    engine = EngineProbe.of(make_cameo())
    bravo, alpha = _ref(persona_dirs, "bravo"), _ref(persona_dirs, "alpha")
    engine.merge(bravo).result(60)
    ids = _prompt(engine, "Tell me about the sea.")
    alpha_solo = _score(engine, ids, alpha)  # scoring alpha unmerges first
    assert engine.stats.merge.merged is None and engine.stats.merge.pinned == bravo.key
    _score(engine, ids, None)

    sampling = SamplingParams(max_tokens=4, temperature=0.0)
    done = Collector()
    engine.submit(GenerationRequest("after", tuple(ids), sampling, alpha), done)
    assert done.done.wait(120) and done.finish_reason == "length"
    _wait_for(lambda: engine.stats.merge.merged == bravo.key)  # the batch is empty again
    assert_logits_close(_score(engine, ids, alpha), alpha_solo, _tolerance(engine, alpha_solo))
    engine.unmerge(bravo.key).result(60)


def test_switching_while_streams_run_keeps_every_output_correct(
        make_cameo: CameoFactory, persona_dirs: dict[str, Path]) -> None:
    """auto mode: two bravo streams get the batch to themselves and bravo is merged; then alpha
    and a base request arrive mid-stream, which unmerges; everyone's greedy tokens stay the
    adapter's own argmax, teacher-forced, before and after each switch."""
    engine = EngineProbe.of(make_cameo(merge_mode="auto", merge_after_steps=3, max_context=256))
    bravo, alpha = _ref(persona_dirs, "bravo"), _ref(persona_dirs, "alpha")
    long = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    short = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    # bravo's prompts ask for counting: confident tokens, so that the tolerance across precisions
    # (wide on the bfloat16 paths, int4's above all) still leaves clear positions to check
    prompts = {name: tuple(_prompt(engine, text)) for name, text in (
        ("b1", "Count from 1 to 40, separated by commas."), ("b2", "List the numbers from 50 to 90."),
        ("a", "Tell me about the sea."), ("base", "Name three colours."))}
    sinks = {name: Collector() for name in prompts}
    engine.submit(GenerationRequest("b1", prompts["b1"], long, bravo), sinks["b1"])
    engine.submit(GenerationRequest("b2", prompts["b2"], long, bravo), sinks["b2"])
    _wait_for(lambda: engine.stats.merge.merged == bravo.key)
    assert not sinks["b1"].done.is_set(), "the streams finished before the merge"
    engine.submit(GenerationRequest("a", prompts["a"], short, alpha), sinks["a"])
    engine.submit(GenerationRequest("base", prompts["base"], short, None), sinks["base"])
    for sink in sinks.values():
        assert sink.done.wait(300) and sink.finish_reason == "length"
    assert engine.stats.merge.merges >= 1 and engine.stats.merge.unmerges >= 1
    adapters = {"b1": bravo, "b2": bravo, "a": alpha, "base": None}
    for name, sink in sinks.items():
        # bravo's streams ran partly on the merged float32 layers; the others never did
        assert_greedy_consistent(engine, prompts[name], sink.token_ids, adapters[name],
                                 across_precision=adapters[name] is bravo)


def test_retiring_the_merged_version_unmerges_and_drops_the_pin(
        make_cameo: CameoFactory, persona_dirs: dict[str, Path]) -> None:
    engine = EngineProbe.of(make_cameo())
    charlie = _ref(persona_dirs, "charlie")
    engine.merge(charlie).result(60)
    engine.retire(charlie.key)
    _wait_for(lambda: engine.stats.merge.merged is None and engine.stats.merge.pinned is None)
    _wait_for(lambda: charlie.key not in engine.stats.resident_adapters)


def test_merging_is_refused_when_disabled(make_cameo: CameoFactory,
                                          persona_dirs: dict[str, Path]) -> None:
    engine = EngineProbe.of(make_cameo(merge_mode="never"))
    with pytest.raises(MergeError, match="disabled"):
        engine.merge(_ref(persona_dirs, "alpha")).result(60)
    assert engine.stats.merge.merges == 0
