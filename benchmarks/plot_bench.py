"""Charts of the benchmarks' JSON lines: the engine against PEFT, and the servers side by side.

    python -m benchmarks.plot_bench engine.json docs/benchmarks/engine_cpu_adapters.png
    python -m benchmarks.plot_bench peer.log docs/benchmarks/peer_cpu.png

Reads the last line starting with `{` of the file (that line alone, or a script's whole output)
and draws what it holds, told apart by its `bench` and `suite` fields:

- `engine_bench.py` (`"bench": "engine"`): decode tokens/s against the number of distinct
  adapters at the largest batch size measured, Cameo's engine and PEFT's `adapter_names` path
  at 1 adapter and at each mix of N distinct adapters, with the engine's base-only speed as a
  line.
- `serve_bench.py peer` (`"bench": "serve", "suite": "peer"`): output tokens/s as grouped bars,
  one group per scenario of `PEER_SCENARIOS` (in that order), one bar per server in the JSON's
  `servers` (in its order, one colour each); a scenario a server did not run, or has no number
  for, has no bar. Beside it, the median time to first token of the eight personas at once, for
  the servers that ran it.

Any other JSON line is refused with a message. Needs matplotlib (`pip install -e .[bench]`); draws
with the Agg backend, so no display is needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# serve_bench's peer scenarios drawn, in order, with their axis labels.
PEER_SCENARIOS: dict[str, str] = {
    "base": "base,\n8 at once",
    "eight_adapters": "8 personas mixed\n(16 requests)",
    "eight_concurrent": "8 personas\nat once",
    "eight_sequential": "8 personas one\nafter another",
    "base_single": "base,\none stream",
}
# The scenario whose median TTFT the second panel shows.
PEER_TTFT_SCENARIO = "eight_concurrent"
SERVER_LABELS: dict[str, str] = {
    "vllm_bf16": "vLLM CPU (bf16)",
    "cameo_default": "Cameo default",
    "cameo_int4_eager": "Cameo int4, eager",
    "cameo_nf4": "Cameo nf4, eager",
    "cameo_float32": "Cameo float32, eager",
    "cameo_bf16": "Cameo bf16, eager",
}


def last_json_line(path: Path) -> dict[str, Any]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"{path}: no JSON line (run a script of benchmarks/ and save its output)")
    return dict(json.loads(lines[-1]))


def kind(result: dict[str, Any]) -> str:
    """"engine" or "peer": which chart `result` makes; SystemExit for any other JSON line."""
    if result.get("bench") == "serve" and result.get("suite") == "peer":
        return "peer"
    if result.get("bench", "engine") == "engine" and "decode_tokens_per_s" in result:
        return "engine"
    raise SystemExit(f"no chart for bench={result.get('bench')!r} suite={result.get('suite')!r} "
                     "(plot_bench draws engine_bench.py and serve_bench.py peer)")


# ---------------------------------------------------------------------------------- engine


def series(row: dict[str, float], prefix: str, first: str) -> tuple[list[int], list[float]]:
    """(adapter counts, tokens/s) from keys like `distinct_8` / `peft_8`, with N=1 from `first`."""
    points = {1: row[first]} if first in row else {}
    for key, value in row.items():
        name, _, count = key.rpartition("_")
        if name == prefix and count.isdigit():
            points[int(count)] = value
    counts = sorted(points)
    return counts, [points[c] for c in counts]


def plot_engine(result: dict[str, Any], fig: Figure) -> None:
    table = result["decode_tokens_per_s"]
    batch = max(table, key=int)
    row = table[batch]
    ax = fig.subplots()
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


# ---------------------------------------------------------------------------------- peer


def server_label(name: str) -> str:
    """A readable name for a server key of serve_bench's peer JSON (`llamacpp_q4_0` ->
    `llama.cpp (Q4_0)`); an unknown key is shown as it is."""
    if name in SERVER_LABELS:
        return SERVER_LABELS[name]
    if name.startswith("llamacpp_"):
        return f"llama.cpp ({name.removeprefix('llamacpp_').upper()})"
    return name


def _number(value: Any) -> float | None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number else None


def peer_series(result: dict[str, Any], metric: str = "tokens_per_s",
                scenarios: tuple[str, ...] = tuple(PEER_SCENARIOS)) -> dict[str, dict[str, float]]:
    """{server: {scenario: `metric`}} for `scenarios`, servers in the JSON's order; a scenario
    the server did not run, or whose `metric` is not a number (null), is absent; a server left
    with none is absent."""
    out: dict[str, dict[str, float]] = {}
    for server, runs in result["servers"].items():
        values = {}
        for scenario in scenarios:
            run = runs.get(scenario)
            value = _number(run.get(metric)) if isinstance(run, dict) else None
            if value is not None:
                values[scenario] = value
        if values:
            out[server] = values
    return out


def group_offsets(count: int, width: float) -> list[float]:
    """x offsets of `count` bars of `width` side by side, centred on 0."""
    return [(i - (count - 1) / 2) * width for i in range(count)]


def draw_grouped_bars(ax: Axes, table: dict[str, dict[str, float]], colors: dict[str, str],
                      groups: dict[str, str], fmt: str = "%.0f") -> None:
    """One group per key of `groups` (labelled by its value), one bar per server of `table`
    that has that key, centred in the group and labelled with its value in `fmt`; one legend
    entry per server."""
    width = 0.8 / max(len(table), 1)
    labelled: set[str] = set()
    for x, group in enumerate(groups):
        present = [server for server in table if group in table[server]]
        for offset, server in zip(group_offsets(len(present), width), present, strict=True):
            label = None if server in labelled else server_label(server)
            labelled.add(server)
            bars = ax.bar(x + offset, table[server][group], width, color=colors[server],
                          label=label)
            ax.bar_label(bars, fmt=fmt, fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), list(groups.values()), fontsize=8)


def plot_peer(result: dict[str, Any], fig: Figure) -> None:
    throughput = peer_series(result)
    ttft = peer_series(result, "ttft_p50_s", (PEER_TTFT_SCENARIO,))
    palette = [f"C{i}" for i in range(10)]
    colors = {server: palette[i % 10] for i, server in enumerate(result["servers"])}
    left, right = fig.subplots(1, 2, width_ratios=[3.2, 1])
    draw_grouped_bars(left, throughput, colors, PEER_SCENARIOS)
    left.set_ylabel("output tokens/s")
    left.set_title(f"{result['model']}, {result['tokens']} tokens per request, "
                   f"{result['machine']}, {result['date']}", fontsize=9)
    left.legend(fontsize=8)
    left.margins(y=0.08)
    left.grid(axis="y", alpha=0.3)
    draw_grouped_bars(right, ttft, colors, {PEER_TTFT_SCENARIO: ""}, fmt="%.2f s")
    right.set_xticks([])
    right.set_xlim(-0.5, 0.5)
    right.set_ylabel("seconds")
    right.set_title("median time to first token,\n8 personas at once", fontsize=9)
    right.margins(y=0.08)
    right.grid(axis="y", alpha=0.3)


def plot(result: dict[str, Any], out: Path) -> None:
    """Draw `result` (an engine or peer JSON line, see the module's docstring) into `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chart = kind(result)
    fig = plt.figure(figsize=(10, 4.6) if chart == "peer" else (7, 4.2), dpi=120)
    (plot_peer if chart == "peer" else plot_engine)(result, fig)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path,
                        help="a file holding engine_bench.py's or serve_bench.py peer's output")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    plot(last_json_line(args.result), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
