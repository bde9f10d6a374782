"""Triton kernels for the slot bank's LoRA term: BGMV for decode, segmented GEMMs for prefill.

Contract: `add_lora(y, x, a, b, slots, ranks)` adds, in place, every row's LoRA term to the base
output: y[i] += x[i] @ A[slots[i]]^T @ B[slots[i]]^T, for x (B, T, in), y (B, T, out), the bank's
A (S, r, in) and B (S, out, r), slots (B,), and ranks (S,) the real rank of each slot's adapter
(`LoraSlots.ranks`). It computes exactly what `slots.lora_delta` (the
gathered PyTorch path, kept as the CPU path and the reference) computes, without copying any
adapter per row:
  - decode (T == 1), BGMV style (Punica): one program per row (shrink) or per row and block of
    outputs (expand) reads its own slot's A or B directly, whatever slot the neighbours use;
  - prefill (T > 1), segmented style (S-LoRA/Punica SGMV, the segment being one row's tokens):
    tiles of BLOCK_M tokens of one row multiply their slot's A, then B, with `tl.dot`.
Rows on slot 0 (the base) return at once. Each program reads only its adapter's real rank of A
and B (masked loads past it read nothing), so a rank-4 adapter in a bank of r_max 64 costs what
a rank-4 bank would; the padding is never read (the tests fill it with NaN). Without `ranks`
every slot is read to r_max, which is still exact: the bank zero-pads smaller adapters.
Accumulation is float32.

Runs on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 was set before this module was
imported (Triton's interpreter; used by the tests on machines without a GPU). `available()` says
whether Triton can be imported. This module does not choose when to use the kernels: see
`slots.plan_slots`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is not installed
    triton = None


def available() -> bool:
    return triton is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def add_lora(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
             slots: torch.Tensor, ranks: torch.Tensor | None = None,
             workspace: torch.Tensor | None = None) -> torch.Tensor:
    """y += LoRA term of every row (see the module docstring); returns y.

    `workspace` (B, T, r) float32 receives x @ A^T; allocated when not given (the tests pass a
    poisoned one to show the kernels write every element they read)."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    rows, width, d_in = x.shape
    d_out, rank = b.shape[1], b.shape[2]
    x, a, b = x.contiguous(), a.contiguous(), b.contiguous()
    assert y.is_contiguous() and y.shape == (rows, width, d_out)
    xa = workspace if workspace is not None else torch.empty(
        rows, width, rank, dtype=torch.float32, device=x.device)  # (B, T, r)
    if ranks is None:
        ranks = torch.full((a.shape[0],), rank, dtype=torch.int32, device=x.device)
    block_r = max(16, triton.next_power_of_2(rank))
    if width == 1:
        _bgmv_shrink[(rows,)](x, a, slots, ranks, xa, d_in, rank, BLOCK_R=block_r, BLOCK_K=64)
        _bgmv_expand[(rows, triton.cdiv(d_out, 64))](
            xa, b, slots, ranks, y, d_out, rank, BLOCK_R=block_r, BLOCK_N=64)
    else:
        block_m = 16 if width <= 16 else 32
        _sgmv_shrink[(rows, triton.cdiv(width, block_m))](
            x, a, slots, ranks, xa, width, d_in, rank, BLOCK_M=block_m, BLOCK_R=block_r,
            BLOCK_K=32)
        _sgmv_expand[(rows, triton.cdiv(width, block_m), triton.cdiv(d_out, 64))](
            xa, b, slots, ranks, y, width, d_out, rank, BLOCK_M=block_m, BLOCK_R=block_r,
            BLOCK_N=64)
    return y


if triton is not None:

    @triton.jit
    def _bgmv_shrink(x_ptr: Any, a_ptr: Any, slots_ptr: Any, ranks_ptr: Any, out_ptr: Any,
                     d_in: Any, rank: Any, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr) -> None:
        """One row: out[row, :r] = A[slot] (r, in) @ x[row] (in,), 0 past the slot's rank."""
        row = tl.program_id(0)
        slot = tl.load(slots_ptr + row)
        real = tl.load(ranks_ptr + slot)
        r = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
        if slot != 0:
            for k0 in range(0, d_in, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                xk = tl.load(x_ptr + row * d_in + k, mask=k < d_in, other=0.0).to(tl.float32)
                tile = tl.load(a_ptr + slot * rank * d_in + r[:, None] * d_in + k[None, :],
                               mask=(r[:, None] < real) & (k[None, :] < d_in), other=0.0)
                acc += tl.sum(tile.to(tl.float32) * xk[None, :], axis=1)  # (BLOCK_R,)
        tl.store(out_ptr + row * rank + r, acc, mask=r < rank)

    @triton.jit
    def _bgmv_expand(xa_ptr: Any, b_ptr: Any, slots_ptr: Any, ranks_ptr: Any, y_ptr: Any,
                     d_out: Any, rank: Any, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr) -> None:
        """One row, BLOCK_N outputs: y[row, n] += B[slot][n, :r] @ xa[row, :r]."""
        row = tl.program_id(0)
        slot = tl.load(slots_ptr + row)
        if slot != 0:
            real = tl.load(ranks_ptr + slot)
            n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
            r = tl.arange(0, BLOCK_R)
            xa = tl.load(xa_ptr + row * rank + r, mask=r < real, other=0.0)  # (BLOCK_R,)
            tile = tl.load(b_ptr + slot * d_out * rank + n[:, None] * rank + r[None, :],
                           mask=(n[:, None] < d_out) & (r[None, :] < real), other=0.0)
            delta = tl.sum(tile.to(tl.float32) * xa[None, :], axis=1)  # (BLOCK_N,)
            out = y_ptr + row * d_out + n
            base = tl.load(out, mask=n < d_out, other=0.0)
            tl.store(out, (base.to(tl.float32) + delta).to(base.dtype), mask=n < d_out)

    @triton.jit
    def _sgmv_shrink(x_ptr: Any, a_ptr: Any, slots_ptr: Any, ranks_ptr: Any, out_ptr: Any,
                     width: Any, d_in: Any, rank: Any, BLOCK_M: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr) -> None:
        """BLOCK_M tokens of one row: out[row, m, :r] = x[row, m] (M, in) @ A[slot]^T (in, r),
        0 past the slot's rank."""
        row = tl.program_id(0)
        slot = tl.load(slots_ptr + row)
        real = tl.load(ranks_ptr + slot)
        m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        r = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        if slot != 0:
            for k0 in range(0, d_in, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                xt = tl.load(x_ptr + (row * width + m[:, None]) * d_in + k[None, :],
                             mask=(m[:, None] < width) & (k[None, :] < d_in), other=0.0)
                at = tl.load(a_ptr + slot * rank * d_in + r[None, :] * d_in + k[:, None],
                             mask=(r[None, :] < real) & (k[:, None] < d_in), other=0.0)
                acc += tl.dot(xt.to(at.dtype), at)  # (M, K) @ (K, R), float32 accumulator
        tl.store(out_ptr + (row * width + m[:, None]) * rank + r[None, :], acc,
                 mask=(m[:, None] < width) & (r[None, :] < rank))

    @triton.jit
    def _sgmv_expand(xa_ptr: Any, b_ptr: Any, slots_ptr: Any, ranks_ptr: Any, y_ptr: Any,
                     width: Any, d_out: Any, rank: Any, BLOCK_M: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr) -> None:
        """y[row, m, n] += xa[row, m] (M, r) @ B[slot][n]^T (r, N)."""
        row = tl.program_id(0)
        slot = tl.load(slots_ptr + row)
        if slot != 0:
            real = tl.load(ranks_ptr + slot)
            m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
            n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
            r = tl.arange(0, BLOCK_R)
            xa = tl.load(xa_ptr + (row * width + m[:, None]) * rank + r[None, :],
                         mask=(m[:, None] < width) & (r[None, :] < real), other=0.0)
            bt = tl.load(b_ptr + slot * d_out * rank + n[None, :] * rank + r[:, None],
                         mask=(n[None, :] < d_out) & (r[:, None] < real), other=0.0)
            delta = tl.dot(xa.to(bt.dtype), bt)  # (M, R) @ (R, N), float32 accumulator
            out = y_ptr + (row * width + m[:, None]) * d_out + n[None, :]
            mask = (m[:, None] < width) & (n[None, :] < d_out)
            base = tl.load(out, mask=mask, other=0.0)
            tl.store(out, (base.to(tl.float32) + delta).to(base.dtype), mask=mask)


__all__ = ["add_lora", "available", "interpreted"]
