"""Mixed-adapter batches compute, row for row, what each adapter computes alone, and what PEFT does.

Free-running greedy text can legitimately diverge at a near-tie (float sums depend on the batch
shape), so the check is teacher-forced: every request's solo output is fed back through ONE
batched forward that mixes all adapters, and each position's logits must agree with the solo
forward within the kernel path's tolerance (`tests.numerics`); greedy tokens must agree wherever
the solo top-2 margin exceeds it. The same comparison is made against PEFT's own single-adapter
forward on a fresh NF4 copy of the base (PEFT loading an adapter calls `state_dict()`, which on
an AVX512-BF16 CPU rewrites a base that has already run: bitsandbytes 0.50's inverse repacking
leaves absmax transposed, so a reused base would give garbage references).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from server.engine.types import AdapterRef, GenerationRequest, SamplingParams
from server.model.loader import load_base
from server.runtime import Runtime
from server.settings import Settings
from tests.helpers import GreedyPath, chat_prompt, run_requests
from tests.numerics import assert_logits_close, clear_positions, logits_tolerance

PROMPTS = {
    "alpha": "Tell me about the sea.",
    "bravo": "What is your favourite food?",
    "charlie": "Describe a rainy day in the city.",
    None: "Name three colours.",
}


def _ref(runtime: Runtime, name: str | None) -> AdapterRef | None:
    if name is None:
        return None
    persona = runtime.registry.get(name)
    assert persona is not None and persona.adapter_dir is not None and persona.adapter_key
    return AdapterRef(persona.adapter_key, persona.adapter_dir)


def _requests(runtime: Runtime, tag: str) -> list[GenerationRequest]:
    tokenizer = runtime.loaded.tokenizer
    return [
        GenerationRequest(f"{tag}-{name}", chat_prompt(tokenizer, prompt),
                          SamplingParams(max_tokens=12, temperature=0.0), _ref(runtime, name))
        for name, prompt in PROMPTS.items()
    ]


def _check_logits(model: Any, solo: torch.Tensor, other: torch.Tensor, targets: list[int]) -> None:
    """solo, other: (T, vocab) logits predicting `targets`; the module docstring's rule."""
    tolerance = logits_tolerance(model, solo)
    assert_logits_close(other, solo, tolerance)
    clear = clear_positions(solo, tolerance)
    assert torch.equal(other.argmax(-1)[clear], torch.tensor(targets)[clear])


@pytest.fixture(scope="module")
def solo_and_batched(runtime: Runtime) -> tuple[list, list]:
    solo = [run_requests(runtime.engine, [r])[0] for r in _requests(runtime, "solo")]
    batched = run_requests(runtime.engine, _requests(runtime, "mixed"))
    return solo, batched


@pytest.mark.parametrize("strategy", ["auto", "gather", "segments"])
def test_mixed_batch_matches_solo_teacher_forced(runtime: Runtime, solo_and_batched,
                                                 strategy: str) -> None:
    solo, _ = solo_and_batched
    requests = _requests(runtime, "tf")
    sequences = [(list(r.prompt_ids) + s.token_ids[:-1], r.adapter)
                 for r, s in zip(requests, solo, strict=True)]
    runtime.engine.runner.lora_strategy = strategy
    try:
        mixed = runtime.engine.score(sequences)  # one forward, four different slots
    finally:
        runtime.engine.runner.lora_strategy = "auto"
    for (seq, ref), request, result, batched_logits in zip(sequences, requests, solo, mixed,
                                                           strict=True):
        alone = runtime.engine.score([(seq, ref)])[0]
        start = len(request.prompt_ids) - 1
        _check_logits(runtime.loaded.model, alone[start:], batched_logits[start:],
                      result.token_ids)


def test_adapters_change_the_output(solo_and_batched) -> None:
    solo, _ = solo_and_batched
    texts = [s.text for s in solo]
    assert len(set(texts)) == len(texts), texts


def test_free_running_batch_matches_solo(runtime: Runtime, solo_and_batched) -> None:
    """Free-running, the mixed batch gives each row its solo greedy text; on a bfloat16 kernel
    path a near-tie of the solo logits may resolve otherwise (tests/helpers.GreedyPath)."""
    solo, batched = solo_and_batched
    for request, s, b in zip(_requests(runtime, "path"), solo, batched, strict=True):
        path = GreedyPath(runtime.engine, request.prompt_ids, s.token_ids, s.text,
                          request.adapter)
        path.assert_followed_by(b.text)


@pytest.mark.parametrize("name", ["alpha", "bravo", "charlie"])
def test_engine_matches_peft_single_adapter(runtime: Runtime, embedded_settings: Settings,
                                            solo_and_batched, persona_dirs: dict[str, Path],
                                            name: str) -> None:
    from peft import PeftModel

    solo, _ = solo_and_batched
    index = list(PROMPTS).index(name)
    request = _requests(runtime, "peft")[index]
    sequence = list(request.prompt_ids) + solo[index].token_ids[:-1]
    peft_model = PeftModel.from_pretrained(load_base(embedded_settings).model, persona_dirs[name])
    with torch.no_grad():
        expected = peft_model(torch.tensor([sequence])).logits[0].float()
    # the engine scores this row in a batch mixed with the other adapters
    sequences = [(sequence, request.adapter)] + [
        (list(r.prompt_ids), r.adapter) for r in _requests(runtime, "x") if r.adapter != request.adapter]
    ours = runtime.engine.score(sequences)[0]
    start = len(request.prompt_ids) - 1
    _check_logits(runtime.loaded.model, expected[start:], ours[start:], solo[index].token_ids)
