"""Read bitsandbytes NF4 layers in either CPU layout, and lend them out in the standard one.

bitsandbytes keeps an NF4 `Linear4bit` in one of two layouts:
  - standard: the bytes of the (out, in) 4-bit codes in row-major order, two per byte (the
    first code in the high nibble), absmax per block of `blocksize` codes, possibly itself
    quantized (double quantization). Every device starts here and GPUs stay here.
  - repacked: on a CPU with AVX512-BF16, bitsandbytes (0.50) rewrites the layer at its first
    inference forward for its fused kernel (`quant_state.packing_format_for_cpu`): the codes in
    blocks of 32 output rows interleaved along `in`, absmax as a bfloat16 (in/blocksize, out)
    table, double quantization undone. From then on the layer computes in bfloat16.

Code that reads the bytes as the standard layout after a repack gets garbage without an error.
This module gives the product one way to read both: `dense_weight` (NF4 code times its block's
scale, in float32; on the repacked layout those scales are the bfloat16 ones the layer holds, and
the fused kernel may round each product to bfloat16 again), `standard_copy` (a standard-layout
copy, lossless, the layer untouched) and `standard_layout(model)` (lends every repacked layer
out in the standard layout, for training, and puts the repacked bytes back exactly afterwards).

It does not choose a layout or a kernel: bitsandbytes does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

BLOCK_N = 32  # output rows per block in bitsandbytes' repacked layout


def is_nf4(module: Any) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit) and getattr(module.weight, "quant_type", None) == "nf4"


def is_repacked(module: Any) -> bool:
    """True when bitsandbytes has rewritten this layer for its AVX512-BF16 kernel."""
    state = getattr(module.weight, "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def cpu_compute_dtype(module: Any) -> torch.dtype:
    """The dtype an NF4 layer computes in on this CPU: bfloat16 where bitsandbytes repacks it."""
    if getattr(module, "support_avx512bf16_for_cpu", False):
        return torch.bfloat16
    return module.compute_dtype or torch.float32


def standard_copy(module: Any) -> tuple[torch.Tensor, Any]:
    """(bytes, QuantState) of the layer in the standard layout, new tensors; lossless."""
    import bitsandbytes.functional as bnbf

    weight = module.weight
    state = weight.quant_state
    if not is_repacked(module):
        return weight.data, state
    out_features, in_features = state.shape
    codes = _repacked_codes(weight.data, out_features, in_features).reshape(-1)  # (out*in,)
    data = ((codes[0::2] << 4) | codes[1::2]).reshape(state.original_qshape)
    storage = getattr(state, "original_storage_type", None)
    if storage is not None:
        data = data.view(storage)
    absmax = state.absmax.T.reshape(-1).float()  # (out*in/blocksize,), bf16 values exactly
    standard = bnbf.QuantState(absmax=absmax, shape=state.shape, code=state.code,
                               blocksize=state.blocksize, quant_type=state.quant_type,
                               dtype=state.original_dtype)
    return data, standard


def dense_weight(module: Any) -> torch.Tensor:
    """The layer's weight as a dense (out, in) tensor: NF4 code times its block's absmax."""
    import bitsandbytes.functional as bnbf

    data, state = standard_copy(module)
    return bnbf.dequantize_4bit(data, state)


@contextmanager
def standard_layout(model: nn.Module) -> Iterator[int]:
    """Lend every repacked NF4 layer of `model` out in the standard layout; yields how many.

    Needed wherever bitsandbytes' standard path must run on a model that has already served
    requests on an AVX512-BF16 CPU, e.g. training (the fused kernel has no backward). On exit the
    original bytes and quantization state objects are put back, so serving resumes bit-exactly.
    """
    lent: list[tuple[Any, torch.Tensor, Any]] = []
    try:
        module: Any
        for module in model.modules():
            if is_nf4(module) and is_repacked(module):
                data, state = standard_copy(module)
                lent.append((module, module.weight.data, module.weight.quant_state))
                _set_weight(module, data, state)
        yield len(lent)
    finally:
        for module, data, state in lent:
            _set_weight(module, data, state)


def _set_weight(module: Any, data: torch.Tensor, state: Any) -> None:
    module.weight.data = data
    module.weight.quant_state = state
    module.quant_state = state


def _repacked_codes(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """(out, in) uint8 NF4 codes of a repacked layer's (out, in/2) bytes."""
    groups = packed.view(torch.uint8).reshape(-1, BLOCK_N)  # 32 low nibbles, then 32 high ones
    pairs = torch.cat([groups & 0xF, groups >> 4], dim=-1)  # (-1, 64): 32 (row, 2 codes) pairs
    blocked = pairs.reshape(out_features // BLOCK_N, in_features // 2, BLOCK_N, 2)
    return blocked.transpose(1, 2).reshape(out_features, in_features)


__all__ = ["cpu_compute_dtype", "dense_weight", "is_nf4", "is_repacked", "standard_copy",
           "standard_layout"]
