"""The CPU's 4-bit path, measured: every linear layer of the embedded model, per weight format.

    python -m benchmarks.cpu_weights                  # M = 1 8 16 64 rows
    python -m benchmarks.cpu_weights --rows 1 16 --formats int4 nf4

For each format, all decoder linears of SmolLM2-135M's shapes (30 layers x q, k, v, o, gate, up,
down; random weights, distinct per layer so that the weights stream from memory as in a real
step, not from cache) plus the output head are run once per repetition on an input of M rows,
and the fastest of the repetitions is reported in milliseconds per step (the sum over layers).

Formats:
  - `float32`: plain `nn.Linear` (the `none` quantization);
  - `nf4`: bitsandbytes NF4 as it computes on a CPU without AVX512-BF16: each weight dequantized
    to float32 at each call (`dequantize_4bit`), then a float32 matmul;
  - `nf4_fused`: bitsandbytes' `Linear4bit` as it runs on this CPU: its own fused kernel
    (repacked layout, bfloat16), which it registers only on CPUs with AVX512-BF16 (reported as
    unavailable elsewhere, where `Linear4bit` is the `nf4` row);
  - `int4`: `server.model.weight_only.Int4Linear` (torch's `_weight_int4pack_mm_for_cpu`,
    groups of 32), the head as `Int8Linear` (torch's int8 kernel): what `int4` (and `auto` on a
    CPU) serves with `CAMEO_INT_KERNELS=torch`, and by default on AVX-512 CPUs;
  - `int4_cameo`: the same codes on Cameo's own kernels (`server.model.int_dot`: the input
    quantized to int8 per group of 32, integer dot products), head included: what `int4` serves
    with `CAMEO_INT_KERNELS=cameo`, and by default where torch runs at AVX2;
  - `int8`: every layer as `Int8Linear` (torch's `_weight_int8pack_mm`, one scale per row);
  - `bfloat16`: plain layers holding bfloat16 weights, the float32 input cast to bfloat16 and the
    output back (a dense copy: twice int8's bytes; fast where the CPU multiplies bfloat16
    natively, AVX512-BF16 or AMX).
`--fidelity` also loads the embedded model unquantized, in `nf4` and in `int4` (both kernels, no
dense copies, so that the 512-token forward computes with the kernels compared), and compares
their next-token logits on the first 512 tokens of README.md with the unquantized model's: the
share of positions with the same argmax, the mean KL divergence, and the text's loss.
Prints one JSON line last: milliseconds per step by format and M, each format's speed-up over
`nf4`, and the fidelity figures when asked.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from server.model import int_dot
from server.model.weight_only import Int4Linear, Int8Linear, Kernel

HIDDEN, INTERMEDIATE, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152  # SmolLM2-135M
SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN),
          (INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]  # (out, in)
FORMATS = ["float32", "nf4", "nf4_fused", "int4", "int4_cameo", "int8", "bfloat16"]


def random_linear(out_features: int, in_features: int, generator: torch.Generator) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        layer.weight.normal_(std=0.02, generator=generator)
    return layer


def nf4_layer(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                              compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False,
                                     quant_type="nf4")
    return layer.to("cpu")


class DequantizingNF4(nn.Module):
    """bitsandbytes' NF4 layer computed as it is on CPUs without AVX512-BF16: the whole weight
    dequantized to float32 at each call, then a float32 matmul (on any CPU, so that both paths
    are measured on one that has the fused kernel)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.in_features = layer.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes.functional as bnbf

        weight = self.layer.weight
        dense = bnbf.dequantize_4bit(weight.data, weight.quant_state).to(x.dtype)  # (out, in)
        return nn.functional.linear(x, dense)


class Bfloat16Linear(nn.Module):
    """A linear layer computing in bfloat16 on float32 activations."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)


def fused_nf4_available() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def build(fmt: str, generator: torch.Generator) -> list[nn.Module]:
    """Every decoder linear and the head, in `fmt`."""
    layers: list[nn.Module] = []
    shapes = [shape for _ in range(LAYERS) for shape in SHAPES] + [(VOCAB, HIDDEN)]
    for index, (out_features, in_features) in enumerate(shapes):
        linear = random_linear(out_features, in_features, generator)
        head = index == len(shapes) - 1
        if fmt == "float32":
            layers.append(linear)
        elif fmt == "nf4":  # the head stays float
            layers.append(linear if head else DequantizingNF4(nf4_layer(linear)))
        elif fmt == "nf4_fused":  # as bitsandbytes runs it here (fused where it has the kernel)
            layers.append(linear if head else nf4_layer(linear))
        elif fmt in ("int4", "int4_cameo"):
            kernel: Kernel = "cameo" if fmt == "int4_cameo" else "torch"
            layers.append(Int8Linear.from_linear(linear, kernel=kernel) if head
                          else Int4Linear.from_linear(linear, kernel=kernel))
        elif fmt == "int8":
            layers.append(Int8Linear.from_linear(linear))
        elif fmt == "bfloat16":
            layers.append(Bfloat16Linear(linear))
        else:
            raise ValueError(fmt)
    return layers


@torch.inference_mode()
def step_ms(layers: list[nn.Module], rows: int, repeats: int) -> float:
    """The fastest of `repeats` passes over `layers` on `rows` input rows, in milliseconds."""
    inputs = {HIDDEN: torch.randn(rows, HIDDEN), INTERMEDIATE: torch.randn(rows, INTERMEDIATE)}
    widths = [int(getattr(layer, "in_features", 0)) for layer in layers]

    def one_pass() -> None:
        for layer, width in zip(layers, widths, strict=True):
            layer(inputs[width])

    one_pass()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


@torch.inference_mode()
def fidelity() -> dict[str, dict[str, float]]:
    """Next-token agreement, KL and loss of `nf4` and `int4` (torch's kernels and Cameo's)
    against the unquantized model."""
    from server.model.loader import load_base
    from server.settings import IntKernels, Quantization, Settings

    variants: dict[str, tuple[Quantization, IntKernels]] = {
        "none": ("none", "torch"), "nf4": ("nf4", "torch"), "int4": ("int4", "torch"),
        "int4_cameo": ("int4", "cameo")}

    def load(name: str) -> Any:
        quantization, kernels = variants[name]
        # no dense copies: the 512-token forward then computes with the kernels being compared
        return load_base(Settings(device="cpu", quantization=quantization, int_kernels=kernels,
                                  int4_dense_copy="off"))

    plain = load("none")
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    ids = plain.tokenizer(text, return_tensors="pt").input_ids[:, :512]
    reference = plain.model(ids).logits[0].log_softmax(-1)  # (T, vocab)
    results: dict[str, dict[str, float]] = {}
    for quantization in variants:
        logits = (plain.model if quantization == "none" else load(quantization).model)(ids)
        ours = logits.logits[0].log_softmax(-1)
        kl = torch.nn.functional.kl_div(ours, reference, log_target=True, reduction="batchmean")
        results[quantization] = {
            "same_argmax": round(float((ours.argmax(-1) == reference.argmax(-1)).float().mean()), 3),
            "kl": round(float(kl), 4),
            "loss": round(float(torch.nn.functional.cross_entropy(ours[:-1], ids[0, 1:])), 3)}
        print(f"{quantization:>5}: {results[quantization]}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 64])
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=FORMATS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fidelity", action="store_true")
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, float] | str] = {}
    for fmt in args.formats:
        if fmt == "nf4_fused" and not fused_nf4_available():
            results[fmt] = "unavailable: bitsandbytes registers it on AVX512-BF16 CPUs only"
            print(f"{fmt}: {results[fmt]}", flush=True)
            continue
        if fmt == "int4_cameo" and not int_dot.load():
            results[fmt] = "unavailable: Cameo's int kernels need AVX2, FMA and a C++ compiler"
            print(f"{fmt}: {results[fmt]}", flush=True)
            continue
        print(f"{fmt}: building {LAYERS * len(SHAPES) + 1} layers ...", flush=True)
        layers = build(fmt, generator)
        row: dict[str, float] = {}
        for rows in args.rows:
            row[str(rows)] = round(step_ms(layers, rows, args.repeats), 2)
            print(f"{fmt:>9} M={rows:<3} {row[str(rows)]:9.2f} ms per step", flush=True)
        results[fmt] = row
        del layers
    nf4 = results.get("nf4")
    speedup = {fmt: {m: round(nf4[m] / ms, 2) for m, ms in row.items()}
               for fmt, row in results.items() if isinstance(row, dict) and isinstance(nf4, dict)}
    report: dict[str, Any] = {
        "bench": "cpu_weights", "machine": f"{platform.machine()} {torch.get_num_threads()} "
        f"threads, {torch.backends.cpu.get_cpu_capability()}", "torch": torch.__version__,
        "ms_per_step": results, "speedup_over_nf4": speedup}
    if args.fidelity:
        report["fidelity"] = fidelity()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
