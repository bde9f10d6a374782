"""Int8 codes for the slot bank: each LoRA matrix row as 8-bit integers and one scale.

A bank stored as int8 (`LoraSlots(..., dtype=torch.int8)`, the CPU's compiled int4 step by
default) holds half the bytes of a bfloat16 one, and a decode step with rows on many distinct
adapters reads every row's A and B once per token: on a 2-core CPU those reads are a large share
of what the LoRA term costs (docs/BENCHMARKS.md). Rows are quantized symmetrically to the nearest of 255
levels, -127..127 times `max|row| / 127`, so each value is off by at most half a level,
`max|row| / 254`.

A's rows run along the input (one scale per rank and slot), B's along the output as the CPU bank
stores it, (r, out) (again one per rank and slot); both scales multiply the same rank's column
of the shrink's output, so the bank keeps their product, one (S, r_max) float32 tensor per
module (`LoraSlots.scales`), and the term is x @ codes_A^T, times the scales, @ codes_B^T.

This module does not decide which bank a server uses (`server.engine.build.bank_dtype`).
"""

from __future__ import annotations

import torch

LEVELS = 127  # codes -127..127: symmetric, so zero stays exact


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t (..., n) -> codes (..., n) int8 and scale (...,) float32 with t ~= codes * scale;
    an all-zero row has scale 0 and codes 0."""
    values = t.float()
    scale = values.abs().amax(dim=-1) / LEVELS  # (...,)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(values / safe.unsqueeze(-1)).clamp_(-LEVELS, LEVELS)
    return codes.to(torch.int8), scale


def compute_dtype(storage: torch.dtype) -> torch.dtype:
    """The dtype the LoRA term computes in for a bank stored as `storage`: float32 for int8
    codes (the compiled step converts each code as it reads it), else the storage's own."""
    return torch.float32 if storage == torch.int8 else storage
