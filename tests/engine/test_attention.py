"""Cameo's attention functions against each other: the one-query form the compiled CPU step
uses for decoding rows (`one_query_attention`) computes what `attend` (SDPA, or the soft-capped
path) does, with grouped-query heads, sliding windows, soft-capping and rows that see few keys.
Both sides are float32, so only the order of the sums differs."""

from __future__ import annotations

import pytest
import torch

from server.engine.attention import attend, causal_mask, one_query_attention, windowed

ROWS, HEADS, KV_HEADS, CONTEXT, HEAD_DIM = 5, 8, 2, 37, 16


@pytest.mark.parametrize("window", [None, 4], ids=["full", "window"])
@pytest.mark.parametrize("softcap", [None, 5.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("scaling", [None, 0.3], ids=["default-scale", "scale"])
def test_one_query_attention_is_attend(window: int | None, softcap: float | None,
                                       scaling: float | None) -> None:
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(ROWS, HEADS, 1, HEAD_DIM, generator=generator)
    keys = torch.randn(ROWS, KV_HEADS, CONTEXT, HEAD_DIM, generator=generator) * 3
    values = torch.randn(ROWS, KV_HEADS, CONTEXT, HEAD_DIM, generator=generator)
    key_positions = torch.arange(CONTEXT)
    positions = torch.tensor([[0], [1], [9], [20], [CONTEXT - 1]])  # (R, 1): row 0 sees key 0
    mask = causal_mask(key_positions, positions)  # (R, 1, 1, C)
    if window is not None:
        mask = windowed(mask, key_positions, positions, window)
    expected = attend(query, keys, values, mask, scaling, softcap)
    got = one_query_attention(query, keys, values, mask, scaling, softcap)
    assert got.shape == expected.shape == (ROWS, HEADS, 1, HEAD_DIM)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # row 0 sees key 0 only: its output is that key's value, per query head's kv head
    group = HEADS // KV_HEADS
    torch.testing.assert_close(got[0, :, 0], values[0, :, 0].repeat_interleave(group, 0))
