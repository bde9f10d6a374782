"""KV cache, one row per batch slot plus a scratch row, written at per-row positions, sized to use.

Each layer holds K and V of shape (rows + 1, kv_heads, capacity + 1, head_dim). `capacity`, the
positions a row can hold now, starts small (`INITIAL_CAPACITY`) and grows by powers of two up
to `max_len` when a forward needs more (`reserve`, called by the runner before each forward,
outside any compiled region); `trim` gives the memory back when no row holds a live request (the
engine calls it when it goes idle). So short requests cost rows x their own length, not rows x
`max_len`: the cache grows with the longest live request, not with the longest allowed one.

The extra last column is scratch: padded query positions of a ragged step write there instead of
out of range. The extra last row is scratch too: the padding entries of a bucketed engine step
write there (`server.engine.step`). Nothing ever reads a scratch column, and no request is
given the scratch row. Rows are reused: a finished request's row is simply overwritten by the
next one, and nothing reads past a row's current length, so no clearing is needed.

The capacity is a dynamic dimension for the compiler (on the CPU): a growth changes the tensors'
length, not the traced step, so it does not recompile. It does not choose rows or positions.
"""

from __future__ import annotations

import torch

INITIAL_CAPACITY = 256  # positions per row before the first growth


class KVCache:
    def __init__(
        self,
        num_layers: int,
        rows: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        initial_capacity: int = INITIAL_CAPACITY,
    ) -> None:
        self.max_len = max_len
        self.rows = rows + 1  # the last one is scratch
        self.num_layers = num_layers
        self._shape = (self.rows, kv_heads, head_dim)
        self._dtype, self._device = dtype, device
        self.initial_capacity = min(initial_capacity, max_len)
        self.capacity = 0
        self.peak_nbytes = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._allocate(self.initial_capacity)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.k, *self.v))

    def reserve(self, length: int) -> None:
        """Make room for positions 0..length-1 in every row, keeping what is written."""
        if length > self.max_len:
            raise ValueError(f"{length} positions asked of a cache of at most {self.max_len}")
        if length <= self.capacity:
            return
        grown = self.capacity
        while grown < length:
            grown *= 2
        self._allocate(min(grown, self.max_len))

    def trim(self) -> None:
        """Back to the initial capacity; only when no row holds a live request."""
        if self.capacity > self.initial_capacity:
            self.k, self.v = [], []  # the old tensors go before the new ones are made
            self._allocate(self.initial_capacity)

    def write(
        self, layer: int, rows: torch.Tensor, positions: torch.Tensor,
        k: torch.Tensor, v: torch.Tensor,
    ) -> None:
        """rows: (B,); positions: (B, T); k, v: (B, kv_heads, T, head_dim)."""
        scratch = self.k[layer].shape[2] - 1  # from the tensor: a traced step reads no int
        pos = positions.clamp(max=scratch)  # padding goes to the scratch column
        row_index = rows[:, None].expand_as(pos)  # (B, T)
        # Advanced indices around a slice put their dims first: (B, T, kv_heads, head_dim).
        self.k[layer][row_index, :, pos] = k.transpose(1, 2)
        self.v[layer][row_index, :, pos] = v.transpose(1, 2)

    def view(self, layer: int, count: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V of the first `count` rows up to `length`, as views: (count, kv_heads, length,
        head_dim) each."""
        return self.k[layer][:count, :, :length], self.v[layer][:count, :, :length]

    def read(
        self, layer: int, rows: torch.Tensor, length: int, contiguous: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V of `rows` up to `length`: (B, kv_heads, length, head_dim) each."""
        if contiguous:  # rows are 0..B-1: a view, no copy
            return self.view(layer, rows.shape[0], length)
        return self.k[layer][rows, :, :length], self.v[layer][rows, :, :length]

    @torch.inference_mode(False)  # normal tensors wherever it grows, as at start: a compiled
    def _allocate(self, capacity: int) -> None:  # step guards on the kind of tensor it reads
        """Tensors of `capacity` positions (+ the scratch column), the old contents copied."""
        rows, kv_heads, head_dim = self._shape
        shape = (rows, kv_heads, capacity + 1, head_dim)
        kept = min(self.capacity, capacity)
        for tensors in (self.k, self.v):
            for layer in range(self.num_layers):
                fresh = torch.zeros(shape, dtype=self._dtype, device=self._device)
                if layer < len(tensors):
                    fresh[:, :, :kept] = tensors[layer][:, :, :kept]
                    tensors[layer] = fresh  # one layer at a time: at most one extra alive
                else:
                    tensors.append(fresh)
                if fresh.device.type != "cuda":  # CUDA graphs keep static shapes per bucket
                    torch._dynamo.maybe_mark_dynamic(fresh, 2)
                torch._dynamo.mark_static(fresh, 1)  # heads: never a symbol (GQA reads them)
        self.capacity = capacity
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)
