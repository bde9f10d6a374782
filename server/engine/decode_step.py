"""The decode step: one new token for each running row, as one forward a compiler can capture.

Contract: `DecodeStep(model, cache, linears, device, compile)`; `run(batch)` takes a
`ForwardBatch` whose rows each have exactly one new token and returns their logits (B, vocab),
float32. Its metadata is worked out on the host from the batch's integers and padded to buckets
(`DecodeShape`: entries, grid rows and keys read, each a power of two), then copied into
tensors allocated once at start and updated in place; the forward itself reads only tensors,
so it holds no `.item()`, `.tolist()` or other host sync, and every size in it is a tensor's
shape. Attention runs straight over the cache rows (`attention.DecodeGrid`).

After `compile()` the forward is `torch.compile(fullgraph=True)`: inductor on the CPU, with
dynamic shapes, so that one graph serves every bucket; CUDA graphs on CUDA (`reduce-overhead`,
static shapes, one graph per bucket). `compile()` traces at start, with progress logged
(inductor's on-disk cache makes a restart quicker). The eager and compiled steps are the same
function.

Not here: prefill chunks and teacher-forced scoring (the runner's ragged forward), sampling. A
merge swaps layers the trace captured, so while any layer is merged the step runs eagerly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from server.engine import attention
from server.engine.attention import DecodeGrid
from server.engine.kv_cache import KVCache
from server.lora.slots import SlotLinear, plan_slots, slot_step, traced_step

log = logging.getLogger(__name__)

CompiledForward = Callable[..., torch.Tensor]


def bucket(n: int, cap: int) -> int:
    """The smallest power of two >= n, at most `cap` (n <= cap)."""
    return min(1 << max(0, n - 1).bit_length(), cap)


@dataclass(frozen=True)
class DecodeShape:
    """The padded sizes of one decode step: entries B, grid rows R and keys read C."""

    entries: int
    grid: int
    context: int

    @classmethod
    def of(cls, rows: Sequence[int], positions: Sequence[int], cache: KVCache,
           max_entries: int) -> DecodeShape:
        # R > every entry's row + 1, so grid row R-1 holds no entry: the padding's.
        return cls(entries=bucket(len(rows), max_entries), grid=bucket(max(rows) + 2, cache.rows),
                   context=bucket(max(positions) + 1, cache.max_len))


class StepInputs(NamedTuple):
    """What the step's forward reads: views of the preallocated buffers."""

    tokens: torch.Tensor  # (B, 1)
    positions: torch.Tensor  # (B, 1)
    rows: torch.Tensor  # (B,) KV-cache row written
    grid_index: torch.Tensor  # (B,) grid row of the query
    slots: torch.Tensor  # (B,)
    grid_positions: torch.Tensor  # (R,)
    key_positions: torch.Tensor  # (C,)


class _Buffers:
    """The step's inputs, allocated once at the largest shape; each step fills a prefix."""

    def __init__(self, max_entries: int, cache: KVCache, device: torch.device) -> None:
        def longs(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.long, device=device)

        self.scratch_row = cache.rows - 1
        self.tokens = longs(max_entries, 1)
        self.positions = longs(max_entries, 1)
        self.rows = longs(max_entries)
        self.grid_index = longs(max_entries)
        self.slots = longs(max_entries)
        self.grid_positions = longs(cache.rows)
        self.key_positions = torch.arange(cache.max_len, device=device)

    def fill(self, shape: DecodeShape, tokens: Sequence[int], rows: Sequence[int],
             positions: Sequence[int], slots: Sequence[int]) -> StepInputs:
        """Copy one step's metadata in and return the views the forward reads. A padding
        entry is token 0 at position 0 on the base, written into the cache's scratch row, its
        query on the grid's last row."""
        pad = [0] * (shape.entries - len(rows))
        grid = [0] * shape.grid
        for row, position in zip(rows, positions, strict=True):
            grid[row] = position
        views = (self.tokens[:shape.entries], self.positions[:shape.entries],
                 self.rows[:shape.entries], self.grid_index[:shape.entries],
                 self.slots[:shape.entries], self.grid_positions[:shape.grid])
        values = ([*tokens, *pad], [*positions, *pad],
                  [*rows, *[self.scratch_row for _ in pad]],
                  [*rows, *[shape.grid - 1 for _ in pad]], [*slots, *pad], grid)
        for view, value in zip(views, values, strict=True):
            view.copy_(torch.tensor(value).view(view.shape), non_blocking=True)
        return StepInputs(*views, self.key_positions[:shape.context])


class DecodeStep:
    def __init__(self, model: nn.Module, cache: KVCache, linears: dict[str, SlotLinear],
                 max_entries: int, device: torch.device) -> None:
        self.model = model
        self.cache = cache
        self.linears = linears
        self.max_entries = max_entries
        self.lora_strategy = "auto"  # for the eager step; a trace always gathers
        self.device = device
        self.buffers = _Buffers(max_entries, cache, device)
        self.compiled: CompiledForward | None = None
        self._traced_bases = {key: linear.base for key, linear in linears.items()}

    def run(self, tokens: Sequence[int], rows: Sequence[int], positions: Sequence[int],
            slots: Sequence[int] | None) -> torch.Tensor:
        """One new token per row at its position; returns logits (B, vocab) float32."""
        shape = DecodeShape.of(rows, positions, self.cache, self.max_entries)
        self.cache.reserve(shape.context)  # outside the compiled forward
        use_slots = slots is not None and any(slots)
        values = [*(slots if slots is not None else [0] * len(rows)),
                  *[0] * (shape.entries - len(rows))]
        inputs = self.buffers.fill(shape, tokens, rows, positions, values[: len(rows)])
        if self.compiled is not None and not self.merged():
            if self.device.type != "cuda":  # one graph for every bucket (CUDA: one per bucket)
                for tensor in inputs:
                    torch._dynamo.maybe_mark_dynamic(tensor, 0)
            logits = self.compiled(inputs, use_slots)
        else:
            plan = plan_slots(inputs.slots, self.lora_strategy, values=values) \
                if use_slots else None
            with slot_step(self.linears, plan):
                logits = self._forward(inputs, use_slots)
        return logits[: len(rows)]

    def merged(self) -> bool:
        """Whether a merge has replaced a layer the trace holds."""
        return any(linear.base is not self._traced_bases[key]
                   for key, linear in self.linears.items())

    def compile(self) -> None:
        """Compile the step now (before any request: the rows it writes are rewritten by
        prefills): one entry and two (a compiler treats a size of 1 as its own case), on the
        base and with LoRA slots."""
        self.compiled = _compile(self._forward, self.device)
        self._traced_bases = {key: linear.base for key, linear in self.linears.items()}
        started = time.monotonic()
        log.info("compiling the decode step (the first start takes minutes on a small CPU; "
                 "inductor's cache makes later starts quicker)")
        lora = any(linear.a.shape[0] > 1 for linear in self.linears.values())  # any slot
        for entries in sorted({1, min(2, self.max_entries)}):
            for slots in (None, [1] * entries) if lora else (None,):
                with torch.inference_mode():
                    self.run([0] * entries, list(range(entries)), [1] * entries, slots)
                log.info("compiled the decode step: %d entr%s, %s (%.0f s so far)", entries,
                         "y" if entries == 1 else "ies", "LoRA" if slots else "base",
                         time.monotonic() - started)

    def _forward(self, inputs: StepInputs, use_slots: bool) -> torch.Tensor:
        """-> logits (B, vocab) float32."""
        traced_step(self.linears, inputs.slots if use_slots else None)
        step = DecodeGrid.build(self.cache, inputs.rows, inputs.positions, inputs.grid_index,
                                inputs.grid_positions, inputs.key_positions)
        out = self.model(input_ids=inputs.tokens, position_ids=inputs.positions,
                         attention_mask=step.mask, use_cache=False,
                         **{attention.STEP_KWARG: step})
        return out.logits[:, 0].float()


def should_compile(mode: str, device: torch.device, quantization: str) -> bool:
    """`on`, `off`, or `auto`: on where compiling was measured to pay (the CPU with an int4 or
    unquantized base; docs/BENCHMARKS.md). Not on CUDA by default: its CUDA-graph step has not
    been measured on a GPU yet, nor bitsandbytes' layers under the compiler."""
    if mode != "auto":
        return mode == "on"
    return device.type == "cpu" and quantization in ("int4", "none")


def _compile(forward: CompiledForward, device: torch.device) -> CompiledForward:
    options: dict[str, Any] = {"fullgraph": True}
    if device.type == "cuda":
        options.update(mode="reduce-overhead", dynamic=False)
    compiled: CompiledForward = torch.compile(forward, **options)
    return compiled


__all__ = ["DecodeShape", "DecodeStep", "StepInputs", "bucket", "should_compile"]
