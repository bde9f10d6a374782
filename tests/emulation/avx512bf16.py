"""Emulate bitsandbytes' AVX512-BF16 CPU path on a CPU that lacks it, so both paths get tested.

On a CPU with AVX512-BF16, bitsandbytes 0.50 makes every `Linear4bit` repack its NF4 bytes into
a blocked layout at its first inference forward (`packing_format_for_cpu`: absmax turned into a
bfloat16 (K/blocksize, N) table, double quantization undone) and from then on computes the layer
with a fused kernel in bfloat16: the input is rounded to bfloat16, products are accumulated in
float32 and the output is rounded to bfloat16.

`install()` reproduces both halves on any CPU: it makes `has_avx512bf16()` true for layers built
afterwards, so bitsandbytes' own repacking code runs unchanged, and replaces the fused kernel
(which would need the instructions) by a plain PyTorch one with the same rounding points, which
decodes the blocked layout independently of bitsandbytes' inverse. It is test tooling: the
product never imports it. Enable it for a pytest run (and every server process the tests start)
with `CAMEO_EMULATE_AVX512BF16=1`; `make test-avx512bf16` does.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from tests.emulation import env_flag

ENV = "CAMEO_EMULATE_AVX512BF16"
BLOCK_N = 32  # bitsandbytes' output-row block in the packed layout
_installed = False
# Decoded weights per layer, so the emulation costs a float32 matmul per call rather than a
# decode: id(weight tensor) -> (a weak reference to it, (data_ptr, version), (N, K) weight). An
# entry goes when its tensor does (tensors cannot be WeakKeyDictionary keys: their == is
# elementwise).
_decoded: dict[int, tuple[weakref.ref[torch.Tensor], tuple[int, int], torch.Tensor]] = {}


def requested() -> bool:
    return env_flag(ENV)


def install() -> None:
    """Route bitsandbytes' CPU NF4 layers through the emulated AVX512-BF16 path (idempotent)."""
    global _installed
    if _installed:
        return
    import bitsandbytes.functional as bnbf
    import bitsandbytes.nn.modules as modules

    original_gemv = bnbf.gemv_4bit

    def gemv_4bit(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor | None = None,
                  transposed_A: bool = False, transposed_B: bool = False,
                  state: Any = None) -> torch.Tensor:
        if A.device.type != "cpu" or not getattr(state, "packing_format_for_cpu", False):
            return original_gemv(A, B, out=out, transposed_A=transposed_A,
                                 transposed_B=transposed_B, state=state)
        result = packed_matmul(A, B, state)
        if out is not None:
            out.copy_(result)
            return out
        return result

    modules.has_avx512bf16 = lambda: True  # read by Linear4bit.__init__
    bnbf.gemv_4bit = gemv_4bit  # looked up at call time by bitsandbytes.matmul_4bit
    _installed = True


def packed_weight(B: torch.Tensor, state: Any) -> torch.Tensor:
    """The (N, K) bfloat16 weight held by a repacked layer: NF4 code times its block's absmax."""
    n, k = state.shape
    packed = B.view(torch.uint8).reshape(-1, BLOCK_N)  # 32 bytes: 32 low + 32 high nibbles
    nibbles = torch.cat([packed & 0xF, packed >> 4], dim=-1)  # (-1, 64)
    nibbles = nibbles.reshape(n // BLOCK_N, k // 2, BLOCK_N, 2).transpose(1, 2)  # (N/32, 32, K/2, 2)
    codes = nibbles.reshape(n, k).long()  # (N, K) NF4 indices
    scale = state.absmax.float().T.repeat_interleave(state.blocksize, dim=1)  # (N, K)
    return (state.code.float()[codes] * scale).to(torch.bfloat16)


def packed_matmul(A: torch.Tensor, B: torch.Tensor, state: Any) -> torch.Tensor:
    """x @ W^T with the fused kernel's rounding: bf16 in, float32 sums, bf16 out, A's dtype back."""
    stamp = (B.data_ptr(), B._version)
    cached = _decoded.get(id(B))
    if cached is None or cached[0]() is not B or cached[1] != stamp:
        if cached is None or cached[0]() is not B:
            weakref.finalize(B, _decoded.pop, id(B), None)
        cached = (weakref.ref(B), stamp, packed_weight(B, state).float())  # (N, K)
        _decoded[id(B)] = cached
    weight = cached[2]
    x = A.to(torch.bfloat16).float()  # (..., K)
    return (x @ weight.T).to(torch.bfloat16).to(A.dtype)  # (..., N)


__all__ = ["ENV", "install", "packed_matmul", "packed_weight", "requested"]
