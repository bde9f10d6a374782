"""Device-resident LoRA slots: every adapter's A and B stacked per module, one slot per adapter.

For each LoRA-capable module the bank holds
    A[S, r_max, in]    B[S, out, r_max]   (B already multiplied by the adapter's scale; on the
                                           CPU its memory holds each slot as (r_max, out))
with slot 0 all zeros: the base. A batch passes one slot index per row and the LoRA term of the
whole batch is either two gathered batched matmuls or, when rows share adapters, two small
matmuls per distinct adapter (`plan_slots` picks). A compiled step, whose plan cannot depend on
the slots' values, gathers per row, and per chunk for its packed prefill tokens (`PackedRows`).
Smaller ranks are zero-padded up to `r_max`, which leaves the product unchanged. A bank stored
as int8 (the CPU's compiled int4 step) holds each matrix row as codes and keeps one float32 scale
per rank and slot, `scales[key]` (S, r_max), applied between the two halves (`server.lora.int8`).

Projections that share their input and are sliced from one fused base layer (q/k/v, gate/up:
`weight_only.Int4Slice`) keep their A matrices side by side in one tensor (`LoraSlots.fuse`):
A[S, n * r_max, in], each projection's A a view of its rows. Their LoRA term then starts with
one shrink for the whole group, x @ A^T (B, T, n * r_max), shared by the group's projections
through the step's `SharedOutputs`, and each projection expands its own columns with its B.

Writing an adapter is a copy into one slot's rows of these tensors: no module surgery, no
recompilation, so it is safe between two engine steps. This module does not decide which adapter
goes in which slot (see `manager`) and does not read files (see `adapter`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from server.lora.adapter import AdapterWeights, ModuleShapes
from server.lora.flat import flatten, resident
from server.lora.int8 import compute_dtype, quantize_rows
from server.model.weight_only import Int4Slice


class LoraSlots:
    """Stacked A/B tensors of `num_slots` adapters (plus the base in slot 0) for every module."""

    def __init__(
        self,
        shapes: ModuleShapes,
        num_slots: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if dtype == torch.int8 and device.type != "cpu":
            raise ValueError("an int8 slot bank is the CPU's (the Triton kernels read float banks)")
        self.num_slots = num_slots + 1  # slot 0 is the base
        self.max_rank = max_rank
        # (S,) the real rank of each slot's adapter (0: empty), what the Triton kernels read up to
        self.ranks = torch.zeros(self.num_slots, dtype=torch.int32, device=device)
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        self.groups: dict[tuple[str, ...], LoraGroup] = {}  # by `fuse`
        # (S, r_max) per module, int8 banks only: each rank's scale of A times that of B
        self.scales: dict[str, torch.Tensor] = {}
        for key, (in_features, out_features) in shapes.items():
            # (S, r_max, in) and (S, out, r_max)
            self.a[key] = torch.zeros(self.num_slots, max_rank, in_features, dtype=dtype,
                                      device=device)
            self.b[key] = _b_storage(self.num_slots, out_features, max_rank, dtype, device)
            if dtype == torch.int8:
                self.scales[key] = torch.zeros(self.num_slots, max_rank, device=device)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.a.values(), *self.b.values(), *self.scales.values()))

    def fuse(self, keys: list[str]) -> LoraGroup:
        """Put the A matrices of `keys` (projections sharing one input) side by side in one
        tensor, each key's A becoming a view of its rows (contents kept). Before any
        `SlotLinear` takes the bank's tensors; fusing the same keys again returns the group."""
        if tuple(keys) in self.groups:
            return self.groups[tuple(keys)]
        parts = [self.a[key] for key in keys]
        if len({p.shape[2] for p in parts}) != 1:
            raise ValueError(f"{keys}: a fused group shares one input width")
        group = self.groups[tuple(keys)] = LoraGroup(torch.cat(parts, dim=1))
        self._view_members(tuple(keys), group)
        return group

    def _view_members(self, keys: tuple[str, ...], group: LoraGroup) -> None:
        """Each key's A as its rows of the group's (S, n * r_max, in) tensor."""
        r = self.max_rank
        for index, key in enumerate(keys):
            self.a[key] = group.a[:, index * r:(index + 1) * r]  # (S, r_max, in), a view

    def seal(self) -> None:
        """Move every tensor of the bank into one flat storage per dtype (`server.lora.flat`),
        contents kept, so that a compiled step reads the whole bank as two inputs. After the
        last `fuse`, before any `SlotLinear` takes the bank's tensors."""
        grouped = {key for keys in self.groups for key in keys}
        matrices = [group.a for group in self.groups.values()]
        matrices += [a for key, a in self.a.items() if key not in grouped]
        matrices += list(self.b.values())
        views = iter(flatten(matrices))
        for group in self.groups.values():
            group.a = next(views)
        for key in self.a:
            if key not in grouped:
                self.a[key] = next(views)
        for key in self.b:
            self.b[key] = next(views)
        self.scales = dict(zip(self.scales, flatten(list(self.scales.values())), strict=True))
        for keys, group in self.groups.items():
            self._view_members(keys, group)

    def write(self, slot: int, adapter: AdapterWeights) -> None:
        """Copy `adapter` into `slot`; modules it does not target are zeroed."""
        if not 1 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} out of range 1..{self.num_slots - 1}")
        self._zero(slot)
        for key, (a, b, scale) in adapter.modules.items():
            rank = a.shape[0]
            b = b * scale  # (out, r)
            if key in self.scales:  # int8 codes, each rank's two scales kept as one
                a, a_scale = quantize_rows(a)  # (r, in), (r,)
                b_rows, b_scale = quantize_rows(b.T)  # (r, out), (r,)
                b = b_rows.T
                self.scales[key][slot, :rank].copy_(a_scale * b_scale)
            self.a[key][slot, :rank].copy_(a, non_blocking=True)
            self.b[key][slot, :, :rank].copy_(b, non_blocking=True)
        self.ranks[slot] = max((a.shape[0] for a, _, _ in adapter.modules.values()), default=0)

    def clear(self, slot: int) -> None:
        """Zero `slot` so that a stale adapter can never leak into a later row."""
        self.ranks[slot] = 0
        self._zero(slot)

    def _zero(self, slot: int) -> None:
        for tensors in (self.a, self.b, self.scales):
            for tensor in tensors.values():
                tensor[slot].zero_()


@dataclass(frozen=True)
class SlotPlan:
    """How one forward pass's rows map onto slots, worked out once and shared by every layer.

    On CUDA with Triton the kernels of `server.lora.kernels` compute the term (`kernel`).
    Otherwise, two ways, picked by `plan_slots`:
      - gather (`segments` is None): copy each row's A and B and run two batched matmuls. One
        pass whatever the mix, but it copies an adapter once per row that uses it;
      - segments: for each distinct non-base slot, the rows using it are multiplied by that
        slot's A and B in place (the CPU form of SGMV). Rows on slot 0 cost nothing, and an
        adapter shared by many rows is read once.
    """

    slots: torch.Tensor  # (B,) slot per row
    segments: tuple[tuple[int, torch.Tensor | None], ...] | None = None  # (slot, rows or None: all)
    kernel: bool = False  # the Triton BGMV/SGMV kernels (server.lora.kernels), on CUDA
    packed: PackedRows | None = None  # a traced step's prefill tokens, gathered per chunk

    def batches(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The batches a gathered term runs over, each (x (B, T, in), slots (B,)): every row at
        once, or with `packed`, the one-token entries (D, 1, in) and the segment grid
        (S, T, in) of the packed tokens."""
        packed = self.packed
        if packed is None:
            return [(x, self.slots)]
        entries, width = packed.entries, packed.width
        tokens = x[entries:, 0]  # (M, in)
        grid = tokens.new_zeros(packed.segment_slots.shape[0] * width, x.shape[-1])
        grid = grid.index_copy(0, packed.cell, tokens)  # (S * T, in)
        return [(x[:entries], self.slots[:entries]),
                (grid.view(-1, width, x.shape[-1]), packed.segment_slots)]

    def join(self, terms: list[torch.Tensor]) -> torch.Tensor:
        """Per batch of `batches`, its term (B, T, out) -> every row's term (N, T, out)."""
        if self.packed is None:
            return terms[0]
        singles, grid = terms  # (D, 1, out), (S, T, out)
        packed = grid.reshape(-1, grid.shape[-1]).index_select(0, self.packed.cell)  # (M, out)
        return torch.cat([singles, packed[:, None]])


@dataclass(frozen=True)
class PackedRows:
    """A traced step's packed prefill tokens (`server.engine.attention.PackedPrefill`), whose
    gathered LoRA term runs per chunk, not per token: the tokens are placed on the step's
    segment grid, one chunk per segment and one slot per segment, so a chunk's adapter is read
    once for all its tokens, where a per-token gather copies it once per token
    (docs/BENCHMARKS.md times both in the compiled step)."""

    entries: int  # D, the one-token entries before the packed tokens
    cell: torch.Tensor  # (M,) grid cell (segment * T + offset) of each packed token
    segment_slots: torch.Tensor  # (S,) slot of each segment (0: padding)
    width: int  # T, query positions per segment


def plan_slots(slots: torch.Tensor | None, strategy: str = "auto", *,
               values: list[int] | None = None) -> SlotPlan | None:
    """The plan for a batch whose row b uses slot `slots[b]`; None when every row is the base.
    `values`: the same slots as host integers, when the caller has them (no device read then).

    `auto` uses segments when rows share few adapters (one, or at least 16 rows per adapter) and
    gathers otherwise: on a 2-core CPU, 1.4x faster for 64 rows on one adapter, but 1.6x slower
    for 16 rows on 4 adapters, where each small segment matmul costs more than its copy saves."""
    if slots is None:
        return None
    if strategy == "triton" or (strategy == "auto" and slots.is_cuda and _have_triton()):
        return SlotPlan(slots, kernel=True)
    values = slots.tolist() if values is None else values
    distinct = sorted(set(values) - {0})
    if not distinct:
        return None
    use_segments = strategy == "segments" or (
        strategy == "auto" and (len(distinct) == 1 or 16 * len(distinct) <= len(values)))
    if not use_segments:
        return SlotPlan(slots)
    if len(distinct) == 1 and 0 not in values:
        return SlotPlan(slots, ((distinct[0], None),))
    segments = tuple(
        (slot, torch.tensor([i for i, v in enumerate(values) if v == slot], device=slots.device))
        for slot in distinct)
    return SlotPlan(slots, segments)


class LoraGroup:
    """The A matrices of a fused group's projections side by side (`LoraSlots.fuse`)."""

    a: torch.Tensor = resident("a")  # read through `Resident`: one input for a sealed bank

    def __init__(self, a: torch.Tensor) -> None:
        self.a = a  # (S, n * r_max, in), each projection's A a view of its rows

    def shrink(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """x: (B, T, in) -> (B, T, n * r_max): every projection's x @ A[slot]^T in one pass."""
        return shrink(x, self.a, slots)

    def shrink_one(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        """The same for rows that all use `slot`: (n, T, in) -> (n, T, n * r_max)."""
        dtype = compute_dtype(self.a.dtype)
        return x.to(dtype) @ self.a[slot].to(dtype).T


class SlotLinear(nn.Module):
    """A base linear layer (bitsandbytes or plain) plus the slot bank's LoRA term for it."""

    # the bank's tensors, read through `Resident`: one input for a sealed bank's step
    a: torch.Tensor = resident("a")
    b: torch.Tensor = resident("b")
    scales: torch.Tensor | None = resident("scales")

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor,
                 ranks: torch.Tensor | None = None,
                 group: tuple[LoraGroup, int] | None = None,
                 scales: torch.Tensor | None = None) -> None:
        """`group`: the fused group this projection's A belongs to, and its index there;
        `scales`: an int8 bank's (S, r_max) scales for this module (`LoraSlots.scales`)."""
        super().__init__()
        self.base = base
        self.a = a  # (S, r_max, in), shared with the LoraSlots bank
        self.b = b  # (S, out, r_max), stored as `_b_storage` says
        self.scales = scales  # (S, r_max), an int8 bank's
        self.ranks = ranks  # (S,) real rank per slot, shared with the bank (None: r_max)
        self.group = group

    def forward(self, x: torch.Tensor, plan: SlotPlan | None,
                shared: SharedOutputs | None = None) -> torch.Tensor:
        """x: (B, T, in); `plan` from `plan_slots`, None when every row is the base; `shared`:
        the step's fused-layer outputs, when the base is a slice of a fused layer."""
        y = self.base_output(x, shared)  # (B, T, out)
        if plan is None:
            return y
        if plan.kernel and self.scales is None:  # the kernels read float banks only
            from server.lora.kernels import add_lora

            return add_lora(y, x, self.a, self.b, plan.slots, self.ranks)
        if self.group is not None and shared is not None:
            return y + self._group_delta(x, plan, shared)
        if plan.segments is None:
            return y + plan.join([lora_delta(part, self.a, self.b, slots, self.scales)
                                  for part, slots in plan.batches(x)])
        for slot, rows in plan.segments:
            if rows is None:  # every row on this one adapter
                y = y + segment_delta(x, *self.slot_matrices(slot))
            else:
                y = y.index_add(0, rows, segment_delta(x.index_select(0, rows),
                                                       *self.slot_matrices(slot)))
        return y

    def slot_matrices(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`slot`'s A (r_max, in) and B (out, r_max) in the dtype the term computes in, an
        int8 bank's scales folded into B: B @ A is the slot's whole update of this layer."""
        dtype = compute_dtype(self.a.dtype)
        return self.a[slot].to(dtype), self.slot_b(slot)

    def slot_b(self, slot: int) -> torch.Tensor:
        """`slot`'s B (out, r_max), times the int8 bank's scales when it has them."""
        b = self.b[slot].to(compute_dtype(self.b.dtype))
        return b if self.scales is None else b * self.scales[slot]

    def _group_delta(self, x: torch.Tensor, plan: SlotPlan, shared: SharedOutputs) -> torch.Tensor:
        """The LoRA term from the group's shared shrink: this projection's columns of it
        (B, T, r_max), expanded by its own B."""
        group, index = self.group  # type: ignore[misc]
        r = self.a.shape[1]
        cols = slice(index * r, (index + 1) * r)
        if plan.segments is None:
            terms = [expand(xa[..., cols], self.b, slots, self.scales)  # per batch: (B, T, n * r) -> out
                     for xa, slots in shared.shrunk(group, x, plan)]
            return plan.join(terms).to(x.dtype)
        delta: torch.Tensor | None = None  # (B, T, out) once a segment is in
        for (slot, rows), xa in zip(plan.segments, shared.shrunk_segments(group, x, plan),
                                    strict=True):
            part = (xa[..., cols] @ self.slot_b(slot).T).to(x.dtype)  # (n, T, out)
            if rows is None:  # every row on this adapter: the whole term
                delta = part if delta is None else delta + part
            else:
                start = delta if delta is not None else x.new_zeros(*x.shape[:-1], part.shape[-1])
                delta = start.index_add(0, rows, part)
        assert delta is not None  # a plan with segments has at least one
        return delta

    def base_output(self, x: torch.Tensor, shared: SharedOutputs | None) -> torch.Tensor:
        """The base layer's output; a slice of a fused layer (`weight_only.Int4Slice`) takes
        its rows of the fused output, computed once per input and forward."""
        base = self.base
        if shared is None or not isinstance(base, Int4Slice):
            return base(x)
        return base.rows_of(shared.output(base.fused_rows[0], x))


class SharedOutputs:
    """The latest fused layer's output in one forward, so that the projections sliced from it
    (q, k and v; gate and up) run one matmul for their shared input, not one each."""

    def __init__(self) -> None:
        self.last: tuple[nn.Module, torch.Tensor, torch.Tensor] | None = None
        self.last_shrink: tuple[LoraGroup, torch.Tensor, Any] | None = None

    def output(self, fused: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last = self.last
        if last is not None and last[0] is fused and last[1] is x:
            return last[2]
        y = fused(x)
        self.last = (fused, x, y)
        return y

    def shrunk(self, group: LoraGroup, x: torch.Tensor,
               plan: SlotPlan) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch of `plan.batches(x)`, (`group.shrink` of it, its slots), computed once
        per group and input."""
        return self._once(group, x, lambda: [(group.shrink(part, slots), slots)
                                             for part, slots in plan.batches(x)])

    def shrunk_segments(self, group: LoraGroup, x: torch.Tensor,
                        plan: SlotPlan) -> list[torch.Tensor]:
        """Per segment of `plan`, its rows of x shrunk by its slot's group A, computed once."""
        def compute() -> list[torch.Tensor]:
            return [group.shrink_one(x if rows is None else x.index_select(0, rows), slot)
                    for slot, rows in plan.segments or ()]
        return self._once(group, x, compute)

    def _once(self, group: LoraGroup, x: torch.Tensor, compute: Any) -> Any:
        last = self.last_shrink
        if last is not None and last[0] is group and last[1] is x:
            return last[2]
        value = compute()
        self.last_shrink = (group, x, value)
        return value


class SlotHook(nn.Module):
    """Stands in the model's module tree where a LoRA-capable linear was, keeping it as `base`.

    Outside a `slot_step` (training, PEFT references, `generate`) it is exactly `base`. Inside
    one, it hands `x` to the active runner's `SlotLinear` for its key with the step's plan, so
    several runners can share one module tree, each with its own bank and merged layers.

    While a compiler traces a step (`torch.compiler.is_compiling()`), the thread-local above is
    invisible to it, so the step names its linears and slots with `traced_step` instead, inside
    the traced function: the trace then holds that runner's bank tensors as its inputs.
    """

    def __init__(self, base: nn.Module, key: str) -> None:
        super().__init__()
        self.base = base
        self.key = key
        self.in_features: int = base.in_features  # type: ignore[assignment]
        self.out_features: int = base.out_features  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            step: _Step | None = _TRACED.step
        else:
            step = getattr(_active, "step", None)
        if step is None:
            return self.base(x)
        # .forward directly: this already runs inside the hook's own module call, so a second
        # nn.Module dispatch (hooks, checks) per linear, hundreds per step, would add nothing
        return step.linears[self.key].forward(x, step.plan, step.shared)


def base_of(module: nn.Module) -> nn.Module:
    """The model's own layer behind `module` (itself unless it is a `SlotHook`)."""
    return module.base if isinstance(module, SlotHook) else module


@dataclass(frozen=True)
class _Step:
    linears: dict[str, SlotLinear]
    plan: SlotPlan | None
    shared: SharedOutputs  # this forward's alone


_active = threading.local()  # one engine step at a time per thread


class _Traced:
    """What a step being traced routes to; written and read inside the traced function only."""

    step: _Step | None = None


_TRACED = _Traced()


def traced_step(linears: dict[str, SlotLinear], slots: torch.Tensor | None,
                packed: PackedRows | None = None) -> None:
    """Inside a function a compiler traces: route every `SlotHook` to `linears` with a gathered
    LoRA term over `slots` ((N,) slot per row, None when every row is the base), the rows of
    `packed` gathered per chunk, or the Triton kernels on CUDA. Data-independent, so the trace
    has no graph break; eager calls of the same function use `slot_step` as usual (this is
    ignored outside a trace)."""
    kernel = slots is not None and slots.is_cuda and _have_triton()
    plan = None if slots is None else SlotPlan(slots, kernel=kernel,
                                               packed=None if kernel else packed)
    _TRACED.step = _Step(linears, plan, SharedOutputs())


@contextmanager
def slot_step(linears: dict[str, SlotLinear], plan: SlotPlan | None) -> Iterator[None]:
    """Route every `SlotHook` of this thread to `linears` (by key) with `plan` for one forward."""
    previous = getattr(_active, "step", None)
    _active.step = _Step(linears, plan, SharedOutputs())
    try:
        yield
    finally:
        _active.step = previous


def fused_groups(bases: dict[str, nn.Module]) -> list[list[str]]:
    """The keys whose base layers are slices of one fused layer (`Int4Slice`), in row order;
    groups of two or more only."""
    groups: dict[int, list[tuple[int, str]]] = {}
    for key, base in bases.items():
        if isinstance(base, Int4Slice):
            fused, start, _ = base.fused_rows
            groups.setdefault(id(fused), []).append((start, key))
    return [[key for _, key in sorted(group)] for group in groups.values() if len(group) > 1]


def lora_modules(layer: nn.Module, is_target: Any) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of every LoRA-capable module of one decoder layer, hooks included (a
    hook's own `base` is not listed twice)."""
    for name, child in layer.named_children():
        if isinstance(child, SlotHook) or is_target(child):
            yield name, child
        else:
            for path, module in lora_modules(child, is_target):
                yield f"{name}.{path}", module


def lora_targets(layers: nn.ModuleList, is_target: Any) -> Iterator[tuple[str, nn.Module, str, nn.Module]]:
    """(key, decoder layer, path in it, module) of every LoRA-capable module of `layers`, keyed
    "<layer>.<leaf name>" as the slot bank and adapter files are; a leaf name twice in one layer
    is refused, since an adapter could not say which one it means."""
    for index, layer in enumerate(layers):
        seen: set[str] = set()
        for path, module in list(lora_modules(layer, is_target)):
            leaf = path.rpartition(".")[2]
            if leaf in seen:
                raise ValueError(f"layer {index} has two LoRA-capable modules named {leaf!r}")
            seen.add(leaf)
            yield f"{index}.{leaf}", layer, path, module


def attach_hooks(layers: nn.ModuleList, is_target: Any) -> dict[str, nn.Module]:
    """Put a `SlotHook` in place of every module of `layers` that `is_target(module)` accepts
    (idempotent); returns the base module of each, keyed like `lora_targets`."""
    bases: dict[str, nn.Module] = {}
    for key, layer, path, module in lora_targets(layers, is_target):
        if not isinstance(module, SlotHook):
            parent_path, _, leaf = path.rpartition(".")
            module = SlotHook(module, key)
            setattr(layer.get_submodule(parent_path), leaf, module)
        bases[key] = module.base
    return bases


@contextmanager
def plain_modules(model: nn.Module) -> Iterator[None]:
    """Put the base modules back in place of every `SlotHook` for the duration (e.g. so that
    PEFT can wrap them for training), and the hooks back afterwards. No step may run meanwhile."""
    swapped: list[tuple[nn.Module, str, SlotHook]] = []
    for path, module in list(model.named_modules()):
        if isinstance(module, SlotHook):
            parent_path, _, leaf = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            setattr(parent, leaf, module.base)
            swapped.append((parent, leaf, module))
    try:
        yield
    finally:
        for parent, leaf, hook in swapped:
            setattr(parent, leaf, hook)


def _have_triton() -> bool:
    from server.lora.kernels import available

    return available()


def segment_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One adapter's LoRA term for rows x: (n, T, in) @ A^T (in, r) @ B^T (r, out) -> (n, T, out)."""
    return ((x.to(a.dtype) @ a.T) @ b.T).to(x.dtype)


def lora_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor,
               scales: torch.Tensor | None = None) -> torch.Tensor:
    """The LoRA term of every row at once: x @ A[slot]^T @ B[slot]^T (gathered bmm reference);
    `scales`: an int8 bank's (S, r) scales."""
    return expand(shrink(x, a, slots), b, slots, scales).to(x.dtype)


def shrink(x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The gathered first half of the term: x (B, T, in) @ A[slot]^T -> (B, T, r), in the
    bank's compute dtype (an int8 bank's codes converted as they are read)."""
    dtype = compute_dtype(a.dtype)
    a_rows = a.index_select(0, slots).to(dtype)  # (B, r, in)
    return torch.bmm(x.to(dtype), a_rows.transpose(1, 2))


def expand(xa: torch.Tensor, b: torch.Tensor, slots: torch.Tensor,
           scales: torch.Tensor | None = None) -> torch.Tensor:
    """The gathered second half of the term: xa (B, T, r) @ B[slot]^T -> (B, T, out), with
    each row's B gathered as (r, out), the CPU bank's storage order (`_b_storage`); an int8
    bank's `scales` (S, r) multiply each row's xa first."""
    b_rows = b.transpose(1, 2).index_select(0, slots)  # (B, r, out)
    if scales is not None:
        xa = xa * scales.index_select(0, slots).unsqueeze(1)  # (B, T, r)
    return torch.bmm(xa, b_rows.to(xa.dtype))


def _b_storage(slots: int, out_features: int, rank: int, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """A zeroed (S, out, r) bank tensor for the B matrices. On the CPU its memory holds each
    slot as (r, out): a one-token row's expand, which the compiler turns into a sum over r,
    then runs vectorized along the output features with no per-output horizontal sum (decode
    step 8 rows on 8 adapters: docs/BENCHMARKS.md). Elsewhere (out, r), the order the Triton
    kernels read."""
    if device.type != "cpu":
        return torch.zeros(slots, out_features, rank, dtype=dtype, device=device)
    return torch.zeros(slots, rank, out_features, dtype=dtype, device=device).transpose(1, 2)
