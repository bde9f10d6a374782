"""Fold one adapter into the base layers, and put the exact original layers back.

Contract: `merge_slot(linears, slot, fmt)` builds, for every slot-aware linear the adapter in
`slot` targets, a new base layer whose weight is the old one plus the LoRA delta
`B[slot] @ A[slot]` (B already carries the adapter's scale), swaps it in, and returns a `Merge`
record. `Merge.restore()` swaps the original layer objects back, so an unmerge is bit-exact: the
packed NF4 bytes and their quantization state are never touched, only set aside. The Hugging Face
module tree is never modified either; only `SlotLinear.base` changes.

Formats of the merged layer:
  - `dense`: a plain linear in the compute dtype. Exact (up to float rounding) and, on the
    CPU, 1.6x faster than NF4 (docs/BENCHMARKS.md; not measured on a GPU); it costs the
    dense size of the merged layers in memory.
  - `nf4`: dequantize, add in float32, quantize again in the base's own 4-bit format (NF4 with
    the same block size and storage, or int4 with the same group size): no extra memory, but a
    LoRA delta is usually smaller than the 4-bit rounding step, so much of it is rounded away
    (see docs/ARCHITECTURE.md for the measured effect).
int8 bases (bitsandbytes `Linear8bitLt`) are refused.

This module does not decide when to merge, and does not keep rows of other adapters off the
merged layers: the engine does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from server.errors import CameoError
from server.lora.slots import SlotLinear
from server.model import nf4, weight_only


class MergeError(CameoError, RuntimeError):
    """Merged mode is unavailable: disabled, or base layers that cannot hold a merge."""

    code = "merge_unavailable"


MergeFormat = Literal["nf4", "dense"]


@dataclass
class Merge:
    """The layers an adapter was merged into, each with the base module it replaced."""

    saved: list[tuple[SlotLinear, nn.Module]] = field(default_factory=list)

    def restore(self) -> None:
        """Put every original base module back, last merged first."""
        while self.saved:
            linear, original = self.saved.pop()
            linear.base = original


@torch.no_grad()
def merge_slot(linears: dict[str, SlotLinear], slot: int, fmt: MergeFormat) -> Merge:
    """Merge the adapter in `slot` into every layer of `linears`; all or nothing."""
    merge = Merge()
    try:
        for linear in linears.values():
            a, b = linear.slot_matrices(slot)  # (r_max, in), (out, r_max)
            if not bool(a.any()):
                continue  # the adapter does not target this module
            delta = b.float() @ a.float()  # (out, in)
            merged = merged_module(linear.base, delta, fmt)
            merge.saved.append((linear, linear.base))
            linear.base = merged
    except BaseException:
        merge.restore()
        raise
    return merge


def check_mergeable(module: Any) -> None:
    """Raise MergeError unless `module` is a layer `merge_slot` can merge into."""
    if not (nf4.is_nf4(module) or weight_only.is_int4(module) or type(module) is nn.Linear):
        raise MergeError(f"cannot merge an adapter into a {type(module).__name__} layer; "
                         "merging needs an nf4, int4 or unquantized base")


def dense_weight(module: Any) -> torch.Tensor:
    """The layer's weight as a dense (out, in) tensor, whichever NF4 layout it is in."""
    check_mergeable(module)
    if type(module) is nn.Linear:
        return module.weight.data
    if weight_only.is_int4(module):
        return module.dense_weight()
    return nf4.dense_weight(module)


def merged_module(base: Any, delta: torch.Tensor, fmt: MergeFormat) -> nn.Module:
    """A new layer computing `base` with `delta` (out, in) added to its weight."""
    dense = dense_weight(base)
    merged = dense.float() + delta  # (out, in)
    dtype = getattr(base, "compute_dtype", None) or dense.dtype
    layer: nn.Module
    if fmt == "dense" or type(base) is nn.Linear:
        layer = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                          device="meta", dtype=dtype)  # no random init: the weight is set next
        layer.weight = nn.Parameter(merged.to(dtype), requires_grad=False)
    elif weight_only.is_int4(base):
        bias = None if base.bias is None else base.bias.data
        return weight_only.Int4Linear.from_weight(merged, bias, base.group, base.kernel).eval()
    else:
        layer = _nf4_linear(base, merged.to(dense.dtype))
    if base.bias is not None:
        layer.bias = nn.Parameter(base.bias.data.clone(), requires_grad=False)
    return layer.eval().requires_grad_(False)


def _nf4_linear(base: Any, weight: torch.Tensor) -> nn.Module:
    """A Linear4bit like `base` (block size, storage, compute dtype) holding `weight` requantized."""
    import bitsandbytes as bnb

    original = base.weight
    layer = bnb.nn.Linear4bit(base.in_features, base.out_features, bias=base.bias is not None,
                              compute_dtype=base.compute_dtype, quant_type="nf4",
                              quant_storage=original.quant_storage, device="meta")
    packed: Any = bnb.nn.Params4bit(
        weight, requires_grad=False, blocksize=original.blocksize,
        compress_statistics=original.compress_statistics, quant_type="nf4",
        quant_storage=original.quant_storage, module=layer,
    )
    layer.weight = packed.to(original.device)  # quantizes on the device
    return layer


__all__ = ["Merge", "MergeError", "MergeFormat", "check_mergeable", "dense_weight",
           "merge_slot", "merged_module"]
