"""The KV cache is sized to use: it grows by powers of two with the longest live request, keeps
what is written, never passes `max_len`, and gives its growth back when trimmed."""

from __future__ import annotations

import pytest
import torch

from server.engine.kv_cache import KVCache

ROWS, HEADS, HEAD_DIM, LAYERS = 3, 2, 4, 2


def _cache(max_len: int = 100, initial: int = 8) -> KVCache:
    return KVCache(LAYERS, ROWS, HEADS, max_len, HEAD_DIM, torch.float32, torch.device("cpu"),
                   initial_capacity=initial)


def _write(cache: KVCache, row: int, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    positions = torch.arange(start, start + count)[None]  # (1, T)
    k = torch.randn(1, HEADS, count, HEAD_DIM)
    v = torch.randn(1, HEADS, count, HEAD_DIM)
    cache.write(0, torch.tensor([row]), positions, k, v)
    return k, v


def test_it_starts_small_and_grows_by_powers_of_two_up_to_max_len() -> None:
    cache = _cache()
    assert cache.capacity == 8
    small = cache.nbytes
    assert small == 2 * LAYERS * (ROWS + 1) * HEADS * (8 + 1) * HEAD_DIM * 4
    cache.reserve(8)
    assert cache.capacity == 8
    cache.reserve(9)
    assert cache.capacity == 16
    cache.reserve(40)
    assert cache.capacity == 64
    cache.reserve(100)
    assert cache.capacity == 100  # capped at max_len, not the next power of two
    assert cache.k[0].shape == (ROWS + 1, HEADS, 101, HEAD_DIM)
    with pytest.raises(ValueError, match="at most 100"):
        cache.reserve(101)


def test_growth_keeps_what_rows_hold_and_trim_gives_it_back() -> None:
    cache = _cache()
    k, v = _write(cache, row=1, start=0, count=6)
    cache.reserve(30)
    keys, values = cache.read(0, torch.tensor([1]), 6, contiguous=False)
    assert torch.equal(keys, k) and torch.equal(values, v)
    k2, _ = _write(cache, row=2, start=20, count=10)  # past the first capacity
    keys, _ = cache.read(0, torch.tensor([2]), 30, contiguous=False)
    assert torch.equal(keys[:, :, 20:30], k2)
    grown = cache.nbytes
    assert cache.peak_nbytes == grown
    cache.trim()
    assert cache.capacity == 8 and cache.nbytes < grown and cache.peak_nbytes == grown


def test_padding_positions_go_to_the_scratch_column_of_the_current_capacity() -> None:
    cache = _cache()
    positions = torch.tensor([[6, 7, 50]])  # the last is a padded query past the capacity
    k = torch.ones(1, HEADS, 3, HEAD_DIM)
    cache.write(0, torch.tensor([0]), positions, k, k)
    assert bool((cache.k[0][0, :, 8] == 1).all())  # the scratch column, index = capacity
    assert bool((cache.k[0][0, :, 6:8] == 1).all())
