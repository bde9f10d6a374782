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
INT4_LEVELS = 7  # a 4-bit bank's codes -7..7, two to a byte (torch.uint8 storage)
PACKED = torch.uint8  # the storage dtype of a 4-bit bank


def quantize_rows(t: torch.Tensor, levels: int = LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """t (..., n) -> codes (..., n) int8 in -levels..levels and scale (...,) float32 with
    t ~= codes * scale; an all-zero row has scale 0 and codes 0."""
    values = t.float()
    scale = values.abs().amax(dim=-1) / levels  # (...,)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(values / safe.unsqueeze(-1)).clamp_(-levels, levels)
    return codes.to(torch.int8), scale


def stored_ranks(rank: int, storage: torch.dtype) -> int:
    """How many rows `rank` ranks take in a bank stored as `storage` (two per row packed)."""
    return (rank + 1) // 2 if storage == PACKED else rank


def pack_ranks(codes: torch.Tensor) -> torch.Tensor:
    """codes (2k, n) int8 in -8..7 -> (k, n) uint8: rank j in the low nibble of row j, rank
    k + j in its high one (two's complement, so a zero byte is two zeros)."""
    k = codes.shape[0] // 2
    nibbles = codes.to(torch.int32) & 15  # (2k, n)
    return (nibbles[:k] | (nibbles[k:] << 4)).to(PACKED)


def nibbles(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4-bit bank's bytes (..., k, ...) -> its ranks 0..k-1 and k..2k-1 as float32, each
    (..., k, ...): elementwise, so a compiler folds the decoding into the loops that read them."""
    q = packed.to(torch.int32)
    low = ((q & 15) ^ 8) - 8
    high = ((q >> 4) ^ 8) - 8
    return low.float(), high.float()


def decoded(t: torch.Tensor, rank_dim: int) -> torch.Tensor:
    """A bank tensor in the dtype the term computes in: int8 codes as float32, a 4-bit bank's
    bytes as float32 with its ranks in order along `rank_dim`, float banks as they are."""
    if t.dtype == PACKED:
        return torch.cat(nibbles(t), dim=rank_dim)
    return t.to(compute_dtype(t.dtype))


def compute_dtype(storage: torch.dtype) -> torch.dtype:
    """The dtype the LoRA term computes in for a bank stored as `storage`: float32 for int8
    or 4-bit codes (the compiled step converts each code as it reads it), else the storage's."""
    return torch.float32 if storage in (torch.int8, PACKED) else storage
