"""A request's sampling fields into the engine's `SamplingParams`, one per choice.

Contract: `sampling_params` resolves each knob as the request value, else the persona card's
default, else OpenAI's default. `check_room` checks the generated-token limit against the room
the prompt leaves (400 `context_length_exceeded`). `logit_bias` keys must be token ids inside
the vocabulary (`vocab_size`: the tokenizer's, within the model's logits) and values within
-100..100 (400 naming `logit_bias`). `per_choice` gives choice i the seed `seed + i` (wrapped
into the seed range), so that a seeded request with `n` > 1 reproduces choice by choice.

It does not decide `max_tokens` defaults (each route passes its own) nor check the fields
Cameo refuses outright (`server.api.checks`).
"""

from __future__ import annotations

import dataclasses

from server.api.errors import APIError, clip
from server.api.schemas import SamplingFields
from server.composition import Cameo
from server.engine.types import SamplingParams
from server.registry.personas import Persona

SEED_LOW, SEED_SPAN = -(2**63), 2**64 + 2**63  # torch.manual_seed's range: [-2**63, 2**64)


def vocab_size(cameo: Cameo) -> int:
    """How many token ids a request may name: the tokenizer's, within the model's logits."""
    return min(len(cameo.base.tokenizer), cameo.base.vocab_size)


def check_room(cameo: Cameo, prompt_len: int, requested: int | None, param: str) -> int:
    """Tokens left after the prompt; 400 when the prompt and `requested` do not fit."""
    room = cameo.max_context - prompt_len
    if room <= 0 or (requested is not None and requested > room):
        asked = requested or 1
        raise APIError(
            400,
            f"this model's maximum context length is {cameo.max_context} tokens; the prompt "
            f"takes {prompt_len} and {asked} more were requested",
            param=param, code="context_length_exceeded")
    return room


# A prompt-only persona (a card with no adapter, e.g. an imported SillyTavern card) on a small
# base rambles at OpenAI's defaults (temperature 1, no penalty); below the card's own values it
# gets these. Measured on the embedded base (benchmarks/card_defaults.py, docs/BENCHMARKS.md):
# 4 of 8 replies ended on their own at OpenAI's defaults (mean 280 tokens), 8 of 8 with these
# (mean 49), with 94% distinct words against 70%.
PROMPT_ONLY_DEFAULTS: dict[str, float] = {
    "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.15, "max_tokens": 200}


def card_defaults(persona: Persona | None) -> dict[str, float]:
    """The sampling defaults a persona's requests start from (the request overrides them)."""
    if persona is None:
        return {}
    if persona.adapter is None:
        return {**PROMPT_ONLY_DEFAULTS, **persona.card.sampling}
    return dict(persona.card.sampling)


def sampling_params(body: SamplingFields, persona: Persona | None, cameo: Cameo, *,
                    max_tokens: int, logprobs: int | None = None,
                    prompt_logprobs: int | None = None) -> SamplingParams:
    """Request values first, then the persona's defaults (`card_defaults`), then OpenAI's."""
    defaults = card_defaults(persona)

    def pick(value: float | None, key: str, fallback: float) -> float:
        return value if value is not None else defaults.get(key, fallback)

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=pick(body.temperature, "temperature", 1.0),
        top_p=pick(body.top_p, "top_p", 1.0),
        top_k=max(int(pick(body.top_k, "top_k", 0)), 0),
        min_p=pick(body.min_p, "min_p", 0.0),
        seed=body.seed,
        stop=body.stop_strings(),
        ignore_eos=body.ignore_eos,
        repetition_penalty=pick(body.repetition_penalty, "repetition_penalty", 1.0),
        frequency_penalty=pick(body.frequency_penalty, "frequency_penalty", 0.0),
        presence_penalty=pick(body.presence_penalty, "presence_penalty", 0.0),
        logit_bias=logit_bias(body.logit_bias, vocab_size(cameo)),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def logit_bias(bias: dict[str, float] | None, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """`{"token id": bias}` as (id, bias) pairs, each key an id below `vocab_size`."""
    pairs: list[tuple[int, float]] = []
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(400, f"logit_bias: {clip(key)!r} is not a token id", param="logit_bias",
                           code="invalid_value") from None
        if not 0 <= token < vocab_size:
            raise APIError(400, f"logit_bias: token id {token} is outside the vocabulary "
                           f"(0..{vocab_size - 1})", param="logit_bias", code="invalid_value")
        if not -100.0 <= value <= 100.0:
            raise APIError(400, f"logit_bias: the bias of token {token} must be within "
                           "-100..100", param="logit_bias", code="invalid_value")
        pairs.append((token, float(value)))
    return tuple(pairs)


def per_choice(params: SamplingParams, n: int) -> list[SamplingParams]:
    """One `SamplingParams` per choice; with a seed, choice i draws from `seed + i`."""
    if params.seed is None:
        return [params] * n
    return [dataclasses.replace(params, seed=_wrap(params.seed + i)) for i in range(n)]


def _wrap(seed: int) -> int:
    return (seed - SEED_LOW) % SEED_SPAN + SEED_LOW
