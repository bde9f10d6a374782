"""The slot bank's tensors as views of one flat storage, so a compiled step takes it as one input.

A compiled step (torch.compile) takes every tensor it reads as an input of its own, and dynamo
handles each input on every call, even with guard evaluation skipped: the 210 scale tensors of an
unsealed int8 bank added 0.9 ms to each step's cache lookup on a 2-core CPU (docs/BENCHMARKS.md),
and a bank holds two or three tensors per LoRA module (hundreds).
`flatten` moves tensors into one 1-D storage (contents and layouts kept) and returns them as
views of it; `Resident` holds one such view and, inside a compiler's trace, rebuilds it from the
storage with the view's size, strides and offset held as plain integers, so the trace reads the
storage alone (dynamo sees one tensor however many modules reach it).

Writing through a view (`LoraSlots.write`) writes the storage in place, which is what the
compiled step reads. This module does not decide what goes in the bank (see `slots`).
"""

from __future__ import annotations

from typing import Any

import torch


def flatten(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same tensors, copied into one new 1-D storage (all one dtype and device), each a
    view of it with its own size and strides. Each tensor must be dense (its elements cover
    one block of memory, in any order: contiguous, or a transpose of contiguous)."""
    if not tensors:
        return []
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:
        raise ValueError(f"one storage holds one dtype, not {sorted(map(str, dtypes))}")
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype,
                       device=tensors[0].device)
    views, offset = [], 0
    for tensor in tensors:
        if not _dense(tensor):
            raise ValueError("flatten needs dense tensors")
        view = flat.as_strided(tensor.shape, tensor.stride(), offset)
        view.copy_(tensor)
        views.append(view)
        offset += tensor.numel()
    return views


def _dense(t: torch.Tensor) -> bool:
    """Whether t's elements cover exactly t.numel() consecutive positions from its offset."""
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return t.numel() == 0 or (span == t.numel() and min(t.stride()) >= 0)


class Resident:
    """A bank tensor as the step reads it: itself outside a trace; inside one, the same view
    rebuilt from its flat storage when it has one (a view of a 1-D tensor, from `flatten`)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        base = tensor._base
        self.flat = base if base is not None and base.dim() == 1 else None
        self.geometry = (tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset())

    def get(self) -> torch.Tensor:
        if self.flat is None or not torch.compiler.is_compiling():
            return self.tensor
        size, stride, offset = self.geometry
        return self.flat.as_strided(size, stride, offset)


def resident(name: str) -> Any:
    """A class attribute holding a tensor as a `Resident` (in `_<name>`; None stays None) and
    reading it back through `Resident.get`: `a = resident("a")` in the class body."""
    def read(owner: Any) -> torch.Tensor | None:
        held = getattr(owner, f"_{name}")
        return None if held is None else held.get()

    def write(owner: Any, tensor: torch.Tensor | None) -> None:
        setattr(owner, f"_{name}", None if tensor is None else Resident(tensor))
    return property(read, write)
