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

from server.composition import Cameo
from server.engine.types import AdapterRef, GenerationRequest, SamplingParams
from server.model.loader import load_base
from server.model.weight_only import with_peft_layers
from server.settings import Settings
from tests.helpers import GreedyPath, chat_prompt, run_requests
from tests.numerics import assert_logits_close, clear_positions, logits_tolerance
from tests.scoring import EngineProbe

PROMPTS = {
    "alpha": "Tell me about the sea.",
    "bravo": "What is your favourite food?",
    "charlie": "Describe a rainy day in the city.",
    None: "Name three colours.",
}


def _ref(cameo: Cameo, name: str | None) -> AdapterRef | None:
    if name is None:
        return None
    persona = cameo.registry.get(name)
    assert persona is not None and persona.adapter is not None
    return persona.adapter


def _requests(cameo: Cameo, tag: str) -> list[GenerationRequest]:
    tokenizer = cameo.base.tokenizer
    return [
        GenerationRequest(f"{tag}-{name}", chat_prompt(tokenizer, prompt),
                          SamplingParams(max_tokens=12, temperature=0.0), _ref(cameo, name))
        for name, prompt in PROMPTS.items()
    ]


def _check_logits(model: Any, solo: torch.Tensor, other: torch.Tensor, targets: list[int]) -> None:
    """solo, other: (T, vocab) logits predicting `targets`; the module docstring's rule."""
    tolerance = logits_tolerance(model, solo)
    assert_logits_close(other, solo, tolerance)
    clear = clear_positions(solo, tolerance)
    assert torch.equal(other.argmax(-1)[clear], torch.tensor(targets)[clear])


@pytest.fixture(scope="module")
def solo_and_batched(cameo: Cameo) -> tuple[list, list]:
    solo = [run_requests(EngineProbe.of(cameo), [r])[0] for r in _requests(cameo, "solo")]
    batched = run_requests(EngineProbe.of(cameo), _requests(cameo, "mixed"))
    return solo, batched


@pytest.mark.parametrize("strategy", ["auto", "gather", "segments"])
def test_mixed_batch_matches_solo_teacher_forced(cameo: Cameo, solo_and_batched,
                                                 strategy: str) -> None:
    solo, _ = solo_and_batched
    requests = _requests(cameo, "tf")
    sequences = [(list(r.prompt_ids) + s.token_ids[:-1], r.adapter)
                 for r, s in zip(requests, solo, strict=True)]
    EngineProbe.of(cameo).runner.lora_strategy = strategy
    try:
        mixed = EngineProbe.of(cameo).score(sequences)  # one forward, four different slots
    finally:
        EngineProbe.of(cameo).runner.lora_strategy = "auto"
    for (seq, ref), request, result, batched_logits in zip(sequences, requests, solo, mixed,
                                                           strict=True):
        alone = EngineProbe.of(cameo).score([(seq, ref)])[0]
        start = len(request.prompt_ids) - 1
        _check_logits(EngineProbe.of(cameo).model, alone[start:], batched_logits[start:],
                      result.token_ids)


def test_adapters_change_the_output(solo_and_batched) -> None:
    solo, _ = solo_and_batched
    texts = [s.text for s in solo]
    assert len(set(texts)) == len(texts), texts


def test_free_running_batch_matches_solo(cameo: Cameo, solo_and_batched) -> None:
    """Free-running, the mixed batch gives each row its solo greedy text; on a bfloat16 kernel
    path a near-tie of the solo logits may resolve otherwise (tests/helpers.GreedyPath)."""
    solo, batched = solo_and_batched
    for request, s, b in zip(_requests(cameo, "path"), solo, batched, strict=True):
        path = GreedyPath(EngineProbe.of(cameo), request.prompt_ids, s.token_ids, s.text,
                          request.adapter)
        path.assert_followed_by(b.text)


@pytest.mark.parametrize("name", ["alpha", "bravo", "charlie"])
def test_engine_matches_peft_single_adapter(cameo: Cameo, embedded_settings: Settings,
                                            solo_and_batched, persona_dirs: dict[str, Path],
                                            name: str) -> None:
    from peft import LoraConfig, PeftModel

    solo, _ = solo_and_batched
    index = list(PROMPTS).index(name)
    request = _requests(cameo, "peft")[index]
    sequence = list(request.prompt_ids) + solo[index].token_ids[:-1]
    config = with_peft_layers(LoraConfig.from_pretrained(persona_dirs[name]))  # int4 layers too
    peft_model = PeftModel.from_pretrained(load_base(embedded_settings).model, persona_dirs[name],
                                           config=config)
    with torch.no_grad():
        expected = peft_model(torch.tensor([sequence])).logits[0].float()
    # the engine scores this row in a batch mixed with the other adapters
    sequences = [(sequence, request.adapter)] + [
        (list(r.prompt_ids), r.adapter) for r in _requests(cameo, "x") if r.adapter != request.adapter]
    ours = EngineProbe.of(cameo).score(sequences)[0]
    start = len(request.prompt_ids) - 1
    _check_logits(EngineProbe.of(cameo).model, expected[start:], ours[start:], solo[index].token_ids)
