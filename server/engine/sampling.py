"""Next-token choice per row: greedy, temperature, top-k, top-p, min-p, penalties, seeds.

Contract: `sample(logits, params, histories, generators)` returns one token id per row. Greedy
rows take the argmax; the others draw from their own `torch.Generator` (seeded when the request
set a seed), so one row's randomness never depends on which other rows share the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from server.engine.types import SamplingParams


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    histories: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """logits: (B, vocab) float32. Returns B token ids."""
    logits = logits.float()
    choices = logits.argmax(dim=-1).tolist()  # greedy default for every row
    for row, p in enumerate(params):
        row_logits = logits[row]
        if _penalised(p):
            row_logits = apply_penalties(row_logits.clone(), p, histories[row])
            choices[row] = int(row_logits.argmax())
        if not p.greedy:
            choices[row] = _draw(row_logits, p, generators[row])
    return [int(c) for c in choices]


def _penalised(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def apply_penalties(
    logits: torch.Tensor, p: SamplingParams, history: Sequence[int]
) -> torch.Tensor:
    """OpenAI frequency/presence penalties and the CTRL-style repetition penalty, in place."""
    if not history:
        return logits
    ids, counts = torch.tensor(list(history), device=logits.device).unique(return_counts=True)
    if p.repetition_penalty != 1.0:
        seen = logits[ids]
        logits[ids] = torch.where(seen > 0, seen / p.repetition_penalty,
                                  seen * p.repetition_penalty)
    logits[ids] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty
    return logits


def _draw(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> int:
    logits = logits / max(p.temperature, 1e-5)
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.min_p > 0.0:
        probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_probs.cumsum(0) - sorted_probs > p.top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))
