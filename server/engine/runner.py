"""One forward of the transformers model over a ragged batch, with Cameo's KV cache and LoRA slots.

Contract: `ModelRunner.forward(batch)` takes B rows, each with up to T new tokens starting at its
own position, writes their keys and values into the row's KV cache, and returns logits: (B,
vocab) at each row's last new token, or (B, T, vocab) when all positions are asked for. The
first is the engine's step: decode tokens and prefill chunks together in ONE forward (the
`EngineStep`: bucketed, free of host syncs, compiled when `compile` is on); the second, for
teacher-forced scoring, a ragged forward. The batch arrives as host integers, so neither reads
anything back from the device to plan the forward.

The model's own forward runs (`model(input_ids, position_ids, ...)`), so what makes a family
different (activations, norms, q/k norms, embedding and logit scaling, soft-capping, sliding and
global layers, biases, fused projections) comes from transformers. Cameo plugs in three things
at construction: its attention (`server.engine.attention`, over this runner's KV cache), a
`SlotHook` on every LoRA-capable linear of the decoder layers (`server.lora.slots`; the slot
plan is set once per forward), and a hook on `lm_head` that keeps each row's last new token
only (`step.install_output_selection`), so the family's own logit post-processing runs on (B,
1, vocab). A base the runner cannot serve faithfully raises `UnsupportedModel` here, at
construction, after a probe forward.

It knows nothing about tokens as text, sampling, or requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from server.engine import attention
from server.engine.attention import StepMetadata
from server.engine.kv_cache import INITIAL_CAPACITY, KVCache
from server.engine.step import EngineStep
from server.lora.adapter import ModuleShapes
from server.lora.slots import (
    LoraSlots,
    SlotLinear,
    attach_hooks,
    fused_groups,
    lora_targets,
    plan_slots,
    slot_step,
)
from server.model import weight_only
from server.model.loader import UnsupportedModel


@dataclass(frozen=True)
class ForwardBatch:
    """One ragged pass, as host integers: row b has the new tokens `tokens[b]` from position
    `start[b]` on, in KV-cache row `rows[b]`, on LoRA slot `slots[b]` (None: all the base)."""

    tokens: Sequence[Sequence[int]]
    rows: Sequence[int]
    start: Sequence[int]
    slots: Sequence[int] | None = None

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    @property
    def width(self) -> int:
        return max(self.lengths)

    def padded_tokens(self, device: torch.device) -> torch.Tensor:
        """(B, T) right-padded with 0."""
        width = self.width
        return torch.tensor([[*t, *[0] * (width - len(t))] for t in self.tokens], device=device)


def decoder_layers(hf_model: Any) -> nn.ModuleList:
    """The causal LM's list of decoder layers (`model.layers` in every supported family)."""
    layers = getattr(getattr(hf_model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedModel(_model_type(hf_model), "no model.layers list of decoder layers")
    return layers


def is_lora_target(module: nn.Module) -> bool:
    """A linear layer (plain, int4 or bitsandbytes) that a LoRA adapter may target."""
    if type(module) is nn.Linear or weight_only.is_int4(module):
        return True
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover - bitsandbytes is a dependency
        return False
    return isinstance(module, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt)


def module_shapes(hf_model: Any) -> ModuleShapes:
    """(in, out) of every LoRA-capable linear of the decoder layers, keyed "<layer>.<name>"."""
    try:
        targets = list(lora_targets(decoder_layers(hf_model), is_lora_target))
    except ValueError as exc:  # a leaf name twice in one layer
        raise UnsupportedModel(_model_type(hf_model), str(exc)) from exc
    linears: list[tuple[str, str, Any]] = [(key, path, m) for key, _, path, m in targets]
    return ModuleShapes({key: (m.in_features, m.out_features) for key, _, m in linears},
                        paths={key: path for key, path, _ in linears})


class ModelRunner:
    """Runs the transformers model over ragged batches; owns the KV cache and slot linears."""

    def __init__(self, hf_model: Any, bank: LoraSlots, max_rows: int, max_len: int,
                 dtype: torch.dtype, device: torch.device, compile: bool = False,
                 kv_capacity: int = INITIAL_CAPACITY) -> None:
        """`kv_capacity`: positions per row the KV cache holds before it first grows."""
        config = hf_model.config
        self.hf = hf_model
        self.dtype = dtype
        self.vocab_size = config.vocab_size
        layers = decoder_layers(hf_model)
        try:
            attention.install(hf_model)
        except (ValueError, KeyError) as exc:  # the family does not use the attention interface
            raise UnsupportedModel(config.model_type, str(exc)) from exc
        bases = attach_hooks(layers, is_lora_target)  # the bank was built from the same keys
        members = {key: (bank.fuse(keys), index) for keys in fused_groups(bases)
                   for index, key in enumerate(keys)}  # shared LoRA shrink per input
        bank.seal()  # one storage: the compiled step's inputs (server.lora.flat)
        self.linears = {key: SlotLinear(base, bank.a[key], bank.b[key], bank.ranks,
                                        members.get(key), bank.scales.get(key))
                        for key, base in bases.items()}
        self.lora_strategy = "auto"  # how the LoRA term is computed: auto, gather or segments
        self.device = device
        if compile and device.type == "cuda":  # CUDA graphs replay fixed addresses: all at once
            kv_capacity = max_len
        self.cache = KVCache(len(layers), max_rows, _kv_heads(config), max_len,
                             _head_dim(config), dtype, device, kv_capacity)
        try:
            self.step = EngineStep(hf_model, self.cache, self.linears, device)
        except ValueError as exc:  # no logits head to hook
            raise UnsupportedModel(config.model_type, str(exc)) from exc
        self._probe(device)
        if compile:
            self.step.compile()

    def slot_linears(self) -> dict[str, SlotLinear]:
        """Every slot-aware projection, keyed "<layer>.<name>" like the slot bank."""
        return self.linears

    def trim(self) -> None:
        """Give back the KV cache's growth; only while no row holds a live request."""
        self.cache.trim()

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, all_logits: bool = False) -> torch.Tensor:
        if not all_logits:
            self.step.lora_strategy = self.lora_strategy
            return self.step.run(batch.tokens, batch.rows, batch.start, batch.slots)
        return self._every_position(batch)

    def _every_position(self, batch: ForwardBatch) -> torch.Tensor:
        """The ragged forward: (B, T, vocab), every new token's logits (teacher-forced
        scoring), rows padded to the longest."""
        device = self.device
        tokens = batch.padded_tokens(device)  # (B, T)
        count, width = tokens.shape
        rows = torch.tensor(batch.rows, device=device)
        start = torch.tensor(batch.start, device=device)
        positions = start[:, None] + torch.arange(width, device=device)[None, :]  # (B, T)
        context = max(s + n for s, n in zip(batch.start, batch.lengths, strict=True))
        self.cache.reserve(context)
        contiguous = list(batch.rows) == list(range(count))
        step = StepMetadata.build(self.cache, rows, positions, context, contiguous)
        slots = torch.tensor(batch.slots, device=device) if batch.slots is not None else None
        plan = plan_slots(slots, self.lora_strategy,
                          values=list(batch.slots) if batch.slots is not None else None)
        with slot_step(self.linears, plan):
            out = self.hf(input_ids=tokens, position_ids=positions, attention_mask=step.mask,
                          use_cache=False, **{attention.STEP_KWARG: step})
        return out.logits.float()  # (B, T, vocab)

    def _probe(self, device: torch.device) -> None:
        """One tiny forward at load, so that unsupported attention is refused now."""
        try:
            self.forward(ForwardBatch(tokens=[[0, 0]], rows=[0], start=[0]))
            self.forward(ForwardBatch(tokens=[[0]], rows=[0], start=[2]))
        except Exception as exc:  # refused attention, or a forward that cannot run at all
            raise UnsupportedModel(self.hf.config.model_type, str(exc)) from exc


def _model_type(hf_model: Any) -> str:
    return str(getattr(getattr(hf_model, "config", None), "model_type", type(hf_model).__name__))


def _kv_heads(config: Any) -> int:
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


__all__ = ["ForwardBatch", "ModelRunner", "decoder_layers", "is_lora_target", "module_shapes"]
