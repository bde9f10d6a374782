"""Cameo's attention, plugged into transformers' attention interface: ragged rows over its KV cache.

Contract: `install(model)` registers `cameo_attention` with transformers' `AttentionInterface`
(and, for forwards without a Cameo step, a mask function that builds the previous
implementation's mask) and switches `model` to it. During a Cameo forward the
runner passes the step's metadata as the keyword argument `cameo_step` (a `StepMetadata` for a
ragged forward, a `StepGrid` for an engine step); every attention layer then writes its new keys
and values into the step's `KVCache` at each row's positions and attends over that row's cached
keys, honouring what transformers passes for the layer: `scaling`, GQA,
`sliding_window` and `softcap`. Any other argument with a value, dropout in a forward, or a
non-causal layer is refused (`UnsupportedAttention`), so that nothing is silently ignored; the
runner probes the model at load so a refusal happens then, not on a request.

Attention itself is SDPA (`attend`), except for the decoding rows of a compiled CPU step, which
take `one_query_attention`: the same computation written as broadcasts and sums, so that no
extern kernel call splits each layer and inductor fuses the attention with what surrounds it
(faster in the whole step, though not in isolation; docs/BENCHMARKS.md).

Without `cameo_step` (training, PEFT references, `generate` on the same module tree), the call is
forwarded unchanged to the implementation the model had before `install`.

It knows nothing about LoRA, sampling or requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from server.engine.kv_cache import KVCache

NAME = "cameo"
STEP_KWARG = "cameo_step"
# Whether a compiled CPU step's decoding rows take `one_query_attention` (read when the step is
# traced; `benchmarks/runner_step.py --sdpa-decode` turns it off to compare).
ONE_QUERY_ON_CPU = True
# Keyword arguments transformers passes along that carry no attention semantics of their own.
_INERT = frozenset({"position_ids", "cache_position", "output_attentions", "use_cache",
                    "is_causal", "layer_idx", "position_embeddings"})


class UnsupportedAttention(ValueError):
    """A layer asks for attention behaviour Cameo's attention does not implement."""


@dataclass(frozen=True)
class StepMetadata:
    """What every attention layer of a ragged forward needs, built once per forward.

    rows: (B,) KV-cache row of each batch row; positions: (B, T) absolute position of each new
    token; context: keys to attend over (max over rows of start + length); mask: (B, 1, T,
    context) causal mask, True where a query may see a key; key_positions: (context,).
    """

    cache: KVCache
    rows: torch.Tensor
    positions: torch.Tensor
    context: int
    contiguous: bool  # rows are 0..B-1, so the cache is read as a view
    mask: torch.Tensor
    key_positions: torch.Tensor
    _windows: dict[int, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, cache: KVCache, rows: torch.Tensor, positions: torch.Tensor,
              context: int, contiguous: bool) -> StepMetadata:
        key_positions = torch.arange(context, device=positions.device)
        mask = causal_mask(key_positions, positions)
        return cls(cache, rows, positions, context, contiguous, mask, key_positions)

    def window_mask(self, window: int) -> torch.Tensor:
        """The causal mask restricted to the last `window` keys of each query (built once per
        window and forward, then shared by every layer with that window)."""
        if window not in self._windows:
            self._windows[window] = windowed(self.mask, self.key_positions, self.positions,
                                             window)
        return self._windows[window]

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None, window: int | None, softcap: float | None) -> torch.Tensor:
        """query: (B, heads, T, hd); key, value: (B, kv_heads, T, hd) -> (B, T, heads, hd)."""
        self.cache.write(layer, self.rows, self.positions, key, value)
        keys, values = self.cache.read(layer, self.rows, self.context, self.contiguous)
        mask = self.mask if window is None else self.window_mask(window)
        return attend(query, keys, values, mask, scaling, softcap).transpose(1, 2).contiguous()


@dataclass(frozen=True)
class PackedPrefill:
    """The prefill chunks of an engine step, packed one token after another (no padding
    between chunks), and how their queries meet each chunk's cached keys.

    Each chunk has one segment or more (consecutive pieces of it, `step.StepShape`): packed
    token m's query is placed at cell[m] of a grid of S segments x T query positions
    (flattened S * T), the segments attend over their cache rows `rows` (a gathered copy up to
    C keys: prefill is compute-bound, the copy is small beside it), and each packed token reads
    its cell of the result back. Segments past the chunks' hold none; padding tokens go to the
    last. positions: (S, T) query position of each cell (0 where none, so that every query sees
    at least key 0); key_positions: (C,) 0..C-1.
    """

    cell: torch.Tensor  # (M,)
    rows: torch.Tensor  # (S,)
    positions: torch.Tensor  # (S, T)
    key_positions: torch.Tensor  # (C,)
    mask: torch.Tensor  # (S, 1, T, C)
    _windows: dict[int, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, cell: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
              key_positions: torch.Tensor) -> PackedPrefill:
        return cls(cell, rows, positions, key_positions, causal_mask(key_positions, positions))

    def window_mask(self, window: int) -> torch.Tensor:
        if window not in self._windows:
            self._windows[window] = windowed(self.mask, self.key_positions, self.positions,
                                             window)
        return self._windows[window]

    def attend_cached(self, layer: int, cache: KVCache, query: torch.Tensor,
                      scaling: float | None, window: int | None,
                      softcap: float | None) -> torch.Tensor:
        """query: (M, heads, 1, hd) -> (M, 1, heads, hd), over keys already in the cache."""
        segments, width = self.positions.shape
        heads, head_dim = query.shape[1], query.shape[3]
        grid = query.new_zeros((segments * width, heads, head_dim))
        grid[self.cell] = query[:, :, 0]
        grid = grid.view(segments, width, heads, head_dim).transpose(1, 2)  # (S, h, T, hd)
        keys, values = cache.read(layer, self.rows, self.key_positions.shape[0], False)
        mask = self.mask if window is None else self.window_mask(window)
        out = attend(grid, keys, values, mask, scaling, softcap)  # (S, h, T, hd)
        flat = out.transpose(1, 2).reshape(segments * width, heads, head_dim)
        return flat[self.cell][:, None]  # (M, 1, h, hd)


@dataclass(frozen=True)
class StepGrid:
    """What every attention layer of an engine step needs: N new tokens, one per batch entry
    (the model runs on (N, 1)): first D one-token entries (decoding rows, or a chunk of one
    token), then, when the step has any, the packed tokens of its prefill chunks.

    Entry n writes its key and value at (rows[n], positions[n]). A one-token entry's query is
    placed on a grid of the cache's first R rows, at grid_index[d] (its own row; padding entries
    share a row no real entry uses); attention runs straight over the view cache[:R, :, :C],
    with no gathered copy of any row, and each entry reads its grid row of the result back.
    Grid rows that hold no entry attend to key 0 and their result is never read.
    grid_positions: (R,) query position of each grid row (0 where none); key_positions: (C,)
    0..C-1. The packed prefill tokens attend through `prefill` (`PackedPrefill`). Every size
    comes from a tensor's shape, so a compiler sees no Python number that varies per step.
    """

    cache: KVCache
    rows: torch.Tensor  # (N,)
    positions: torch.Tensor  # (N, 1)
    grid_index: torch.Tensor  # (D,)
    grid_positions: torch.Tensor  # (R,)
    key_positions: torch.Tensor  # (C,)
    mask: torch.Tensor  # (R, 1, 1, C)
    prefill: PackedPrefill | None = None
    _windows: dict[int, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, cache: KVCache, rows: torch.Tensor, positions: torch.Tensor,
              grid_index: torch.Tensor, grid_positions: torch.Tensor,
              key_positions: torch.Tensor, prefill: PackedPrefill | None = None) -> StepGrid:
        mask = causal_mask(key_positions, grid_positions[:, None])  # (R, 1, 1, C)
        return cls(cache, rows, positions, grid_index, grid_positions, key_positions, mask,
                   prefill)

    def window_mask(self, window: int) -> torch.Tensor:
        if window not in self._windows:
            self._windows[window] = windowed(self.mask, self.key_positions,
                                             self.grid_positions[:, None], window)
        return self._windows[window]

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None, window: int | None, softcap: float | None) -> torch.Tensor:
        """query: (N, heads, 1, hd); key, value: (N, kv_heads, 1, hd) -> (N, 1, heads, hd)."""
        self.cache.write(layer, self.rows, self.positions, key, value)
        entries = self.grid_index.shape[0]
        out = self._attend_grid(layer, query[:entries], scaling, window, softcap)
        if self.prefill is None:
            return out
        packed = self.prefill.attend_cached(layer, self.cache, query[entries:], scaling,
                                            window, softcap)
        return torch.cat([out, packed])

    def _attend_grid(self, layer: int, query: torch.Tensor, scaling: float | None,
                     window: int | None, softcap: float | None) -> torch.Tensor:
        """query: (D, heads, 1, hd) of the one-token entries -> (D, 1, heads, hd)."""
        grid = query.new_zeros((self.grid_positions.shape[0], *query.shape[1:]))  # (R, h, 1, hd)
        grid[self.grid_index] = query
        keys, values = self.cache.view(layer, grid.shape[0], self.key_positions.shape[0])
        mask = self.mask if window is None else self.window_mask(window)
        if ONE_QUERY_ON_CPU and torch.compiler.is_compiling() and grid.device.type == "cpu":
            out = one_query_attention(grid, keys, values, mask, scaling, softcap)
        else:
            out = attend(grid, keys, values, mask, scaling, softcap)  # (R, heads, 1, hd)
        return out[self.grid_index].transpose(1, 2).contiguous()  # (D, 1, heads, hd)


def causal_mask(key_positions: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """key_positions: (C,); positions: (B, T) -> (B, 1, T, C), True where a query sees a key."""
    return (key_positions[None, None, :] <= positions[:, :, None])[:, None]


def windowed(mask: torch.Tensor, key_positions: torch.Tensor, positions: torch.Tensor,
             window: int) -> torch.Tensor:
    """`mask` (B, 1, T, C) restricted to the last `window` keys of each query."""
    recent = key_positions[None, None, :] > positions[:, :, None] - window
    return mask & recent[:, None]


Step = StepMetadata | StepGrid


def install(model: Any) -> None:
    """Register Cameo's attention and make `model` use it (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, cameo_attention)
    AttentionMaskInterface.register(NAME, _fallback_mask)
    config = model.config
    current = config._attn_implementation
    if current != NAME:
        config._cameo_fallback = current or "sdpa"
        model.set_attn_implementation(NAME)


def _fallback_implementation(module: Any) -> Callable[..., Any]:
    """The attention function the model used before `install` (eager lives in each modeling
    file, the others in transformers' interface)."""
    import importlib

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = getattr(module.config, "_cameo_fallback", "sdpa")
    if name == "eager":
        function: Callable[..., Any] = importlib.import_module(
            type(module).__module__).eager_attention_forward
        return function
    return ALL_ATTENTION_FUNCTIONS[name]


def _fallback_mask(*args: Any, **kwargs: Any) -> Any:
    """The mask of the fallback implementation, for forwards without a Cameo step."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

    config = kwargs.get("config")
    name = getattr(config, "_cameo_fallback", "sdpa") if config is not None else "sdpa"
    if name == "eager":
        return eager_mask(*args, **kwargs)
    function = ALL_MASK_ATTENTION_FUNCTIONS.get(name, sdpa_mask)
    return function(*args, **kwargs)


def cameo_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None,
                    dropout: float = 0.0, sliding_window: int | None = None,
                    softcap: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query: (B, heads, T, hd); key, value: (B, kv_heads, T, hd) -> ((B, T, heads, hd), None)."""
    step: Step | None = kwargs.pop(STEP_KWARG, None)
    if step is None:
        return _fallback(module, query, key, value, attention_mask, scaling=scaling,
                         dropout=dropout, sliding_window=sliding_window, softcap=softcap, **kwargs)
    check_arguments(module, dropout, kwargs)
    return step.attend(module.layer_idx, query, key, value, scaling,
                       int(sliding_window) if sliding_window else None,
                       float(softcap) if softcap else None), None


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
           scaling: float | None, softcap: float | None) -> torch.Tensor:
    """query: (B, heads, T, hd); keys, values: (B, kv_heads, C, hd); mask: (B, 1, T, C)
    -> (B, heads, T, hd)."""
    if softcap:
        return _softcapped_attention(query, keys, values, mask, scaling, softcap)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling,
                                          enable_gqa=keys.shape[1] != query.shape[1])


def one_query_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        mask: torch.Tensor, scaling: float | None,
                        softcap: float | None) -> torch.Tensor:
    """`attend` for one query per row, written as broadcasts and sums that inductor fuses with
    the step's neighbouring operations into loops over the cache (docs/BENCHMARKS.md). For a
    compiled CPU step only: run eagerly, the broadcasts would be materialized.
    query: (R, heads, 1, hd); keys, values: (R, kv_heads, C, hd); mask: (R, 1, 1, C)
    -> (R, heads, 1, hd)."""
    rows, heads, _, head_dim = query.shape
    kv_heads = keys.shape[1]
    scale = scaling if scaling is not None else head_dim ** -0.5
    grouped = query.view(rows, kv_heads, heads // kv_heads, 1, 1, head_dim)  # (R, kv, g, 1, 1, hd)
    scores = (grouped * keys[:, :, None, None]).sum(-1) * scale  # (R, kv, g, 1, C)
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))  # no row is fully masked
    weights = torch.softmax(scores.float(), dim=-1).to(values.dtype)
    out = (weights[..., None] * values[:, :, None, None]).sum(-2)  # (R, kv, g, 1, hd)
    return out.view(rows, heads, 1, head_dim)


def check_arguments(module: Any, dropout: float, kwargs: dict[str, Any]) -> None:
    """Refuse anything this attention would otherwise ignore."""
    if not getattr(module, "is_causal", True):
        raise UnsupportedAttention(f"{type(module).__name__} is not causal")
    if dropout:
        raise UnsupportedAttention("attention dropout in a serving forward")
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in _INERT)
    if unknown:
        raise UnsupportedAttention(
            f"{type(module).__name__} passes attention arguments Cameo does not implement: "
            f"{', '.join(unknown)}")


def _softcapped_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                          mask: torch.Tensor, scaling: float | None,
                          softcap: float) -> torch.Tensor:
    """Attention with scores soft-capped as softcap * tanh(scores / softcap) (Gemma 2)."""
    groups = query.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(groups, dim=1)  # (B, heads, C, hd)
    values = values.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = (query @ keys.transpose(-1, -2)) * scale  # (B, heads, T, C)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores.float(), dim=-1).to(values.dtype)
    return weights @ values  # (B, heads, T, hd)


def _fallback(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    function = _fallback_implementation(module)
    arguments = {k: v for k, v in kwargs.items() if v is not None or k == "scaling"}
    return function(module, query, key, value, attention_mask, **arguments)


__all__ = ["NAME", "STEP_KWARG", "PackedPrefill", "Step", "StepGrid", "StepMetadata",
           "UnsupportedAttention", "attend", "cameo_attention", "causal_mask",
           "check_arguments", "install", "one_query_attention", "windowed"]
