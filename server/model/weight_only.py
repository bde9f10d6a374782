"""Weight-only int4 and int8 linear layers for the CPU, on torch's matmul kernels or Cameo's own.

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
Each layer computes with one of two kernels, fixed when it is made (`kernel`): `torch` (the
operators above; the input rounded to bfloat16) or `cameo` (`server.model.int_dot`: the same
codes, in its own layout, times the input quantized to int8 per group of 32; the default where
torch runs at AVX2, where it was measured faster: `int_dot.preferred`). Either way a layer gives
its output in the input's dtype, `kernel_input(x)` is the input as its kernel rounds it, and
`dense_weight()` is the weight it computes with, in float32, for references, merges and tests.

Projections that read the same input (q, k and v of an attention block; gate and up of a gated
MLP) are fused where the base allows: a probe forward of the float model finds the linears of
one parent module that are called on the very same tensor, their weights are quantized as one
`Int4Linear` (per row, so each row gets the codes it would get alone), and each projection
becomes an `Int4Slice`, a view of its rows. Called alone a slice runs the whole fused matmul
and keeps its rows; the engine's slot layers instead run the fused matmul once per step and
input and hand each slice its rows (`server.lora.slots`, via `Int4Slice.fused_rows`).

The int4 kernel computes row by row, so a forward of many tokens (a prefill chunk) costs many
times a dense matmul. `add_dense_copies(model)` gives each int4 layer a dense copy of exactly the
values its codes stand for (bfloat16 where the CPU multiplies it natively, else float32), used
for forwards of `DENSE_ROWS` rows or more (in a traced step, where the step says so:
`trace_dense_copies`); the loader decides whether (`Settings.int4_dense_copy`).

Why this and not bitsandbytes on the CPU: bitsandbytes' NF4 `Linear4bit` dequantizes the whole
weight to float32 at every call on a CPU without AVX512-BF16, which costs more than the matmul
(docs/BENCHMARKS.md, "The CPU's 4-bit path"). NF4 through bitsandbytes stays the GPU path.

It does not quantize the input embeddings (a tied head gets its own int8 copy), and it does not
choose when to use these layers: the loader does (`CAMEO_QUANTIZATION=int4`, or `auto` on a CPU).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Literal

import torch
from torch import nn

from server.model import int_dot
from server.settings import IntKernels

log = logging.getLogger(__name__)

GROUP = 32  # input columns per (scale, offset) pair
# Rows (tokens) from which a layer with a dense copy multiplies with it instead of the int4 codes:
# the int4 kernel's cost grows with every row, a dense matmul's far less (docs/BENCHMARKS.md).
DENSE_ROWS = 32
LEVELS = 15  # codes 0..15
MIDPOINT = 8  # the kernel reads a code q as q - 8


def available() -> bool:
    """True when this torch has the CPU int4 kernels."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def supports(linear: nn.Linear, group: int = GROUP) -> bool:
    """The kernel needs whole groups along `in` and output rows in multiples of 16."""
    return linear.in_features % group == 0 and linear.out_features % 16 == 0


Kernel = Literal["torch", "cameo"]


def choose_kernel(choice: IntKernels = "auto") -> Kernel:
    """The kernel new int layers compute with (`Settings.int_kernels`): see `int_dot.preferred`."""
    return "cameo" if int_dot.preferred(choice) else "torch"


class Int4Linear(nn.Module):
    """A linear layer whose weight is held as packed 4-bit codes with per-group scales and offsets."""

    qweight: torch.Tensor
    scales_offsets: torch.Tensor

    def __init__(self, in_features: int, out_features: int, group: int,
                 packed: torch.Tensor, scales_offsets: torch.Tensor,
                 bias: torch.Tensor | None, kernel: Kernel = "torch") -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group = group
        self.kernel = kernel
        # the (out, in) codes in the kernel's layout; PEFT finds the layer's device by this name.
        # torch: its packed layout; cameo: (out, in/2) uint8 (`int_dot.pack_int4`)
        self.register_buffer("qweight", packed)
        # torch: (in/group, out, 2) bfloat16 (scale, offset); cameo: (2, out, in/group) float32
        # (scale, min), min = offset - 8 * scale: w = q * scale + min
        self.register_buffer("scales_offsets", scales_offsets)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.dense: torch.Tensor | None = None  # (out, in), set by keep_dense_copy

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = GROUP,
                    kernel: Kernel = "torch") -> Int4Linear:
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_weight(linear.weight.detach(), bias, group, kernel)

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None,
                    group: int = GROUP, kernel: Kernel = "torch") -> Int4Linear:
        """Quantize a float (out, in) weight; the bias stays in float32. Cameo's kernel takes
        groups of `int_dot.GROUP` only; other groups get torch's."""
        out_features, in_features = weight.shape
        codes, scales, offsets = quantize(weight.float(), group)
        kept = None if bias is None else bias.float().clone()
        if kernel == "cameo" and group == int_dot.GROUP:
            _require_cameo_kernels()
            # exact in float32 unless the two differ in magnitude by more than 2**16
            mins = offsets.float() - MIDPOINT * scales.float()
            table = torch.stack([scales.float(), mins])  # (2, out, in/group)
            return cls(in_features, out_features, group, int_dot.pack_int4(codes), table, kept,
                       "cameo")
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        table = torch.stack([scales, offsets], dim=-1)  # (out, in/group, 2)
        return cls(in_features, out_features, group, packed, table.transpose(0, 1).contiguous(),
                   kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out), in x's dtype."""
        flat = x.reshape(-1, self.in_features)  # (N, in)
        dense = self.dense
        if dense is not None and _dense_rows(flat.shape[0]):
            y = nn.functional.linear(flat.to(dense.dtype), dense)  # (N, out)
        elif self.kernel == "cameo":
            y = torch.ops.cameo.int4_linear(flat.float(), self.qweight, self.scales_offsets[0],
                                            self.scales_offsets[1])
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                flat.to(torch.bfloat16), self.qweight, self.group, self.scales_offsets)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def kernel_input(self, x: torch.Tensor) -> torch.Tensor:
        """x as the codes' kernel rounds it, in float32 (dense copies take x as it is)."""
        return _kernel_input(self.kernel, x)

    def keep_dense_copy(self, dtype: torch.dtype) -> None:
        """Keep the weight also as a dense (out, in) tensor of `dtype`, the values the codes
        stand for (exactly, except a bfloat16 copy of cameo's layout, whose `q * scale + min`
        can need more bits), for forwards of `DENSE_ROWS` rows or more (`add_dense_copies`)."""
        self.dense = self.dense_weight().to(dtype)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight this layer computes with, in float32."""
        if self.kernel == "cameo":
            codes = int_dot.unpack_int4(self.qweight).float()  # (out, in)
            scales, mins = self.scales_offsets  # (out, in/group) each
            grouped = codes.reshape(self.out_features, -1, self.group)  # (out, G, group)
            return (grouped * scales[..., None] + mins[..., None]).reshape(codes.shape)
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.qweight.device)
        rows = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.qweight, self.group,
                                                          self.scales_offsets)  # (in, out)
        return rows.float().T.contiguous()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group={self.group}, bias={self.bias is not None}, kernel={self.kernel}")


def _require_cameo_kernels() -> None:
    if not int_dot.load():
        raise ValueError("Cameo's int kernels cannot run here (see the log); use kernel='torch'")


def _kernel_input(kernel: Kernel, x: torch.Tensor) -> torch.Tensor:
    if kernel == "cameo":
        return int_dot.kernel_input(x.float())
    return x.bfloat16().float()


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
                 bias: torch.Tensor | None, kernel: Kernel = "torch") -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.kernel = kernel
        self.register_buffer("qweight", qweight)  # (out, in) int8; cameo's in its layout
        # (out,) on bfloat16's grid; stored as bfloat16 for torch's kernel, float32 for cameo's
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, kernel: Kernel = "torch") -> Int8Linear:
        """Cameo's kernel takes inputs in whole groups of `int_dot.GROUP`; others get torch's."""
        weight = linear.weight.detach().float()  # (out, in)
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.bfloat16).tiny)
        scales = scales.to(torch.bfloat16)
        codes = (weight / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        if kernel == "cameo" and linear.in_features % int_dot.GROUP == 0:
            _require_cameo_kernels()
            return cls(int_dot.to_layout(codes), scales.float(), bias, "cameo")
        return cls(codes, scales, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out), in x's dtype."""
        flat = x.reshape(-1, self.in_features)  # (N, in)
        if self.kernel == "cameo":
            y = torch.ops.cameo.int8_linear(flat.float(), self.qweight, self.scales)
        else:
            y = torch.ops.aten._weight_int8pack_mm(flat.to(torch.bfloat16), self.qweight,
                                                   self.scales)  # (N, out)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def kernel_input(self, x: torch.Tensor) -> torch.Tensor:
        """x as this layer's kernel rounds it, in float32."""
        return _kernel_input(self.kernel, x)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight this layer computes with, in float32."""
        codes = int_dot.from_layout(self.qweight) if self.kernel == "cameo" else self.qweight
        return codes.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}")


class Int4Slice(nn.Module):
    """Output rows [start, stop) of a fused `Int4Linear`: one projection of a fused group.

    The fused layer is held outside the module tree (`fused_rows`), so that module walks (PEFT,
    `state_dict`, LoRA targets) see each projection once and never the fused layer itself."""

    def __init__(self, fused: Int4Linear, start: int, stop: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.fused_rows = (fused, start, stop)
        self.in_features = fused.in_features
        self.out_features = stop - start
        self.group = fused.group
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def qweight(self) -> torch.Tensor:
        """The fused codes (PEFT finds a layer's device by this name)."""
        return self.fused_rows[0].qweight

    @property
    def kernel(self) -> Kernel:
        return self.fused_rows[0].kernel

    def kernel_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused_rows[0].kernel_input(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out): the whole fused matmul, this slice's rows kept."""
        return self.rows_of(self.fused_rows[0](x))

    def rows_of(self, fused_output: torch.Tensor) -> torch.Tensor:
        """This slice's part of the fused layer's output (..., fused out) -> (..., out)."""
        _, start, stop = self.fused_rows
        return fused_output[..., start:stop]

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight this slice computes with, in float32."""
        _, start, stop = self.fused_rows
        return self.fused_rows[0].dense_weight()[start:stop]

    def extra_repr(self) -> str:
        _, start, stop = self.fused_rows
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rows={start}:{stop} of a fused int4 layer, group={self.group}, "
                f"bias={self.bias is not None}")


def quantize_linears(model: Any, group: int = GROUP, kernel: Kernel = "torch") -> int:
    """Replace every plain `nn.Linear` under `model.model.layers` with an `Int4Linear` (or, in
    groups that read the same input, an `Int4Slice` of one fused layer), and the output head
    with an `Int8Linear`, computing with `kernel` (see `choose_kernel`); returns how many layers
    were replaced. Layers the int4 kernel cannot take (see `supports`) stay as they are, and
    are logged."""
    layers: Any = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError("no model.layers list of decoder layers to quantize")
    shared = shared_inputs(model, layers)
    count = 0
    for index, layer in enumerate(layers):
        for paths in _groups(layer, shared.get(index, []), group):
            count += len(paths)
            if len(paths) > 1:
                _fuse(layer, paths, group, kernel)
            else:
                linear = layer.get_submodule(paths[0])
                _replace(layer, paths[0], Int4Linear.from_linear(linear, group, kernel))
    head = model.get_output_embeddings()  # a transformers PreTrainedModel
    if type(head) is nn.Linear:
        model.set_output_embeddings(Int8Linear.from_linear(head, kernel))
        count += 1
    return count


class _Traced:
    """Whether the forward being traced multiplies by the dense copies: set inside it
    (`trace_dense_copies`), since a size test there would make one graph per side of
    `DENSE_ROWS` (a recompile when a batch crosses it)."""

    dense: bool = False


_TRACED = _Traced()


def trace_dense_copies(dense: bool) -> None:
    """Inside a function a compiler traces: whether int4 layers with a dense copy multiply by
    it (a step of prefill tokens) or by their codes (decode). Ignored outside a trace, where
    the number of rows decides."""
    _TRACED.dense = dense


def _dense_rows(rows: int) -> bool:
    if torch.compiler.is_compiling():
        return _TRACED.dense
    return rows >= DENSE_ROWS


def dense_copy_dtype() -> torch.dtype:
    """bfloat16 where the CPU multiplies it natively (AVX512-BF16), else float32 (a bfloat16
    matmul of many rows is slower than float32 there)."""
    from bitsandbytes.functional import has_avx512bf16

    return torch.bfloat16 if has_avx512bf16() else torch.float32


def add_dense_copies(model: Any, dtype: torch.dtype | None = None) -> int:
    """Give every int4 layer of `model` (each fused layer once) a dense copy of its weight for
    forwards of many rows (prefill chunks, teacher-forced scoring); decode steps keep reading the
    codes. Costs 4 (bfloat16) or 8 (float32) times the int4 weights' bytes. Returns the bytes."""
    dtype = dtype or dense_copy_dtype()
    for layer in int4_layers(model):
        layer.keep_dense_copy(dtype)
    return dense_copy_bytes(model, dtype)


def dense_copy_bytes(model: Any, dtype: torch.dtype) -> int:
    """The bytes of the dense copies of `model`'s int4 layers in `dtype`."""
    return sum(layer.in_features * layer.out_features * dtype.itemsize
               for layer in int4_layers(model))


def int4_layers(model: Any) -> list[Int4Linear]:
    """Every `Int4Linear` of `model`, fused layers (behind their slices) once each."""
    layers: dict[int, Int4Linear] = {}
    for module in model.modules():
        if isinstance(module, Int4Slice):
            module = module.fused_rows[0]
        if isinstance(module, Int4Linear):
            layers[id(module)] = module
    return list(layers.values())


def shared_inputs(model: Any, layers: nn.ModuleList) -> dict[int, list[list[str]]]:
    """For each decoder layer, its plain linears grouped by the input tensor they were called
    on in one probe forward (paths in call order; only groups of one parent module)."""
    seen: dict[int, dict[tuple[str, int], list[str]]] = {}
    inputs: list[torch.Tensor] = []  # kept alive, so that no id is reused during the probe

    def recorder(index: int, path: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            inputs.append(args[0])
            parent = path.rpartition(".")[0]
            seen.setdefault(index, {}).setdefault((parent, id(args[0])), []).append(path)
        return record

    handles = [module.register_forward_pre_hook(recorder(index, path))
               for index, layer in enumerate(layers) for path, module in layer.named_modules()
               if type(module) is nn.Linear]
    try:
        with torch.inference_mode():
            model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return {index: list(groups.values()) for index, groups in seen.items()}


def _groups(layer: nn.Module, shared: list[list[str]], group: int) -> list[list[str]]:
    """Every plain linear of `layer` the kernel takes, as groups to quantize together: a
    shared-input group whose members were each called once, all fit the kernel and agree on
    having a bias; the rest one by one."""
    calls = Counter(path for paths in shared for path in paths)
    result: list[list[str]] = []
    for paths in shared:
        modules: list[Any] = [layer.get_submodule(p) for p in paths]
        if (len(paths) > 1 and all(calls[p] == 1 for p in paths)
                and all(supports(m, group) for m in modules)
                and len({m.bias is None for m in modules}) == 1):
            result.append(paths)
    fused = {path for paths in result for path in paths}
    for path, module in layer.named_modules():  # the rest one by one
        if type(module) is nn.Linear and path not in fused and _fits(path, module, group):
            result.append([path])
    return result


def _fits(path: str, module: nn.Linear, group: int) -> bool:
    if supports(module, group):
        return True
    log.warning("int4: %s (%d -> %d) kept unquantized: the kernel needs whole groups of %d "
                "inputs and outputs in multiples of 16", path, module.in_features,
                module.out_features, group)
    return False


def _fuse(layer: nn.Module, paths: list[str], group: int, kernel: Kernel) -> None:
    """Quantize the linears at `paths` (one input, one parent) as one layer of stacked rows."""
    modules: list[Any] = [layer.get_submodule(p) for p in paths]
    weight = torch.cat([m.weight.detach() for m in modules])  # (sum out, in)
    biases = [m.bias.detach() for m in modules if m.bias is not None]
    fused = Int4Linear.from_weight(weight, torch.cat(biases) if biases else None, group, kernel)
    start = 0
    for path, module in zip(paths, modules, strict=True):
        stop = start + module.out_features
        bias = None if module.bias is None else module.bias.detach().float().clone()
        _replace(layer, path, Int4Slice(fused, start, stop, bias))
        start = stop


def _replace(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(layer.get_submodule(parent), leaf, module)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def with_peft_layers(config: Any) -> Any:
    """`config` (a PEFT `LoraConfig`) taught to wrap these layers with PEFT's own LoRA `Linear`,
    which calls the layer for the base output and adds its LoRA term: for PEFT references and
    baselines on an int4 base. Returns `config`."""
    from peft.tuners.lora.layer import Linear

    config._register_custom_module({Int4Linear: Linear, Int4Slice: Linear, Int8Linear: Linear})
    return config


def is_quantized(module: Any) -> bool:
    """An int4 or int8 layer of this module."""
    return isinstance(module, Int4Linear | Int4Slice | Int8Linear)


def is_int4(module: Any) -> bool:
    return isinstance(module, Int4Linear | Int4Slice)


__all__ = ["DENSE_ROWS", "GROUP", "Int4Linear", "Int4Slice", "Int8Linear", "Kernel",
           "add_dense_copies", "available", "choose_kernel", "dense_copy_bytes",
           "dense_copy_dtype", "int4_layers", "is_int4", "is_quantized", "quantize",
           "quantize_linears", "shared_inputs", "supports", "trace_dense_copies",
           "with_peft_layers"]
