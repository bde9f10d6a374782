"""One decode forward of the runner alone: no engine thread, no sampling, no detokenizing.

    python -m benchmarks.runner_step --quantization nf4 --batch 16

The embedded model; `--batch` rows are prefilled with `--prompt` random tokens, then `--steps`
decode forwards are timed one by one (after five warm-up steps) and the median is reported, so a
comparison of two versions of the runner (run this in each checkout, alternating) is not blurred
by the engine around it. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from server.engine.runner import ForwardBatch, ModelRunner, module_shapes
from server.lora.slots import LoraSlots
from server.model.loader import load_base
from server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", choices=["nf4", "none"], default="nf4")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    loaded = load_base(Settings(device="cpu", quantization=args.quantization))
    bank = LoraSlots(module_shapes(loaded.model), 1, 16, torch.float32, torch.device("cpu"))
    context = args.prompt + args.steps + 8
    runner = ModelRunner(loaded.model, bank, args.batch, context, loaded.dtype, loaded.device)
    rows = torch.arange(args.batch)

    def forward(tokens: torch.Tensor, start: int) -> None:
        count = tokens.shape[1]
        runner.forward(ForwardBatch(tokens, rows, torch.full((args.batch,), start),
                                    torch.full((args.batch,), count), None))

    forward(torch.randint(100, 5000, (args.batch, args.prompt)), 0)
    times = []
    for index in range(args.steps + 5):
        start = time.perf_counter()
        forward(torch.randint(100, 5000, (args.batch, 1)), args.prompt + index)
        if index >= 5:
            times.append(time.perf_counter() - start)
    median_ms = 1000 * statistics.median(times)
    print(f"{args.quantization} batch {args.batch}: median decode forward {median_ms:.1f} ms")
    print(json.dumps({"bench": "runner_step", "quantization": args.quantization,
                      "batch": args.batch, "steps": args.steps, "median_ms": median_ms,
                      "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
