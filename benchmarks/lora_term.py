"""The decode rows' LoRA term alone, compiled for the CPU: distinct adapters against one.

    python -m benchmarks.lora_term

Builds a slot bank (`server.lora.slots.LoraSlots`, stored as `--bank` says: int8 by default, the
compiled int4 step's, or bfloat16, its bank before 2026-12-06) with the embedded model's seven
projections per layer (q/k/v and gate/up fused as the step fuses them, sealed into one storage as
the runner seals it) and random rank-16 adapters in `--adapters` slots (written through
`LoraSlots.write`, as a served adapter is), then times the gathered term the compiled
decode step runs for one-token rows (`LoraGroup.shrink`, `expand`, `lora_delta`), chained over
`--layers` layers, compiled, in two cases from one trace: `--rows` rows spread round-robin over
the adapters, and the same rows all on one adapter (whose matrices then stay in cache). The
difference between the two is what reading the other adapters' bytes costs; `read_gbps` (a sum
over a 100 MB float32 tensor) is this machine's read bandwidth to compare it with. Reports
medians of `--repeats` calls after three warm-ups, the compiled and the eager term's largest
difference from the term computed row by row in float32 from the values the bank holds
(relative to each output's largest value: the path's own rounding), the same from the adapters'
own float32 matrices (`max_rel_diff_vs_adapters`: what storing them as `--bank` costs too), and
one JSON line last.

It measures the LoRA term alone: no base layers, attention or sampling
(`benchmarks/runner_step.py` times the whole step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.random_adapters import random_adapter
from benchmarks.timing import median_ms
from server.lora.adapter import AdapterWeights, ModuleShapes
from server.lora.flat import Resident
from server.lora.slots import LoraSlots, expand, lora_delta

HIDDEN, INTERMEDIATE, KV_WIDTH, LAYERS = 576, 1536, 192, 30  # SmolLM2-135M, the embedded model
RANK = 16
PROJECTIONS = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, KV_WIDTH),
               "v_proj": (HIDDEN, KV_WIDTH), "o_proj": (HIDDEN, HIDDEN),
               "gate_proj": (HIDDEN, INTERMEDIATE), "up_proj": (HIDDEN, INTERMEDIATE),
               "down_proj": (INTERMEDIATE, HIDDEN)}
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
ORDER = [name for group in GROUPS for name in group] + ["o_proj", "down_proj"]
Term = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], list[torch.Tensor]]
Matrices = Callable[[str, int], tuple[torch.Tensor, torch.Tensor]]  # (key, slot) -> A, B


def random_bank(layers: int, adapters: int,
                dtype: torch.dtype) -> tuple[LoraSlots, list[AdapterWeights]]:
    """A sealed bank with a random adapter in every slot but 0 (the base), and the adapters."""
    shapes = ModuleShapes({f"{layer}.{name}": shape for layer in range(layers)
                           for name, shape in PROJECTIONS.items()})
    bank = LoraSlots(shapes, adapters, RANK, dtype, torch.device("cpu"))
    for layer in range(layers):
        for group in GROUPS:
            bank.fuse([f"{layer}.{name}" for name in group])
    bank.seal()
    written = [random_adapter(bank, RANK, seed=slot, std=1 / 8)
               for slot in range(1, adapters + 1)]
    for slot, adapter in enumerate(written, start=1):
        bank.write(slot, adapter)
    return bank, written


def decode_term(bank: LoraSlots, layers: int) -> Term:
    """Every layer's LoRA terms for one-token rows x (B, 1, hidden) and xi (B, 1,
    intermediate), the down projection's input, as the compiled step computes them (reading
    the bank's tensors through `Resident`, as `SlotLinear` does)."""
    def resident(tensors: dict[str, torch.Tensor]) -> dict[str, Resident]:
        return {key: Resident(tensor) for key, tensor in tensors.items()}

    a, b, scales = resident(bank.a), resident(bank.b), resident(bank.scales)

    def scale(key: str) -> torch.Tensor | None:
        return scales[key].get() if key in scales else None

    def term(x: torch.Tensor, xi: torch.Tensor, slots: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for layer in range(layers):
            for group in GROUPS:
                keys = [f"{layer}.{name}" for name in group]
                shrunk = bank.groups[tuple(keys)].shrink(x, slots)  # (B, 1, n * r)
                outputs += [expand(shrunk[..., i * RANK:(i + 1) * RANK], b[key].get(), slots,
                                   scale(key)).to(x.dtype) for i, key in enumerate(keys)]
            for name, rows in (("o_proj", x), ("down_proj", xi)):
                key = f"{layer}.{name}"
                outputs.append(lora_delta(rows, a[key].get(), b[key].get(), slots, scale(key)))
        return outputs
    return term


def held_matrices(bank: LoraSlots) -> Matrices:
    """Each slot's A and B as the values the bank holds (an int8 bank's codes and scales)."""
    def matrices(key: str, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = bank.a[key][slot].float(), bank.b[key][slot].float()  # (r, in), (out, r)
        return a, b * bank.scales[key][slot] if key in bank.scales else b
    return matrices


def adapter_matrices(adapters: list[AdapterWeights]) -> Matrices:
    """Each slot's A and B (scale folded in) as written, in float32."""
    def matrices(key: str, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, scale = adapters[slot - 1].modules[key]
        return a.float(), b.float() * scale
    return matrices


def reference_term(matrices: Matrices, layers: int) -> Term:
    """The same terms in `decode_term`'s order, by definition: per row, in float32,
    x @ A[slot]^T @ B[slot]^T (no gather, no fusion)."""
    def term(x: torch.Tensor, xi: torch.Tensor, slots: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for layer in range(layers):
            for name in ORDER:
                rows = xi if name == "down_proj" else x  # (B, 1, in)
                pairs = [matrices(f"{layer}.{name}", slot) for slot in slots.tolist()]
                outputs.append(torch.stack([row.float() @ a.T @ b.T
                                            for row, (a, b) in zip(rows, pairs, strict=True)]))
        return outputs
    return term


def max_relative_difference(outputs: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest |output - expected| over every output, relative to that output's largest
    expected value."""
    return max(float((o.float() - e).abs().max() / e.abs().max())
               for o, e in zip(outputs, expected, strict=True))


def read_gbps(repeats: int = 10) -> float:
    """This machine's read bandwidth as torch sees it: a float32 sum over 100 MB."""
    data = torch.ones(25_000_000)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - started)
    return data.nbytes / statistics.median(times) / 1e9


def adapter_bytes(bank: LoraSlots) -> int:
    """Bytes of one slot's A, B (and int8 scales) over every module."""
    return sum(t[1].numel() * t.element_size()
               for t in (*bank.a.values(), *bank.b.values(), *bank.scales.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--bank", choices=["int8", "bfloat16"], default="int8")
    args = parser.parse_args(argv)
    bank, adapters = random_bank(args.layers, args.adapters, getattr(torch, args.bank))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.rows, 1, HIDDEN, generator=generator).to(torch.bfloat16)
    xi = torch.randn(args.rows, 1, INTERMEDIATE, generator=generator).to(torch.bfloat16)
    spread = torch.arange(args.rows) % args.adapters + 1  # (B,) round-robin over the adapters
    one = torch.ones(args.rows, dtype=torch.long)  # (B,) every row on slot 1
    eager = decode_term(bank, args.layers)
    compiled = torch.compile(eager, fullgraph=True)
    with torch.inference_mode():
        started = time.perf_counter()
        outputs = compiled(x, xi, spread)
        compile_s = time.perf_counter() - started
        expected = reference_term(held_matrices(bank), args.layers)(x, xi, spread)
        max_diff = max_relative_difference(outputs, expected)
        max_diff_eager = max_relative_difference(eager(x, xi, spread), expected)
        exact = reference_term(adapter_matrices(adapters), args.layers)(x, xi, spread)
        max_diff_adapters = max_relative_difference(outputs, exact)
        distinct_ms = median_ms(lambda: compiled(x, xi, spread), args.repeats)
        one_ms = median_ms(lambda: compiled(x, xi, one), args.repeats)
    per_adapter = adapter_bytes(bank)
    distinct = min(args.rows, args.adapters)
    bandwidth = read_gbps()
    extra_mb = (distinct - 1) * per_adapter / 1e6
    print(f"{args.rows} rows, {args.layers} layers: {distinct} adapters {distinct_ms:.3f} ms, "
          f"one adapter {one_ms:.3f} ms; {extra_mb:.1f} MB more read "
          f"(at {bandwidth:.1f} GB/s: {extra_mb / bandwidth:.2f} ms)")
    print(json.dumps({
        "bench": "lora_term", "bank": args.bank, "rows": args.rows, "adapters": distinct,
        "layers": args.layers,
        "rank": RANK, "threads": torch.get_num_threads(), "compile_s": round(compile_s, 1),
        "distinct_ms": round(distinct_ms, 3), "one_adapter_ms": round(one_ms, 3),
        "adapter_mb": round(per_adapter / 1e6, 3), "read_gbps": round(bandwidth, 1),
        "max_rel_diff": max_diff, "max_rel_diff_eager": max_diff_eager,
        "max_rel_diff_vs_adapters": max_diff_adapters}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
