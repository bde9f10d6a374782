"""Constrained decoding: a grammar per request, a matcher per row, masks applied in the sampler.

Contract:
- A request asks for a grammar with a `GrammarSpec` (plain data: it crosses processes):
  `json_object` (any JSON object), `json_schema` (the schema as JSON text), `regex`, or
  `structural_tag` (xgrammar's structural tag JSON: free text with triggered, constrained
  segments, which tool calls use).
- `Grammars(tokenizer, vocab_size)` compiles specs with xgrammar (measured against llguidance
  on this project's CPU: benchmarks/grammar_mask.py, docs/BENCHMARKS.md) and keeps the compiled
  grammars in an LRU, so the API compiles a request's grammar once, off the engine thread, to
  refuse one it cannot compile (`GrammarError`, a 400 naming the parameter), and the engine
  finds it compiled. A miss on the engine side (another process) compiles there.
- `RowGrammar` is one row's matcher: `mask_into(bitmask, i)` writes the allowed next tokens,
  `accept(token)` advances (False: the token broke the grammar), `done` once the grammar is
  complete and nothing more may follow.
- `Grammars.apply(logits, rows)` fills one (B, ceil(V/32)) bitmask for the constrained rows
  and applies it to the logits in place, on the logits' device; rows without a grammar are
  left untouched.

This module does not pick tokens (`sampling`) and does not know about tools or
`response_format` (the API turns those into specs).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from server.errors import CameoError

GrammarKind = Literal["json_object", "json_schema", "regex", "structural_tag"]
CACHE_SIZE = 128


@dataclass(frozen=True)
class GrammarSpec:
    kind: GrammarKind
    source: str = ""  # the schema, regex or structural tag, as text
    strict: bool = True  # json_schema: refuse properties the schema does not list


class GrammarError(CameoError, ValueError):
    """A grammar the library cannot compile; `message` says why in the library's words."""

    code = "invalid_grammar"


class Grammars:
    """Compiled grammars for one tokenizer, cached by spec (thread-safe)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self._info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids))
        self._compiler = xgr.GrammarCompiler(self._info, max_threads=2, cache_enabled=False)
        self._cache: OrderedDict[GrammarSpec, Any] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, spec: GrammarSpec) -> Any:
        """The compiled grammar of `spec`; raises GrammarError when it cannot be compiled."""
        with self._lock:
            if spec in self._cache:
                self._cache.move_to_end(spec)
                return self._cache[spec]
        compiled = self._compile(spec)
        with self._lock:
            self._cache[spec] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def row(self, spec: GrammarSpec) -> RowGrammar:
        return RowGrammar(self._xgr.GrammarMatcher(self.compile(spec)))

    def apply(self, logits: torch.Tensor, rows: Sequence[RowGrammar | None]) -> None:
        """logits: (B, vocab), changed in place: tokens a row's grammar forbids get -inf."""
        constrained = [i for i, row in enumerate(rows) if row is not None]
        if not constrained:
            return
        bitmask = self._xgr.allocate_token_bitmask(logits.shape[0], self._info.vocab_size)
        for index in constrained:  # bitmask: (B, ceil(V / 32)) int32, one bit per token
            rows[index].mask_into(bitmask, index)  # type: ignore[union-attr]
        self._xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device),
                                              indices=constrained)

    def _compile(self, spec: GrammarSpec) -> Any:
        compiler = self._compiler
        try:
            if spec.kind == "json_object":
                return compiler.compile_json_schema('{"type": "object"}', any_whitespace=True)
            if spec.kind == "json_schema":
                schema = json.loads(spec.source)
                if not isinstance(schema, dict):
                    raise GrammarError("the JSON schema must be an object")
                return compiler.compile_json_schema(json.dumps(schema), any_whitespace=True,
                                                    strict_mode=spec.strict)
            if spec.kind == "regex":
                return compiler.compile_regex(spec.source)
            return compiler.compile_structural_tag(spec.source)
        except GrammarError:
            raise
        except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's own errors
            raise GrammarError(_library_message(exc)) from exc


def _library_message(exc: Exception) -> str:
    """xgrammar's message without its log prefix ("[12:00:00] /project/cpp/x.cc:42: ")."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0])[:500]


class RowGrammar:
    """One row's position in its grammar."""

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher

    def mask_into(self, bitmask: torch.Tensor, index: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, index)

    def accept(self, token: int) -> bool:
        return bool(self._matcher.accept_token(token))

    @property
    def done(self) -> bool:
        return bool(self._matcher.is_terminated())
