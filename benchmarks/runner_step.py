"""One decode forward of the runner alone: no engine, no sampling, no detokenizing.

    python -m benchmarks.runner_step --quantization nf4 --batch 16

The embedded model; `--batch` rows are prefilled with `--prompt` random tokens, then `--steps`
decode forwards are timed one by one (after five warm-up steps) and the median is reported, so a
comparison of two versions of the runner (run this in each checkout, alternating) is not blurred
by the engine around it. `--compile` compiles the decode step first (at load, untimed).
`--threads` says which threads load and time it (`engine`: as the
server does; server/composition.py says why it matters). `--profile N` also prints
torch.profiler's table of the N costliest operators over five more decode forwards. Prints one
JSON line last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable

import torch

from server.composition import in_passing_thread
from server.engine.runner import ForwardBatch, ModelRunner, module_shapes
from server.lora.slots import LoraSlots
from server.model.loader import load_base
from server.settings import Settings

THREADS = {
    "main": "load and time on the main thread",
    "engine": "load on a thread that ends, time on a worker thread (what the server does)",
    "engine-after-main": "load on the main thread, time on a worker thread (the server before)",
}


def build(args: argparse.Namespace) -> Callable[[torch.Tensor, int], None]:
    """Load the base and a runner; returns forward(tokens (B, T), start position)."""
    loaded = load_base(Settings(device="cpu", quantization=args.quantization))
    bank = LoraSlots(module_shapes(loaded.model), max(1, args.adapters), 16, torch.float32,
                     torch.device("cpu"))
    for slot in range(1, args.adapters + 1):
        bank.ranks[slot] = 16
        for key in bank.a:
            bank.a[key][slot].normal_(std=0.02)
            bank.b[key][slot].normal_(std=0.02)
    slots = [row % args.adapters + 1 for row in range(args.batch)] if args.adapters else None
    context = args.prompt + args.steps + 8 + (5 if args.profile else 0)
    runner = ModelRunner(loaded.model, bank, args.batch, context, loaded.dtype, loaded.device,
                         compile=args.compile)
    rows = list(range(args.batch))

    def forward(tokens: torch.Tensor, start: int) -> None:
        runner.forward(ForwardBatch(tokens.tolist(), rows, [start] * args.batch, slots))

    forward(torch.randint(100, 5000, (args.batch, args.prompt)), 0)
    return forward


def measure(forward: Callable[[torch.Tensor, int], None], args: argparse.Namespace) -> float:
    """The median decode forward in ms (after five warm-ups); prints the profile if asked."""
    times = []
    for index in range(args.steps + 5):
        start = time.perf_counter()
        forward(torch.randint(100, 5000, (args.batch, 1)), args.prompt + index)
        if index >= 5:
            times.append(time.perf_counter() - start)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for index in range(5):
                forward(torch.randint(100, 5000, (args.batch, 1)), args.prompt + args.steps + index)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    return 1000 * statistics.median(times)


def on_worker(fn: Callable[[], float]) -> float:
    result: list[float] = []
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
    args = parser.parse_args(argv)
    if args.threads == "main":
        median_ms = measure(build(args), args)
    elif args.threads == "engine":
        forward = in_passing_thread(lambda: build(args))
        median_ms = on_worker(lambda: measure(forward, args))
    else:
        forward = build(args)
        median_ms = on_worker(lambda: measure(forward, args))
    print(f"{args.quantization} batch {args.batch}, {args.adapters} adapters, threads "
          f"{args.threads}, compile {args.compile}: median decode forward {median_ms:.1f} ms")
    print(json.dumps({"bench": "runner_step", "quantization": args.quantization,
                      "compile": args.compile,
                      "batch": args.batch, "adapters": args.adapters, "steps": args.steps,
                      "threads": args.threads, "median_ms": median_ms,
                      "intra_op_threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
