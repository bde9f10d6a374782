"""Preallocated KV cache, one row per batch slot plus a scratch row, written at per-row positions.

Each layer holds K and V of shape (rows + 1, kv_heads, max_len + 1, head_dim). The extra last
column is scratch: padded query positions of a ragged step write there instead of out of range.
The extra last row is scratch too: the padding entries of a bucketed decode step write there
(`server.engine.decode_step`). Nothing ever reads a scratch column, and no request is given the
scratch row. Rows are reused: a finished request's row is simply overwritten by the next one,
and nothing reads past a row's current length, so no clearing is needed.
"""

from __future__ import annotations

import torch


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
    ) -> None:
        self.max_len = max_len
        self.rows = rows + 1  # the last one is scratch
        shape = (self.rows, kv_heads, max_len + 1, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.k, *self.v))

    def write(
        self, layer: int, rows: torch.Tensor, positions: torch.Tensor,
        k: torch.Tensor, v: torch.Tensor,
    ) -> None:
        """rows: (B,); positions: (B, T); k, v: (B, kv_heads, T, head_dim)."""
        pos = positions.clamp(max=self.max_len)  # padding goes to the scratch column
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
