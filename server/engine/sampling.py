"""Next-token choice per row: greedy, temperature, top-k, top-p, min-p, penalties, seeds, bias.

Contract: `sample(logits, params, histories, generators)` returns one token id per row. Greedy
rows take the argmax; the others draw from their own `torch.Generator` (seeded when the request
set a seed), so one row's randomness never depends on which other rows share the batch.
`apply_logit_bias(logits, params)` adds each row's OpenAI `logit_bias` in place (before the
grammar masks and `sample`). `token_logprobs(logits, tokens, counts)` gives each row's chosen
token's log-probability and its top alternatives, from the logits it is given (the engine gives
the model's own, before any bias, penalty or mask).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from server.engine.types import SamplingParams, TokenLogprob


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


def apply_logit_bias(logits: torch.Tensor, params: Sequence[SamplingParams]) -> None:
    """logits: (B, vocab), changed in place."""
    for row, p in enumerate(params):
        if p.logit_bias:
            ids = torch.tensor([token for token, _ in p.logit_bias], device=logits.device)
            bias = torch.tensor([value for _, value in p.logit_bias], dtype=logits.dtype,
                                device=logits.device)
            logits[row].index_add_(0, ids, bias)


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int],
                   counts: Sequence[int]) -> list[TokenLogprob]:
    """logits: (B, vocab); `tokens[i]` is row i's token, `counts[i]` how many alternatives it
    wants. One device-to-host transfer for the whole batch."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, vocab)
    chosen = logprobs.gather(1, torch.tensor(list(tokens), device=logits.device)[:, None])
    widest = max(counts, default=0)
    top = logprobs.topk(widest, dim=-1) if widest else None  # values, indices: (B, widest)
    chosen_list = chosen[:, 0].tolist()
    values = top.values.tolist() if top is not None else [[] for _ in tokens]
    indices = top.indices.tolist() if top is not None else [[] for _ in tokens]
    return [TokenLogprob(token, logprob, tuple(zip(ids[:n], vals[:n], strict=True)))
            for token, logprob, ids, vals, n in zip(tokens, chosen_list, indices, values, counts,
                                                     strict=True)]
