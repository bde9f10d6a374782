"""Per-row sampling: seeds reproduce, filters restrict, greedy is the argmax."""

from __future__ import annotations

import torch

from server.engine.sampling import apply_penalties, sample
from server.engine.types import SamplingParams


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_seeded_rows_reproduce_regardless_of_batch() -> None:
    logits = torch.randn(3, 50)
    p = SamplingParams(max_tokens=1, temperature=1.0)
    together = sample(logits, [p] * 3, [[]] * 3, [_gen(7), _gen(8), _gen(9)])
    alone = sample(logits[1:2], [p], [[]], [_gen(8)])
    assert together[1] == alone[0]


def test_greedy_and_top_k_one_take_the_argmax() -> None:
    logits = torch.randn(2, 50)
    greedy = SamplingParams(max_tokens=1, temperature=0.0)
    top1 = SamplingParams(max_tokens=1, temperature=1.5, top_k=1)
    assert sample(logits, [greedy, top1], [[], []], [None, _gen(1)]) == logits.argmax(-1).tolist()


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.tensor([[5.0, 4.9, -5.0, -5.0, -5.0]])
    p = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5)
    draws = {sample(logits, [p], [[]], [_gen(s)])[0] for s in range(40)}
    assert draws <= {0, 1} and draws


def test_min_p_drops_unlikely_tokens() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0, 0.0]])
    p = SamplingParams(max_tokens=1, temperature=1.0, min_p=0.5)
    draws = {sample(logits, [p], [[]], [_gen(s)])[0] for s in range(40)}
    assert draws == {0, 1}


def test_penalties_lower_repeated_tokens() -> None:
    logits = torch.tensor([2.0, 1.0, -1.0])
    p = SamplingParams(max_tokens=1, frequency_penalty=0.5, presence_penalty=0.25,
                       repetition_penalty=2.0)
    out = apply_penalties(logits.clone(), p, [0, 0, 2])
    assert torch.allclose(out, torch.tensor([2.0 / 2 - 1.0 - 0.25, 1.0, -1.0 * 2 - 0.5 - 0.25]))
