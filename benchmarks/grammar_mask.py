"""Per-token cost of constrained decoding on this CPU: llguidance against xgrammar.

For each library and grammar (free JSON, a JSON schema with nested objects, arrays and enums),
with the embedded model's tokenizer (49,152 tokens): the time to compile the grammar, to create
a matcher (where llguidance does most of its compiling), and, per generated token, to compute
the allowed-token mask and advance the matcher along a real valid document tokenized by the
model's tokenizer. Masks are applied to a (1, vocab) logits tensor in both cases, as the engine
does.

Run: python -m benchmarks.grammar_mask [--repeats 20]
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "mood": {"enum": ["happy", "grumpy", "curious"]},
        "pets": {"type": "array", "items": {
            "type": "object",
            "properties": {"kind": {"type": "string"}, "legs": {"type": "integer"}},
            "required": ["kind", "legs"], "additionalProperties": False}},
    },
    "required": ["name", "age", "mood", "pets"],
    "additionalProperties": False,
}
DOCUMENT = json.dumps({"name": "Captain Bones", "age": 52, "mood": "grumpy",
                       "pets": [{"kind": "parrot", "legs": 2}, {"kind": "crab", "legs": 10}]})


def _llguidance(tokenizer: Any, vocab: int) -> tuple[Callable[[dict[str, Any] | None], Any],
                                                     Callable[[Any, list[int]], tuple[float, float]]]:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)

    def compile_(schema: dict[str, Any] | None) -> Any:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema or {"type": "object"}),
            defaults={"whitespace_flexible": True})
        return grammar

    def run(grammar: Any, tokens: list[int]) -> tuple[float, float]:
        start = time.perf_counter()
        matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
        created = time.perf_counter() - start
        bitmask = llguidance.torch.allocate_token_bitmask(1, ll_tokenizer.vocab_size)
        logits = torch.zeros(1, vocab)
        start = time.perf_counter()
        for token in tokens:
            llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)
            llguidance.torch.apply_token_bitmask_inplace(logits, bitmask)
            assert matcher.consume_token(token), matcher.get_error()
        return created, (time.perf_counter() - start) / len(tokens)

    return compile_, run


def _xgrammar(tokenizer: Any, vocab: int) -> tuple[Callable[[dict[str, Any] | None], Any],
                                                   Callable[[Any, list[int]], tuple[float, float]]]:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)

    def compile_(schema: dict[str, Any] | None) -> Any:
        if schema is None:
            return compiler.compile_builtin_json_grammar()
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=True)

    def run(compiled: Any, tokens: list[int]) -> tuple[float, float]:
        start = time.perf_counter()
        matcher = xgr.GrammarMatcher(compiled)
        created = time.perf_counter() - start
        bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
        logits = torch.zeros(1, vocab)
        start = time.perf_counter()
        for token in tokens:
            matcher.fill_next_token_bitmask(bitmask, 0)
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            assert matcher.accept_token(token)
        return created, (time.perf_counter() - start) / len(tokens)

    return compile_, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from server.model.embedded import ensure_converted
    from server.settings import default_cache_dir

    tokenizer = AutoTokenizer.from_pretrained(ensure_converted(default_cache_dir()))
    vocab = len(tokenizer)
    tokens = tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"]
    results: dict[str, Any] = {"vocab": vocab, "document_tokens": len(tokens)}
    for library, build in (("llguidance", _llguidance), ("xgrammar", _xgrammar)):
        compile_, run = build(tokenizer, vocab)
        for grammar_name, schema in (("json_object", None), ("json_schema", SCHEMA)):
            start = time.perf_counter()
            grammar = compile_(schema)
            compile_ms = (time.perf_counter() - start) * 1000
            if grammar_name == "json_object":
                doc_tokens = tokenizer('{"a": [1, 2, {"b": "c"}], "d": true}',
                                       add_special_tokens=False)["input_ids"]
            else:
                doc_tokens = tokens
            runs = [run(grammar, doc_tokens) for _ in range(args.repeats)]
            per_token = [t for _, t in runs]
            key = f"{library}.{grammar_name}"
            results[key] = {"compile_ms": round(compile_ms, 2),
                            "matcher_ms_max": round(max(c for c, _ in runs) * 1000, 2),
                            "mask_us_per_token_median": round(statistics.median(per_token) * 1e6, 1),
                            "mask_us_per_token_max": round(max(per_token) * 1e6, 1)}
            print(f"{key:24s} compile {compile_ms:6.1f} ms, matcher <= "
                  f"{results[key]['matcher_ms_max']:6.1f} ms, mask+advance "
                  f"{results[key]['mask_us_per_token_median']:8.1f} us/token (median of "
                  f"{args.repeats})", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
