"""One decode forward of the runner alone: no engine, no sampling, no detokenizing.

    python -m benchmarks.runner_step --quantization nf4 --batch 16

The embedded model; `--batch` rows are prefilled with `--prompt` random tokens, then `--steps`
decode forwards are timed one by one (after five warm-up steps) and the median is reported, so a
comparison of two versions of the runner (run this in each checkout, alternating) is not blurred
by the engine around it. `--compile` compiles the decode step first (at load, untimed).
`--threads` says which threads load and time it (`engine`: as the
server does; server/composition.py says why it matters). `--profile N` also prints
torch.profiler's table of the N costliest operators over five more forwards of the kind timed.
`--compare-guards` (with `--compile`) times the compiled step in alternating rounds called
directly (what the server runs once `compile()` has traced every kind; server/engine/step.py)
and called through dynamo, which checks its full guards, and reports both medians.
`--perf` (Linux `perf` on PATH) samples every thread over `max(--steps, 100)` more forwards
and prints where their time goes (`benchmarks/cpu_breakdown.py`): for the thread that runs the
step, in ms per forward (its share of samples times the median, since it is busy for the whole
forward); for the others (OpenMP's), as percentages of their own samples.
`--against-base` (with `--adapters`) times the decode forward in alternating rounds with the rows
on their adapters and on the base alone (one process, one compiled step: the mixed/base ratio
without the drift between runs).
`--prefill` times the prompt forward instead: every row's `--prompt` tokens in one step, each
row a chunk on its own slot, rewritten from position 0 each time. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from benchmarks import cpu_breakdown
from benchmarks.random_adapters import fill
from server.composition import in_passing_thread
from server.engine import attention
from server.engine.build import bank_dtype
from server.engine.runner import ForwardBatch, ModelRunner, module_shapes
from server.lora.slots import LoraSlots
from server.model import weight_only
from server.model.loader import load_base
from server.settings import Settings

T = TypeVar("T")

THREADS = {
    "main": "load and time on the main thread",
    "engine": "load on a thread that ends, time on a worker thread (what the server does)",
    "engine-after-main": "load on the main thread, time on a worker thread (the server before)",
}


class Forward(Protocol):
    """One forward of the benchmark's rows: `tokens` (B, T) from position `start`, on their
    adapters or (`on_base`) all on the base."""

    def __call__(self, tokens: torch.Tensor, start: int, on_base: bool = False) -> None: ...


def build(args: argparse.Namespace) -> tuple[Forward, ModelRunner]:
    """Load the base and a runner; returns forward(tokens (B, T), start position) and the
    runner."""
    loaded = load_base(Settings(device="cpu", quantization=args.quantization,
                                int_kernels=args.int_kernels))
    dtype = bank_dtype(loaded, args.compile, args.bank)
    bank = LoraSlots(module_shapes(loaded.model), max(1, args.adapters), 16, dtype,
                     torch.device("cpu"))
    fill(bank, args.adapters, rank=16, std=0.02)
    slots = [row % args.adapters + 1 for row in range(args.batch)] if args.adapters else None
    steps = args.steps * (2 if args.compare_guards or args.against_base else 1)
    context = args.prompt + steps + 8 + (5 if args.profile else 0)
    runner = ModelRunner(loaded.model, bank, args.batch, context, loaded.dtype, loaded.device,
                         compile=args.compile)
    rows = list(range(args.batch))

    def forward(tokens: torch.Tensor, start: int, on_base: bool = False) -> None:
        runner.forward(ForwardBatch(tokens.tolist(), rows, [start] * args.batch,
                                    None if on_base else slots))

    forward(torch.randint(100, 5000, (args.batch, args.prompt)), 0)
    return forward, runner


def one_forward(forward: Forward, args: argparse.Namespace, index: int) -> None:
    """The forward being measured: every row's prompt (`--prefill`, from position 0), or one
    decode token per row at position `--prompt` + `index`."""
    if args.prefill:
        forward(torch.randint(100, 5000, (args.batch, args.prompt)), 0)
    else:
        forward(torch.randint(100, 5000, (args.batch, 1)), args.prompt + index)


def measure(forward: Forward, args: argparse.Namespace) -> float:
    """The median decode (or `--prefill`) forward in ms (after five warm-ups); prints the
    profile if asked."""
    def one(index: int) -> None:
        one_forward(forward, args, index)

    times = []
    for index in range(args.steps + 5):
        start = time.perf_counter()
        one(index)
        if index >= 5:
            times.append(time.perf_counter() - start)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for index in range(args.steps + 5, args.steps + 10):
                one(index)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    return 1000 * statistics.median(times)


def perf_breakdown(forward: Forward, args: argparse.Namespace,
                   median_ms: float) -> dict[str, dict[str, float]]:
    """Where the forward's time goes, over `max(--steps, 100)` more forwards sampled by perf:
    `step`, the thread that runs the step (busy for the whole forward), in ms per forward (its
    share of each `cpu_breakdown` category times `median_ms`); every other thread that was
    sampled, as the percentage of its own samples in each category."""
    with cpu_breakdown.Recording(os.getpid()) as recording:
        for _ in range(max(args.steps, 100)):
            one_forward(forward, args, 0)  # one position rewritten: the context does not grow
    report = recording.report()
    if args.perf_report is not None:
        args.perf_report.write_text(report)
    shares = cpu_breakdown.thread_shares(report)
    # the step's thread is the one that runs its Python: the most host time
    step, *others = sorted(shares, key=lambda thread: -shares[thread]["host"])
    result = {"step": {name: share * median_ms for name, share in shares[step].items()}}
    result.update({f"thread {thread} (%)": {name: 100 * share
                                            for name, share in shares[thread].items()}
                   for thread in others})
    return result


def alternate(run: Callable[[str, int], None], modes: tuple[str, str], steps: int,
              rounds: int) -> dict[str, float]:
    """Median ms of `run(mode, index)` per mode: five warm-ups, then 2 * `steps` forwards in
    `rounds` alternating rounds (so both modes see the same machine); `index` counts every
    forward from 0, warm-ups included."""
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for index in range(5 + 2 * steps):
        mode = modes[(max(0, index - 5) * rounds // (2 * steps)) % 2]
        start = time.perf_counter()
        run(mode, index)
        if index >= 5:
            times[mode].append(time.perf_counter() - start)
    return {mode: 1000 * statistics.median(values) for mode, values in times.items()}


def compare_guards(forward: Forward, runner: ModelRunner, args: argparse.Namespace,
                   rounds: int = 8) -> dict[str, float]:
    """Median decode forward in ms with the step's graph called directly (as the engine does)
    and through dynamo, which checks its full guards (server.engine.step)."""
    def run(mode: str, index: int) -> None:
        runner.step.direct = mode == "direct"
        forward(torch.randint(100, 5000, (args.batch, 1)), args.prompt + index)
    medians = alternate(run, ("direct", "full"), args.steps, rounds)
    runner.step.direct = True
    return medians


def against_base(forward: Forward, args: argparse.Namespace, rounds: int = 8) -> dict[str, float]:
    """Median decode forward in ms with every row on its adapter and with every row on the
    base."""
    def run(mode: str, index: int) -> None:
        forward(torch.randint(100, 5000, (args.batch, 1)), args.prompt + index,
                on_base=mode == "base")
    return alternate(run, ("adapters", "base"), args.steps, rounds)


def _here(fn: Callable[[], T]) -> T:
    return fn()


def on_worker(fn: Callable[[], T]) -> T:
    result: list[T] = []
    worker = threading.Thread(target=lambda: result.append(fn()), name="runner-step")
    worker.start()
    worker.join()
    return result[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", choices=["int4", "nf4", "none"], default="int4")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--adapters", type=int, default=0,
                        help="random rank-16 adapters in that many slots, rows round-robin")
    parser.add_argument("--compile", action="store_true",
                        help="compile the decode step (server.engine.step)")
    parser.add_argument("--threads", choices=list(THREADS), default="main",
                        help="; ".join(f"{k}: {v}" for k, v in THREADS.items()))
    parser.add_argument("--compare-guards", action="store_true",
                        help="with --compile: the step's graph called directly against through "
                             "dynamo's guards")
    parser.add_argument("--bank", choices=["auto", "float32", "bfloat16", "int8"],
                        default="auto", help="how the adapters are stored (auto: what the "
                        "server picks, server.engine.build.bank_dtype; before 2026-12-06 "
                        "`--float32-bank` was `--bank float32`)")
    parser.add_argument("--int-kernels", choices=["auto", "cameo", "torch"], default="auto",
                        help="the int4 base's kernels (Settings.int_kernels)")
    parser.add_argument("--against-base", action="store_true",
                        help="with --adapters: alternate rounds on the adapters and on the base "
                             "alone, and report both medians and their ratio")
    parser.add_argument("--sdpa-decode", action="store_true",
                        help="with --compile: decoding rows attend through SDPA, not "
                             "attention.one_query_attention")
    parser.add_argument("--perf", action="store_true",
                        help="also sample every thread with Linux perf and print where the "
                             "forward's time goes (benchmarks/cpu_breakdown.py)")
    parser.add_argument("--perf-report", type=Path, metavar="PATH",
                        help="with --perf: also write perf's report (every thread's samples "
                             "by library and symbol) to PATH")
    parser.add_argument("--prefill", action="store_true",
                        help="time the prompt forward (--batch chunks of --prompt tokens)")
    args = parser.parse_args(argv)
    attention.ONE_QUERY_ON_CPU = not args.sdpa_decode
    if args.compare_guards and not args.compile:
        parser.error("--compare-guards needs --compile")
    if args.prefill and (args.compare_guards or args.against_base):
        parser.error("--compare-guards and --against-base time decode forwards")
    if args.against_base and (not args.adapters or args.compare_guards):
        parser.error("--against-base needs --adapters, and not --compare-guards")
    forward, runner = in_passing_thread(lambda: build(args)) if args.threads == "engine" \
        else build(args)
    timed = on_worker if args.threads != "main" else _here
    guards: dict[str, float] | None = None
    base: dict[str, float] | None = None
    if args.against_base:
        base = timed(lambda: against_base(forward, args))
        median_ms = base["adapters"]
    elif args.compare_guards:
        guards = timed(lambda: compare_guards(forward, runner, args))
        median_ms = guards["direct"]
    else:
        median_ms = timed(lambda: measure(forward, args))
    breakdown = timed(lambda: perf_breakdown(forward, args, median_ms)) if args.perf else None
    for thread, values in (breakdown or {}).items():
        print(f"{thread}: " + ", ".join(f"{name} {value:.2f}" for name, value in values.items()))
    print(f"{args.quantization} batch {args.batch}, {args.adapters} adapters, threads "
          f"{args.threads}, compile {args.compile}: median "
          f"{'prefill' if args.prefill else 'decode'} forward {median_ms:.1f} ms"
          + (f" (full guards {guards['full']:.1f} ms)" if guards else "")
          + (f" (base alone {base['base']:.1f} ms: ratio {base['base'] / median_ms:.3f})"
             if base else ""))
    print(json.dumps({"bench": "runner_step", "quantization": args.quantization,
                      "compile": args.compile,
                      "batch": args.batch, "adapters": args.adapters, "steps": args.steps,
                      "forward": "prefill" if args.prefill else "decode", "prompt": args.prompt,
                      "threads": args.threads, "median_ms": median_ms,
                      "bank_dtype": _dtype_name(next(iter(runner.linears.values())).a.dtype),
                      "int_kernels": (weight_only.choose_kernel(args.int_kernels)
                                      if args.quantization == "int4" else None),
                      "decode_attention": "sdpa" if args.sdpa_decode else "one_query",
                      "full_guards_median_ms": guards["full"] if guards else None,
                      "base_median_ms": base["base"] if base else None,
                      "base_over_adapters": base["base"] / median_ms if base else None,
                      "perf_ms": breakdown,
                      "intra_op_threads": torch.get_num_threads()}))
    return 0


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


if __name__ == "__main__":
    raise SystemExit(main())
