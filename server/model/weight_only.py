"""Weight-only int4 and int8 linear layers for the CPU, on torch's own matmul kernels.

Contract: `quantize_linears(model)` replaces every plain `nn.Linear` of the decoder layers with an
`Int4Linear`, and the output head (`lm_head`) with an `Int8Linear`.
  - `Int4Linear`: the weight quantized once, per output row in groups of `GROUP` input columns,
    to 4-bit codes q with a scale s and an offset z per group, so that it reads back as
        w = (q - 8) * s + z,    q in 0..15, s and z in bfloat16,
    computed by `torch.ops.aten._weight_int4pack_mm_for_cpu`, which reads the packed codes in
    place (half a byte per weight; no dense weight is made).
  - `Int8Linear`: codes q in -127..127 and one scale s per output row, w = q * s, computed by
    `torch.ops.aten._weight_int8pack_mm`. The head gets 8 bits: its logits decide every token,
    and it runs on one position per row, where int8 still reads a quarter of float32's bytes.
Both take their input in bfloat16 and give the output back in the input's dtype; each layer's
`dense_weight()` is the weight it computes with, in float32, for references, merges and tests.

Why this and not bitsandbytes on the CPU: bitsandbytes' NF4 `Linear4bit` dequantizes the whole
weight to float32 at every call on a CPU without AVX512-BF16, which costs more than the matmul
(docs/BENCHMARKS.md, "The CPU's 4-bit path"). NF4 through bitsandbytes stays the GPU path.

It does not quantize the input embeddings (a tied head gets its own int8 copy), and it does not
choose when to use these layers: the loader does (`CAMEO_QUANTIZATION=int4`, or `auto` on a CPU).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

GROUP = 32  # input columns per (scale, offset) pair
LEVELS = 15  # codes 0..15
MIDPOINT = 8  # the kernel reads a code q as q - 8


def available() -> bool:
    """True when this torch has the CPU int4 kernels."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def supports(linear: nn.Linear, group: int = GROUP) -> bool:
    """The kernel needs whole groups along `in` and output rows in multiples of 16."""
    return linear.in_features % group == 0 and linear.out_features % 16 == 0


class Int4Linear(nn.Module):
    """A linear layer whose weight is held as packed 4-bit codes with per-group scales and offsets."""

    qweight: torch.Tensor
    scales_offsets: torch.Tensor

    def __init__(self, in_features: int, out_features: int, group: int,
                 packed: torch.Tensor, scales_offsets: torch.Tensor,
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group = group
        # the (out, in) codes in the kernel's layout; PEFT finds the layer's device by this name
        self.register_buffer("qweight", packed)
        self.register_buffer("scales_offsets", scales_offsets)  # (in/group, out, 2) bf16
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = GROUP) -> Int4Linear:
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_weight(linear.weight.detach(), bias, group)

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None,
                    group: int = GROUP) -> Int4Linear:
        """Quantize a float (out, in) weight; the bias stays in float32."""
        out_features, in_features = weight.shape
        codes, scales, offsets = quantize(weight.float(), group)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        table = torch.stack([scales, offsets], dim=-1)  # (out, in/group, 2)
        kept = None if bias is None else bias.float().clone()
        return cls(in_features, out_features, group, packed, table.transpose(0, 1).contiguous(),
                   kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out), in x's dtype."""
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qweight, self.group,
                                                       self.scales_offsets)  # (N, out) bf16
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight this layer computes with, in float32."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.qweight.device)
        rows = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.qweight, self.group,
                                                          self.scales_offsets)  # (in, out)
        return rows.float().T.contiguous()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group={self.group}, bias={self.bias is not None}")


def quantize(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
    """(codes (out, in) int32 in 0..15, scales (out, in/group), offsets (out, in/group)), both
    bfloat16, for a float weight (out, in): each group's range [min, max] split in 15 steps.
    The scale and offset are rounded to bfloat16 first and the codes chosen against the rounded
    values, so `(q - 8) * s + z` is the nearest level the kernel can represent."""
    out_features, in_features = weight.shape
    groups = weight.reshape(out_features, in_features // group, group)  # (out, G, group)
    low = groups.amin(dim=-1)
    high = groups.amax(dim=-1)
    scales = ((high - low) / LEVELS).clamp(min=torch.finfo(torch.bfloat16).tiny)
    scales = scales.to(torch.bfloat16)
    offsets = (low + MIDPOINT * scales.float()).to(torch.bfloat16)
    steps = (groups - offsets.float()[..., None]) / scales.float()[..., None] + MIDPOINT
    codes = steps.round().clamp(0, LEVELS).to(torch.int32).reshape(out_features, in_features)
    return codes, scales, offsets


class Int8Linear(nn.Module):
    """A linear layer whose weight is held as int8 codes with one scale per output row."""

    qweight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)  # (out, in) int8
        self.register_buffer("scales", scales)  # (out,) bf16
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        weight = linear.weight.detach().float()  # (out, in)
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.bfloat16).tiny)
        scales = scales.to(torch.bfloat16)
        codes = (weight / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(codes, scales, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out), in x's dtype."""
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)  # (N, out)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight this layer computes with, in float32."""
        return self.qweight.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def quantize_linears(model: Any, group: int = GROUP) -> int:
    """Replace every plain `nn.Linear` under `model.model.layers` with an `Int4Linear`, and the
    output head with an `Int8Linear`; returns how many layers were replaced. Layers the int4
    kernel cannot take (see `supports`) stay as they are, and are logged."""
    layers: Any = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError("no model.layers list of decoder layers to quantize")
    count = 0
    for layer in layers:
        for path, module in list(layer.named_modules()):
            if type(module) is not nn.Linear:
                continue
            if not supports(module, group):
                log.warning("int4: %s (%d -> %d) kept unquantized: the kernel needs whole groups "
                            "of %d inputs and outputs in multiples of 16", path, module.in_features,
                            module.out_features, group)
                continue
            parent, _, leaf = path.rpartition(".")
            setattr(layer.get_submodule(parent), leaf, Int4Linear.from_linear(module, group))
            count += 1
    head = model.get_output_embeddings()  # a transformers PreTrainedModel
    if type(head) is nn.Linear:
        model.set_output_embeddings(Int8Linear.from_linear(head))
        count += 1
    return count


def with_peft_layers(config: Any) -> Any:
    """`config` (a PEFT `LoraConfig`) taught to wrap these layers with PEFT's own LoRA `Linear`,
    which calls the layer for the base output and adds its LoRA term: for PEFT references and
    baselines on an int4 base. Returns `config`."""
    from peft.tuners.lora.layer import Linear

    config._register_custom_module({Int4Linear: Linear, Int8Linear: Linear})
    return config


def is_quantized(module: Any) -> bool:
    """An int4 or int8 layer of this module."""
    return isinstance(module, Int4Linear | Int8Linear)


def is_int4(module: Any) -> bool:
    return isinstance(module, Int4Linear)


__all__ = ["GROUP", "Int4Linear", "Int8Linear", "available", "is_int4", "is_quantized",
           "quantize", "quantize_linears", "supports", "with_peft_layers"]
