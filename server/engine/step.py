"""The engine step: every running row's new tokens (decode tokens and prefill chunks) in ONE
forward a compiler can capture.

Contract: `EngineStep(model, cache, linears, max_entries, device)`; `run(tokens, rows, start,
slots)` takes B chunks (chunk b: the new tokens `tokens[b]` of KV-cache row `rows[b]` from
position `start[b]`, on LoRA slot `slots[b]`, each row at most once) and returns the logits of
each chunk's last token, (B, vocab) float32. The model runs on (N, 1): one batch entry per new
token, first the one-token chunks (decoding rows), then the tokens of the longer chunks packed
one after another (`attention.StepGrid`, `attention.PackedPrefill`), and the logits head sees
only each chunk's last entry (a pre-hook on `lm_head`), so a prefill chunk costs no vocabulary
projection per token. In the compiled step the LoRA term of the one-token entries is gathered
per row and that of the packed tokens per chunk (`server.lora.slots.PackedRows`), so a chunk
reads its adapter once, not once per token.

Its metadata is worked out on the host from the chunks' integers (`StepShape`: on CUDA each
size padded to a power of two, on the CPU each size exact), then copied into tensors allocated
once (grown when a bigger step comes) and updated in place; the forward itself reads only
tensors, so it holds no `.item()`, `.tolist()` or other host sync, and every size in it is a
tensor's shape.

After `compile()` the forward is `torch.compile(fullgraph=True)`: inductor on the CPU, with
dynamic shapes, so that one graph serves every size of a kind (one row decoding; rows
decoding; rows decoding beside prefill chunks); CUDA graphs on CUDA (`reduce-overhead`, static
shapes, one graph per bucket). `compile()` traces every kind at start, with progress logged
(inductor's on-disk cache makes a restart quicker; on the CPU, a folder of it per CPU kind:
`compile_cache`). The eager and compiled steps are the same
function.

On the CPU, once `compile()` has traced every kind, each kind's graph is called directly,
not through dynamo: `compile()` keeps the code dynamo makes for each kind (`StepKind`) and
`run()` picks it from the chunks' integers. Dynamo's own lookup checks, on every call, each
cached graph's tensor guards until one passes (about 1,360 of them, most over the int4 layers'
codes and scales and the KV cache's sixty tensors): 1.2 ms of a one-row forward of 8.8 ms on a
2-core CPU, even with its guards reduced to those that tell graphs apart (docs/BENCHMARKS.md).
Skipping them is sound because nothing a step changes can need a new graph: every step is one
of the kinds traced at start, each traced once (`compile()` checks it), every size that varies
is a dynamic dimension that is never 0 or 1 (`StepShape`), the slot bank and KV cache are
written in place or grown along their dynamic dimension, and a merge (which swaps layers the
trace holds) runs eagerly. Not on CUDA: there each bucket is a static graph of its own, traced
when it first comes, which only dynamo's guards can tell apart.

Not here: teacher-forced scoring (the runner's ragged forward, which returns every position's
logits), sampling. A merge swaps layers the trace captured, so while any layer is merged the
step runs eagerly.
"""

from __future__ import annotations

import logging
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from server.engine import attention, compile_cache
from server.engine.attention import PackedPrefill, StepGrid
from server.engine.kv_cache import KVCache
from server.lora.slots import PackedRows, SlotLinear, plan_slots, slot_step, traced_step
from server.model import weight_only

log = logging.getLogger(__name__)

CompiledForward = Callable[..., torch.Tensor]


def bucket(n: int, cap: int | None = None) -> int:
    """The smallest power of two >= n, at most `cap` (n <= cap)."""
    size = 1 << max(0, n - 1).bit_length()
    return size if cap is None else min(size, cap)


def _exact(n: int, cap: int | None = None) -> int:
    return n if cap is None else min(n, cap)


# What one more segment weighs in an exact layout, in grid cells. Each segment gathers its
# adapter's A and B rows for the packed tokens' LoRA term, about 163 thousand values per layer
# (rank 16 on SmolLM2-135M's seven projections) read as int8 and written as float32, and its
# cache row's keys for attention; a cell costs the same 163 thousand multiply-adds in the
# batched matmuls, which run far faster per value than the copy. An estimate from the shapes,
# not a measurement: it only has to prefer one segment of 35 cells to five of 7.
SEGMENT_CELLS = 16


def segment_count(lengths: Sequence[int], width: int) -> int:
    """Segments of `width` query positions that hold chunks of `lengths` (a chunk in as many
    as it fills), at least two: a compiler treats a size of 1 as a case of its own."""
    return max(2, sum(-(-n // width) for n in lengths))


def packed_width(lengths: Sequence[int]) -> int:
    """The segment width T of an exact layout: the fewest grid cells, each segment weighed as
    `SEGMENT_CELLS` more; among equals, the widest (fewest segments). Only widths
    ceil(n / pieces) are tried: any other has a narrower one with the same segment counts."""
    widths = {-(-n // pieces) for n in lengths for pieces in range(1, n + 1)} - {1}

    def cost(width: int) -> int:
        return segment_count(lengths, width) * (width + SEGMENT_CELLS)
    return min(sorted(widths, reverse=True), key=cost)


@dataclass(frozen=True)
class StepLayout:
    """Where each chunk goes, from the host integers: `singles` are the chunks of one token (a
    decoding row), `packed` those of more (prefill), each a list of batch indices."""

    singles: list[int]
    packed: list[int]

    @classmethod
    def of(cls, tokens: Sequence[Sequence[int]]) -> StepLayout:
        return cls([b for b, t in enumerate(tokens) if len(t) == 1],
                   [b for b, t in enumerate(tokens) if len(t) > 1])


StepKind = tuple[str, bool]  # what the step runs, and whether on LoRA slots

ONE_ROW_DECODING = "one row decoding"
ROWS_DECODING = "rows decoding"
DECODING_BESIDE_PREFILL = "rows decoding beside a prefill chunk"


def step_kind(layout: StepLayout, use_slots: bool) -> StepKind:
    """The graph a step runs: its `StepShape`s of one kind differ only in dynamic sizes."""
    if layout.packed:
        return DECODING_BESIDE_PREFILL, use_slots
    return (ONE_ROW_DECODING if len(layout.singles) == 1 else ROWS_DECODING), use_slots


@dataclass(frozen=True)
class StepShape:
    """The padded sizes of one step: one-token entries D, packed prefill tokens M, prefill
    segments S of T query positions, grid rows R, keys read C, outputs K. M, S and T are 0 when
    the step has no prefill chunk.

    Bucketed (`exact=False`, CUDA, whose graphs are static): each size a power of two, one
    segment per chunk and one more for the padding tokens. Exact (the CPU, where one graph
    with dynamic shapes serves every size): each size what the step holds, no padding token,
    and the chunks cut into segments of one width (`packed_width`), so that a chunk of 35
    tokens is two segments of 18, not one of 64 beside a padding segment of 64: the packed
    tokens' attention and gathered LoRA term run over the grid's cells, padding included."""

    entries: int
    packed: int
    segments: int
    width: int
    grid: int
    context: int
    outputs: int

    @classmethod
    def of(cls, tokens: Sequence[Sequence[int]], rows: Sequence[int], start: Sequence[int],
           layout: StepLayout, cache: KVCache, exact: bool = False) -> StepShape:
        size = _exact if exact else bucket
        lengths = [len(tokens[b]) for b in layout.packed]
        last = max(s + len(t) for s, t in zip(start, tokens, strict=True))
        # R > every single's row + 1, so grid row R-1 holds no entry: the padding's.
        # A compiler treats a size of 1 as a case of its own, so every size is 2 or more but
        # the entries and outputs of a step that decodes one row alone (one stream, where a
        # padding entry would cost a tenth of the step with int4 weights on the CPU).
        least = 2 if lengths or len(tokens) > 1 else 1
        grid = size(max((rows[b] for b in layout.singles), default=0) + 2, cache.rows)
        if not lengths:
            segments = width = 0
        elif exact:
            width = packed_width(lengths)
            segments = segment_count(lengths, width)
        else:
            segments, width = bucket(len(lengths) + 1), bucket(max(lengths))
        return cls(entries=size(max(least, len(layout.singles))),
                   packed=size(sum(lengths)) if lengths else 0,
                   segments=segments, width=width,
                   grid=grid, context=size(max(2, last), cache.max_len),
                   outputs=size(max(least, len(tokens))))

    @property
    def tokens(self) -> int:
        """N, the model's batch: every entry, padding included."""
        return self.entries + self.packed


class StepInputs(NamedTuple):
    """What the step's forward reads: views of the preallocated buffers."""

    tokens: torch.Tensor  # (N, 1)
    positions: torch.Tensor  # (N, 1)
    rows: torch.Tensor  # (N,) KV-cache row written
    slots: torch.Tensor  # (N,)
    grid_index: torch.Tensor  # (D,) grid row of each one-token entry's query
    grid_positions: torch.Tensor  # (R,)
    key_positions: torch.Tensor  # (C,)
    outputs: torch.Tensor  # (K,) entry whose logits each chunk returns
    packed: PackedInputs | None  # None: no prefill chunk in this step


class PackedInputs(NamedTuple):
    """The packed prefill tokens' places (`attention.PackedPrefill`)."""

    cell: torch.Tensor  # (M,) packed token's cell of the segment grid
    segment_rows: torch.Tensor  # (S,)
    segment_slots: torch.Tensor  # (S,) each segment's LoRA slot (0: the base, padding)
    segment_positions: torch.Tensor  # (S, T)


@dataclass
class HostStep:
    """One step's metadata as host integers, every list padded to its size (`StepShape`)."""

    tokens: list[int]  # (N,) one-token entries first, then the packed chunks
    positions: list[int]  # (N,)
    rows: list[int]  # (N,)
    slots: list[int]  # (N,)
    grid_index: list[int]  # (D,)
    grid_positions: list[int]  # (R,)
    outputs: list[int]  # (K,)
    cells: list[int]  # (M,)
    segment_rows: list[int]  # (S,)
    segment_slots: list[int]  # (S,)
    segment_positions: list[int]  # (S * T,)

    @classmethod
    def of(cls, shape: StepShape, layout: StepLayout, tokens: Sequence[Sequence[int]],
           rows: Sequence[int], start: Sequence[int], slots: Sequence[int],
           scratch_row: int) -> HostStep:
        """A padding entry is token 0 at position 0 on the base, written into the cache's
        scratch row; a padding one-token entry's query sits on the grid's last row, a padding
        packed token's in the last segment. Each chunk fills as many segments as it needs, in
        order; segments past the chunks' are padding (the scratch row, the base)."""
        step = cls([], [], [], [], [], [0] * shape.grid, [], [], [], [], [])
        last: dict[int, int] = {}  # batch index -> entry of its last token
        for b in layout.singles:
            last[b] = len(step.tokens)
            step.add(tokens[b], rows[b], start[b], slots[b])
            step.grid_index.append(rows[b])
            step.grid_positions[rows[b]] = start[b]
        padding = shape.entries - len(layout.singles)
        step.add([0] * padding, scratch_row, 0, 0, repeat_position=True)
        step.grid_index += [shape.grid - 1] * padding
        width = shape.width
        for b in layout.packed:
            chunk = tokens[b]
            last[b] = len(step.tokens) + len(chunk) - 1
            for offset in range(0, len(chunk), width):  # one segment per `width` tokens
                piece = min(width, len(chunk) - offset)
                segment = len(step.segment_rows)
                step.cells += [segment * width + t for t in range(piece)]
                step.segment_rows.append(rows[b])
                step.segment_slots.append(slots[b])
                first = start[b] + offset
                step.segment_positions += _pad(list(range(first, first + piece)), width)
            step.add(chunk, rows[b], start[b], slots[b])
        if shape.packed:
            padding = shape.packed - len(step.cells)
            step.cells += [(shape.segments - 1) * width] * padding
            step.add([0] * padding, scratch_row, 0, 0, repeat_position=True)
            step.segment_rows += [scratch_row] * (shape.segments - len(step.segment_rows))
            step.segment_slots = _pad(step.segment_slots, shape.segments)
            step.segment_positions = _pad(step.segment_positions, shape.segments * width)
        step.outputs = _pad([last[b] for b in range(len(tokens))], shape.outputs)
        return step

    def add(self, tokens: Sequence[int], row: int, start: int, slot: int,
            repeat_position: bool = False) -> None:
        """Entries for `tokens` of `row` from position `start` (every one at `start` when
        `repeat_position`: padding)."""
        count = len(tokens)
        self.tokens += tokens
        self.positions += [start] * count if repeat_position else range(start, start + count)
        self.rows += [row] * count
        self.slots += [slot] * count


class _Buffers:
    """The step's inputs, allocated once and grown to the largest step seen; each step fills a
    prefix of each."""

    def __init__(self, cache: KVCache, device: torch.device) -> None:
        self.device = device
        self.scratch_row = cache.rows - 1
        self.key_positions = torch.arange(cache.max_len, device=device)
        self.tensors: dict[str, torch.Tensor] = {}

    def view(self, name: str, values: list[int], shape: tuple[int, ...]) -> torch.Tensor:
        """Copy `values` into buffer `name` (grown to fit) and return its prefix as `shape`."""
        held = self.tensors.get(name)
        if held is None or held.shape[0] < len(values):
            held = torch.zeros(bucket(len(values)), dtype=torch.long, device=self.device)
            self.tensors[name] = held
        view = held[: len(values)].view(shape)
        view.copy_(torch.tensor(values).view(shape), non_blocking=True)
        return view

    def fill(self, shape: StepShape, host: HostStep) -> StepInputs:
        """Copy one step's metadata in and return the views the forward reads."""
        n, packed = shape.tokens, shape.packed > 0
        return StepInputs(
            tokens=self.view("tokens", host.tokens, (n, 1)),
            positions=self.view("positions", host.positions, (n, 1)),
            rows=self.view("rows", host.rows, (n,)),
            slots=self.view("slots", host.slots, (n,)),
            grid_index=self.view("grid_index", host.grid_index, (shape.entries,)),
            grid_positions=self.view("grid_positions", host.grid_positions, (shape.grid,)),
            key_positions=self.key_positions[: shape.context],
            outputs=self.view("outputs", host.outputs, (shape.outputs,)),
            packed=PackedInputs(
                cell=self.view("cell", host.cells, (shape.packed,)),
                segment_rows=self.view("segment_rows", host.segment_rows, (shape.segments,)),
                segment_slots=self.view("segment_slots", host.segment_slots, (shape.segments,)),
                segment_positions=self.view("segment_positions", host.segment_positions,
                                            (shape.segments, shape.width)),
            ) if packed else None)


def _pad(values: list[int], size: int, pad: int = 0) -> list[int]:
    return [*values, *[pad] * (size - len(values))]


class _OutputEntries:
    """A forward pre-hook on `lm_head`: keeps the step's output entries only (K of its N).

    Eager steps name them for this thread (`selecting`); a step being traced names them inside
    the traced function (`traced`), where a thread-local is invisible to the compiler, as
    `server.lora.slots.traced_step` does for the LoRA slots. Outside a step (scoring, training,
    PEFT references) it does nothing."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.traced: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        compiling = torch.compiler.is_compiling()
        index = self.traced if compiling else getattr(self.local, "index", None)
        if index is None:
            return None
        return (args[0].index_select(0, index), *args[1:])  # (K, 1, hidden)

    @contextmanager
    def selecting(self, index: torch.Tensor) -> Iterator[None]:
        self.local.index = index
        try:
            yield
        finally:
            self.local.index = None


_OUTPUTS = _OutputEntries()


def install_output_selection(model: nn.Module) -> None:
    """Hook `model`'s logits head so that a step's forward projects its output entries only."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    if head is None:
        raise ValueError("the model has no output embeddings (lm_head)")
    if not getattr(head, "_cameo_output_entries", False):
        head.register_forward_pre_hook(_OUTPUTS)
        head._cameo_output_entries = True


class EngineStep:
    """Runs one engine step's chunks as one forward (eager, or the compiled graph of its kind)
    over the runner's model, KV cache and slot linears."""

    def __init__(self, model: nn.Module, cache: KVCache, linears: dict[str, SlotLinear],
                 device: torch.device) -> None:
        self.model = model
        self.cache = cache
        self.linears = linears
        self.lora_strategy = "auto"  # for the eager step; a trace always gathers
        self.device = device
        self.buffers = _Buffers(cache, device)
        self.compiled: CompiledForward | None = None
        self.graphs: dict[StepKind, CompiledForward] = {}  # CPU: each kind's code, called directly
        self.direct = True  # call `graphs` (False: through dynamo and its guards; benchmarks)
        self._traced_bases = _bases(linears)
        install_output_selection(model)

    def run(self, tokens: Sequence[Sequence[int]], rows: Sequence[int], start: Sequence[int],
            slots: Sequence[int] | None) -> torch.Tensor:
        """Each chunk's new tokens at its positions; returns the logits of each chunk's last
        token, (B, vocab) float32."""
        layout = StepLayout.of(tokens)
        shape = StepShape.of(tokens, rows, start, layout, self.cache,
                             exact=self.device.type != "cuda")
        self.cache.reserve(shape.context)  # outside the compiled forward
        use_slots = slots is not None and any(slots)
        host = HostStep.of(shape, layout, tokens, rows, start,
                           slots if slots is not None else [0] * len(tokens),
                           self.buffers.scratch_row)
        inputs = self.buffers.fill(shape, host)
        if self.compiled is not None and not self.merged():
            graph = self.graphs.get(step_kind(layout, use_slots)) if self.direct else None
            if graph is not None:
                logits = graph(self, inputs, use_slots)
            else:
                if self.device.type != "cuda":  # one graph for every size (CUDA: one per bucket)
                    _mark_dynamic(inputs)
                logits = self.compiled(inputs, use_slots)
        else:
            plan = plan_slots(inputs.slots, self.lora_strategy, values=host.slots) \
                if use_slots else None
            with slot_step(self.linears, plan), _OUTPUTS.selecting(inputs.outputs):
                logits = self._forward(inputs, use_slots)
        return logits[: len(tokens)]

    def merged(self) -> bool:
        """Whether a merge has replaced a layer the trace holds."""
        return any(linear._modules["base"] is not base  # not nn.Module's slow __getattr__:
                   for linear, base in self._traced_bases)  # 20 µs for 210 layers, not 250

    def compile(self) -> None:
        """Compile the step now (before any request: the rows it writes are rewritten by
        prefills): one row decoding, rows decoding, rows decoding beside a prefill chunk, each
        on the base and with LoRA slots. On the CPU, keep each kind's code to call directly."""
        if self.device.type == "cpu":
            log.info("inductor's cache for this CPU kind: %s", compile_cache.scope_to_this_cpu())
        self.compiled = _compile(self._forward, self.device)
        self.graphs = {}
        self._traced_bases = _bases(self.linears)
        started = time.monotonic()
        log.info("compiling the engine step (the first start takes minutes on a small CPU; "
                 "inductor's cache makes later starts quicker)")
        lora = any(linear.a.shape[0] > 1 for linear in self.linears.values())  # any slot
        kinds = {ONE_ROW_DECODING: [[0]], ROWS_DECODING: [[0], [0]],
                 DECODING_BESIDE_PREFILL: [[0], [0, 0]]}
        with _dynamo_code(EngineStep._forward) as made:
            for kind, tokens in kinds.items():
                rows = list(range(len(tokens)))
                for slots in (None, [1] * len(tokens)) if lora else (None,):
                    made.clear()
                    with torch.inference_mode():
                        self.run(tokens, rows, [2, 0][: len(tokens)], slots)
                    self._keep_graph((kind, slots is not None), made)
                    log.info("compiled the engine step: %s, %s (%.0f s so far)", kind,
                             "LoRA" if slots else "base", time.monotonic() - started)

    def _keep_graph(self, kind: StepKind, made: list[types.CodeType]) -> None:
        """Keep the one graph tracing `kind` made, to call without dynamo's lookup (CPU)."""
        if self.device.type == "cuda":  # static buckets, each traced as it comes
            return
        if len(made) != 1:  # dynamo's lookup tells its graphs apart; ours could not
            log.warning("the engine step's %s, %s made %d graphs; it runs through dynamo's "
                        "guards", kind[0], "LoRA" if kind[1] else "base", len(made))
            return
        self.graphs[kind] = types.FunctionType(made[0], EngineStep._forward.__globals__)

    def _forward(self, inputs: StepInputs, use_slots: bool) -> torch.Tensor:
        """-> logits (K, vocab) float32."""
        packed = inputs.packed
        traced_step(self.linears, inputs.slots if use_slots else None, None if packed is None
                    else PackedRows(entries=inputs.grid_index.shape[0], cell=packed.cell,
                                    segment_slots=packed.segment_slots,
                                    width=packed.segment_positions.shape[1]))
        weight_only.trace_dense_copies(packed is not None)  # prefill tokens: many rows
        _OUTPUTS.traced = inputs.outputs
        prefill = None if packed is None else PackedPrefill.build(
            packed.cell, packed.segment_rows, packed.segment_positions, inputs.key_positions)
        step = StepGrid.build(self.cache, inputs.rows, inputs.positions, inputs.grid_index,
                              inputs.grid_positions, inputs.key_positions, prefill)
        out = self.model(input_ids=inputs.tokens, position_ids=inputs.positions,
                         attention_mask=step.mask, use_cache=False,
                         **{attention.STEP_KWARG: step})
        return out.logits[:, 0].float()


def _bases(linears: dict[str, SlotLinear]) -> list[tuple[SlotLinear, nn.Module]]:
    return [(linear, linear.base) for linear in linears.values()]


def _mark_dynamic(inputs: StepInputs) -> None:
    packed = inputs.packed
    for tensor in (*inputs[:-1], *(packed or ())):
        torch._dynamo.maybe_mark_dynamic(tensor, 0)
    if packed is not None:
        torch._dynamo.maybe_mark_dynamic(packed.segment_positions, 1)


@contextmanager
def _dynamo_code(fn: Callable[..., Any]) -> Iterator[list[types.CodeType]]:
    """The code objects dynamo makes for `fn` while the block runs (a graph's code calls its
    compiled graph and replays the side effects the trace recorded, from `fn`'s globals)."""
    made: list[types.CodeType] = []

    def hook(code: types.CodeType, new_code: types.CodeType) -> None:
        if code is fn.__code__:
            made.append(new_code)

    handle = torch._dynamo.convert_frame.register_bytecode_hook(hook)
    try:
        yield made
    finally:
        handle.remove()


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


__all__ = ["EngineStep", "HostStep", "PackedInputs", "StepInputs", "StepKind", "StepLayout",
           "StepShape", "bucket", "install_output_selection", "should_compile", "step_kind"]
