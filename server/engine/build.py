"""Assembling an engine over a loaded base: slot bank, slot manager, model runner, engine.

Contract: `build_engine(loaded, config)` returns an `Engine` (not started: wrap it in an
`EngineWorker`) whose runner is the base's own transformers forward with Cameo's attention, KV
cache and LoRA slots plugged in. It raises `UnsupportedModel` for a base the runner cannot
serve faithfully. Nothing else here: tests build engines over fake runners with `Engine(...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch

from server.engine.constraints import Grammars
from server.engine.engine import Engine, EngineConfig
from server.engine.runner import ModelRunner, module_shapes
from server.lora.manager import SlotManager
from server.lora.slots import LoraSlots
from server.model import cpu
from server.model.loader import LoadedModel


def build_engine(loaded: LoadedModel, config: EngineConfig,
                 grammars: Callable[[], Grammars] | None = None) -> Engine:
    """`grammars`: returns the compiled-grammar cache to share with the API (by default one
    of the engine's own, built on first use)."""
    bank = LoraSlots(module_shapes(loaded.model), config.adapter_slots, config.max_lora_rank,
                     bank_dtype(loaded, config.compile, config.lora_bank), loaded.device)
    runner = ModelRunner(loaded.model, bank, config.max_rows, config.max_context, loaded.dtype,
                         loaded.device, compile=config.compile)
    return Engine(runner, SlotManager(bank), config, tokenizer=loaded.tokenizer,
                  eos_token_ids=loaded.eos_token_ids, device=loaded.device,
                  grammars=grammars or grammars_for(loaded))


def bank_dtype(loaded: LoadedModel, compiled: bool, choice: str = "auto") -> torch.dtype:
    """The slot bank's storage dtype: `choice` unless it is `auto` (an int8 bank on a GPU
    raises, in `LoraSlots`). auto: the model's dtype on a GPU. On a CPU float32 (without
    AVX512-BF16, eager bfloat16 matmuls of many rows are slower there), except under the
    compiled step over the CPU's int4 layers: there the rows' adapter reads are a large share
    of the LoRA term's cost, and int8 codes (`server.lora.int8`) halve them (8 rows on 8
    adapters: 0.81 -> 0.84 of the base step against a bfloat16 bank, which had itself beaten
    float32: docs/BENCHMARKS.md), on CPUs with AVX-512 only: with AVX2 the compiled code reads
    the codes through partial loads that go by a stack buffer (0.605 of the base step against
    0.835 with float32; a bfloat16 bank is no faster there, 0.844 against 0.832)."""
    if choice != "auto":
        return getattr(torch, choice)
    if loaded.device.type != "cpu":
        return loaded.dtype
    int8_pays = cpu.torch_runs_avx512()
    return torch.int8 if compiled and loaded.quantization == "int4" and int8_pays \
        else torch.float32


def grammars_for(loaded: LoadedModel) -> Callable[[], Grammars]:
    """A builder of the base's compiled-grammar cache, built once on first call (compiling
    the tokenizer's vocabulary takes a moment, so a server that never sees a grammar skips it)."""
    @cache
    def build() -> Grammars:
        return Grammars(loaded.tokenizer, vocab_size(loaded.model), sorted(loaded.eos_token_ids))
    return build


def vocab_size(model: Any) -> int:
    """Width of the logits (the output head's rows; may exceed the tokenizer's size)."""
    head = model.get_output_embeddings()
    width = getattr(head, "out_features", None)  # an nn.Linear, or the CPU's Int8Linear head
    return int(width if width is not None else head.weight.shape[0])
