"""A request's state on the engine beside the scheduler's bookkeeping, built when it arrives.

Contract: `RowState.start(...)` checks what can be checked before a request takes a row (its
prompt fits the context, its seed seeds a generator on the logits' device, its grammar
compiles and accepts the tokens a resumed request already generated) and returns its output
state, generator and grammar matcher; a request that cannot run raises `Refused` with the
`ErrorCode` its output will carry, so it fails at once and alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from server.engine.constraints import GrammarError, Grammars, RowGrammar
from server.engine.output import RowOutput, Sink
from server.engine.types import ErrorCode, GenerationRequest
from server.errors import CameoError


class Refused(CameoError):
    code: ErrorCode

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message, code=code)


@dataclass
class RowState:
    out: RowOutput
    generator: torch.Generator | None
    grammar: RowGrammar | None

    @classmethod
    def start(cls, request: GenerationRequest, sink: Sink, tokenizer: object,
              device: torch.device, max_context: int,
              grammars: Callable[[], Grammars]) -> RowState:
        check_prompt(request, max_context)
        return cls(RowOutput.start(request, sink, tokenizer), generator(request, device),
                   grammar(request, grammars))


def check_prompt(request: GenerationRequest, max_context: int) -> None:
    if not request.prompt_ids or len(request.prompt_ids) >= max_context:
        raise Refused(f"the prompt has {len(request.prompt_ids)} tokens; the context holds "
                      f"{max_context}", "context_length_exceeded")


def generator(request: GenerationRequest, device: torch.device) -> torch.Generator | None:
    """The request's own sampling generator, on the device the logits live on."""
    if request.sampling.seed is None:
        return None
    try:
        return torch.Generator(device=device).manual_seed(request.sampling.seed)
    except (RuntimeError, ValueError, OverflowError) as exc:  # a seed out of range
        raise Refused(f"invalid seed: {exc}", "invalid_seed") from exc


def grammar(request: GenerationRequest, grammars: Callable[[], Grammars]) -> RowGrammar | None:
    spec = request.sampling.grammar
    if spec is None:
        return None
    try:
        row = grammars().row(spec)
        for token in request.sampling.grammar_consumed:  # a resumed request: where it was
            if not row.accept(token):
                raise GrammarError("the tokens generated before the resumption break the grammar")
    except GrammarError as exc:
        raise Refused(f"invalid grammar: {exc.message}", "invalid_grammar") from exc
    return row
