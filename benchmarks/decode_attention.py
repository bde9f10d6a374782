"""Decode rows' attention, compiled for the CPU: SDPA against the one-query form.

    python -m benchmarks.decode_attention

Times `server.engine.attention.attend` (SDPA) eagerly and compiled, and `one_query_attention`
compiled, chained over `--layers` layers as in one engine step (each layer's output is the next
one's query), for each `--rows` x `--context` case: R rows of one query each, the embedded
model's heads (9 query, 3 key/value, 64 wide), float32, a causal mask that hides the last
quarter of the keys. Reports the median of `--repeats` calls per form (after three warm-ups),
and each form's largest difference from eager SDPA. Prints one JSON line last.

It measures attention alone; `benchmarks/runner_step.py` times the whole step.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial

import torch

from benchmarks.timing import median_ms
from server.engine.attention import attend, causal_mask, one_query_attention

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64  # SmolLM2-135M, the embedded model

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float | None,
                      float | None], torch.Tensor]
Layers = Callable[[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor],
                  torch.Tensor]


def chained(attention: Attention) -> Layers:
    """One step's layers: query (R, heads, 1, hd) through every layer's keys and values."""
    def layers(query: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
               mask: torch.Tensor) -> torch.Tensor:
        for k, v in zip(keys, values, strict=True):
            query = attention(query, k, v, mask, None, None)
        return query
    return layers


def case(rows: int, context: int, layers: int) -> tuple[torch.Tensor, list[torch.Tensor],
                                                        list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(rows, HEADS, 1, HEAD_DIM, generator=generator)
    keys = [torch.randn(rows, KV_HEADS, context, HEAD_DIM, generator=generator)
            for _ in range(layers)]
    values = [torch.randn(rows, KV_HEADS, context, HEAD_DIM, generator=generator)
              for _ in range(layers)]
    positions = torch.full((rows, 1), context * 3 // 4)  # (R, 1): the last quarter is hidden
    return query, keys, values, causal_mask(torch.arange(context), positions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8, 16])
    parser.add_argument("--context", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args(argv)
    if len(args.rows) != len(args.context):
        parser.error("--rows and --context pair up: give as many of each")
    forms = {"sdpa_eager": chained(attend),
             "sdpa_compiled": torch.compile(chained(attend), dynamic=True),
             "one_query_compiled": torch.compile(chained(one_query_attention), dynamic=True)}
    results = []
    with torch.inference_mode():
        for rows, context in zip(args.rows, args.context, strict=True):
            inputs = case(rows, context, args.layers)
            reference = forms["sdpa_eager"](*inputs)
            result: dict[str, float | int] = {"rows": rows, "context": context}
            for name, forward in forms.items():
                result[f"{name}_ms"] = round(median_ms(partial(forward, *inputs), args.repeats), 3)
                result[f"{name}_max_diff"] = float((forward(*inputs) - reference).abs().max())
            print(f"{rows} rows x {context} keys, {args.layers} layers: "
                  + ", ".join(f"{name} {result[f'{name}_ms']:.3f} ms" for name in forms))
            results.append(result)
    print(json.dumps({"bench": "decode_attention", "layers": args.layers,
                      "threads": torch.get_num_threads(), "cases": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
