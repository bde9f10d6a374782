"""Chart of decode tokens/s against the number of distinct adapters: Cameo against PEFT.

    python -m benchmarks.plot_bench engine.json docs/benchmarks/adapters_cpu.png

Reads the JSON line `engine_bench.py` printed last (a file holding it, or its whole output) and
draws, for the largest batch size measured, Cameo's engine and PEFT's `adapter_names` path at 1
adapter and at each mix of N distinct adapters, with the engine's base-only speed as a line.
Needs matplotlib (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def last_json_line(path: Path) -> dict[str, Any]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"{path}: no JSON line (run benchmarks/engine_bench.py and save its output)")
    return dict(json.loads(lines[-1]))


def series(row: dict[str, float], prefix: str, first: str) -> tuple[list[int], list[float]]:
    """(adapter counts, tokens/s) from keys like `distinct_8` / `peft_8`, with N=1 from `first`."""
    points = {1: row[first]} if first in row else {}
    for key, value in row.items():
        name, _, count = key.rpartition("_")
        if name == prefix and count.isdigit():
            points[int(count)] = value
    counts = sorted(points)
    return counts, [points[c] for c in counts]


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["decode_tokens_per_s"]
    batch = max(table, key=int)
    row = table[batch]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    counts, values = series(row, "distinct", "one_adapter")
    ax.plot(counts, values, "o-", label="Cameo engine (slot LoRA)")
    peft_counts, peft_values = series(row, "peft", "peft_1")
    if peft_counts:
        ax.plot(peft_counts, peft_values, "s--", label="PEFT adapter_names")
    ax.axhline(row["base"], color="grey", linestyle=":", label="Cameo, base only")
    if "merged" in row:
        ax.scatter([1], [row["merged"]], marker="*", s=120, color="tab:green",
                   label="Cameo, one adapter merged")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("distinct adapters in the batch")
    ax.set_ylabel("decode tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{result['model']} ({result['quantization']}, {result['machine']}), "
                 f"batch {batch}, rank {result['rank']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path, help="a file holding engine_bench.py's output")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    plot(last_json_line(args.result), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
