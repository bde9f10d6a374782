"""The model's forward pass over a ragged batch, with the KV cache and per-row LoRA slots.

Contract: `ModelRunner.forward(batch)` takes B rows, each with up to T new tokens starting at its
own position, writes their keys and values into the row's KV cache, and returns logits:
(B, vocab) at each row's last new token, or (B, T, vocab) when all positions are asked for. The
same call serves prefill (many new tokens) and decode (one new token per row).

It reuses the Hugging Face module tree for weights (embeddings, norms, rotary tables, the
bitsandbytes or plain linear layers) but runs its own decoder loop: that is what lets rows sit at
different positions and use different adapters in one pass. Llama-style decoders only (Llama,
Mistral, Qwen2). It knows nothing about tokens as text, sampling, or requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from server.engine.kv_cache import KVCache
from server.lora.adapter import SUPPORTED_TARGETS, ModuleShapes
from server.lora.slots import LoraSlots, SlotLinear, SlotPlan, plan_slots


@dataclass(frozen=True)
class ForwardBatch:
    """One ragged pass. tokens: (B, T) right-padded; the rest are (B,)."""

    tokens: torch.Tensor
    rows: torch.Tensor  # KV-cache row of each batch row
    start: torch.Tensor  # position of each row's first new token
    lengths: torch.Tensor  # new tokens per row (<= T); the rest of the row is padding
    slots: torch.Tensor | None  # LoRA slot per row, None when every row is the base


class _Layer:
    """One decoder layer's modules, with its projections wrapped as slot-aware linears."""

    def __init__(self, hf_layer: Any, bank: LoraSlots, index: int) -> None:
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        self.input_norm = hf_layer.input_layernorm
        self.post_norm = hf_layer.post_attention_layernorm
        self.proj: dict[str, SlotLinear] = {}
        for name in SUPPORTED_TARGETS:
            base = getattr(attn if name in ("q_proj", "k_proj", "v_proj", "o_proj") else mlp, name)
            key = f"{index}.{name}"
            self.proj[name] = SlotLinear(base, bank.a[key], bank.b[key])


def module_shapes(hf_model: Any) -> ModuleShapes:
    """(in, out) of every LoRA-capable projection, keyed "<layer>.<proj>"."""
    shapes: ModuleShapes = {}
    for index, layer in enumerate(hf_model.model.layers):
        for name in SUPPORTED_TARGETS:
            parent = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
            module = getattr(parent, name)
            shapes[f"{index}.{name}"] = (module.in_features, module.out_features)
    return shapes


class ModelRunner:
    """Runs the decoder over ragged batches; owns the KV cache."""

    def __init__(self, hf_model: Any, bank: LoraSlots, max_rows: int, max_len: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        config = hf_model.config
        self.hf = hf_model
        self.dtype = dtype
        self.num_heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.vocab_size = config.vocab_size
        self.layers = [_Layer(layer, bank, i) for i, layer in enumerate(hf_model.model.layers)]
        self.lora_strategy = "auto"  # how the LoRA term is computed: auto, gather or segments
        self.cache = KVCache(len(self.layers), max_rows, self.kv_heads, max_len, self.head_dim,
                             dtype, device)

    def slot_linears(self) -> dict[str, SlotLinear]:
        """Every slot-aware projection, keyed "<layer>.<proj>" like the slot bank."""
        return {f"{index}.{name}": linear for index, layer in enumerate(self.layers)
                for name, linear in layer.proj.items()}

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, all_logits: bool = False) -> torch.Tensor:
        tokens = batch.tokens
        count, width = tokens.shape
        offsets = torch.arange(width, device=tokens.device)
        positions = batch.start[:, None] + offsets[None, :]  # (B, T)
        context = int((batch.start + batch.lengths).max())
        contiguous = bool(torch.equal(batch.rows, torch.arange(count, device=tokens.device)))
        # A query at position p sees keys 0..p of its own row: (B, 1, T, context).
        key_pos = torch.arange(context, device=tokens.device)
        mask = (key_pos[None, None, :] <= positions[:, :, None])[:, None]

        plan = plan_slots(batch.slots, self.lora_strategy)
        h = self.hf.model.embed_tokens(tokens).to(self.dtype)  # (B, T, hidden)
        cos, sin = self.hf.model.rotary_emb(h, positions)  # (B, T, head_dim) each
        for index, layer in enumerate(self.layers):
            h = h + self._attention(index, layer, layer.input_norm(h), batch.rows, plan,
                                    positions, cos, sin, mask, context, contiguous)
            h = h + self._mlp(layer, layer.post_norm(h), plan)
        h = self.hf.model.norm(h)
        if not all_logits:
            last = (batch.lengths - 1).clamp(min=0)
            h = h[torch.arange(count, device=h.device), last][:, None]  # (B, 1, hidden)
        logits = self.hf.lm_head(h).float()  # (B, T or 1, vocab)
        return logits if all_logits else logits[:, 0]

    def _attention(self, index: int, layer: _Layer, x: torch.Tensor, rows: torch.Tensor,
                   slots: SlotPlan | None, positions: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, mask: torch.Tensor, context: int,
                   contiguous: bool) -> torch.Tensor:
        count, width, _ = x.shape
        q = layer.proj["q_proj"](x, slots).view(count, width, self.num_heads, self.head_dim)
        k = layer.proj["k_proj"](x, slots).view(count, width, self.kv_heads, self.head_dim)
        v = layer.proj["v_proj"](x, slots).view(count, width, self.kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        q, k = _apply_rotary(q, k, cos, sin)
        self.cache.write(index, rows, positions, k, v)
        keys, values = self.cache.read(index, rows, context, contiguous)  # (B, kv, C, hd)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                             enable_gqa=self.kv_heads != self.num_heads)
        out = out.transpose(1, 2).reshape(count, width, self.num_heads * self.head_dim)
        return layer.proj["o_proj"](out, slots)

    @staticmethod
    def _mlp(layer: _Layer, x: torch.Tensor, slots: SlotPlan | None) -> torch.Tensor:
        gate = layer.proj["gate_proj"](x, slots)
        up = layer.proj["up_proj"](x, slots)
        return layer.proj["down_proj"](F.silu(gate) * up, slots)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding with per-row positions; cos, sin: (B, T, hd) -> broadcast over heads."""
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


__all__ = ["ForwardBatch", "ModelRunner", "module_shapes"]
