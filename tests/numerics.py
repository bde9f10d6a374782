"""Tolerances derived from the kernel path a model's linear layers take on this machine.

Two computations of the same logits differ only by rounding, and how much depends on the path,
never on one machine's measurements:

  - float32: plain layers, and bitsandbytes NF4 on CPUs without AVX512-BF16 (dequantized to
    float32, then a float32 matmul). One layer's relative error is summation order over its K
    inputs, about sqrt(K) * eps(float32), and over L layers these add up like a random walk:
    `SAFETY * sqrt(K) * eps * sqrt(L) * max|logit|`.
  - bfloat16: bitsandbytes NF4 on CPUs with AVX512-BF16 (repacked, fused kernel), and the CPU's
    int4/int8 layers (`server.model.weight_only`) everywhere: each layer's input and output are
    rounded to bfloat16. Two computations on this path (one row alone and
    in a mixed batch; the slot path and PEFT; a resumed prefill) round the same values and
    differ where a float32-level difference flips a rounding, which bounds the logits' difference
    near one rounding step: `SAFETY * eps(bf16) * max|logit|`. Comparing the path with a float32
    computation (a dense merged layer against the NF4 base) is the rounding error itself, which
    accumulates over layers: `across_precision=True` adds the random walk's sqrt(L).

SAFETY = 4 leaves a margin over what was measured on both paths (the AVX512-BF16 one through
tests/emulation), with the bounds worked out for those logits: the embedded model (30 layers,
logits up to ~20) within 5e-5 in float32 (a print in test_mixed_batch when it was written;
bound 2e-3), on the bf16 path 0.16 (mixed batch against solo) and 0.34 (PEFT parity), bound
0.62, and 1.09 (merged dense layers against the base), bound 3.4; the tiny random families
within 2.2e-5 in float32 (gemma3 nf4; bound 9e-5).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from server.model import nf4, weight_only

SAFETY = 4.0
# Cameo's int kernels (server.model.int_dot) round each input to one of 127 steps of its group's
# largest value: one step is about bfloat16's eps (1/128) relative to that value, and the
# bfloat16 path's reasoning above holds for them with this step as the layer's error.
INT8_STEP = 1 / 127


def compute_dtype(model: Any) -> torch.dtype:
    """The dtype the model's linear layers compute in here (bfloat16 for repacking NF4)."""
    for module in model.modules():
        if weight_only.is_quantized(module):
            return torch.bfloat16
        if nf4.is_nf4(module):
            device = module.weight.device
            return nf4.cpu_compute_dtype(module) if device.type == "cpu" else module.compute_dtype
    return next(model.parameters()).dtype


def layer_error(model: Any) -> float:
    """Relative rounding error of one linear layer on this model's kernel path."""
    if any(getattr(m, "kernel", None) == "cameo" for m in model.modules()
           if weight_only.is_quantized(m)):
        return INT8_STEP
    dtype = compute_dtype(model)
    if dtype == torch.float32:
        widest = max(m.in_features for m in model.modules() if hasattr(m, "in_features"))
        return math.sqrt(widest) * torch.finfo(torch.float32).eps
    return torch.finfo(dtype).eps


def logits_tolerance(model: Any, reference: torch.Tensor, across_precision: bool = False) -> float:
    """Largest |difference| allowed between two computations of the `reference` logits."""
    walk = math.sqrt(int(model.config.num_hidden_layers))
    if compute_dtype(model) != torch.float32 and not across_precision:
        walk = 1.0  # the same roundings on both sides: see the module docstring
    return SAFETY * layer_error(model) * walk * float(reference.abs().max())


def linear_tolerance(model: Any, reference: torch.Tensor) -> float:
    """Largest |difference| allowed between two computations of one linear layer's output."""
    return SAFETY * layer_error(model) * float(reference.abs().max())


def clear_positions(logits: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(T,) True where the top-2 margin of `logits` (T, vocab) exceeds `tolerance`."""
    top2 = logits.topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1]) > tolerance


def assert_same_choice(logits: torch.Tensor, token: int, tolerance: float) -> None:
    """`token` is the argmax of `logits` (vocab,), or one of a top-2 within `tolerance`."""
    top2 = logits.topk(2)
    if token == int(top2.indices[0]):
        return
    margin = float(top2.values[0] - top2.values[1])
    assert token == int(top2.indices[1]) and margin <= tolerance, (
        f"token {token} where the argmax {int(top2.indices[0])} leads by {margin:.3g}")


def assert_logits_close(ours: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    """ours, expected: (T, vocab). Within `tolerance`, and the same argmax wherever it is clear."""
    diff = float((ours - expected).abs().max())
    assert diff <= tolerance, f"logits differ by {diff:.3g} > {tolerance:.3g}"
    clear = clear_positions(expected, tolerance)
    assert bool(clear.any()), "no position has a clear argmax at this tolerance"
    assert torch.equal(ours.argmax(-1)[clear], expected.argmax(-1)[clear])
