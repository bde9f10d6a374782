"""Random LoRA adapters for the benchmarks: one rank on every module of a slot bank, written
through `LoraSlots.write` as a served adapter is (so an int8 bank quantizes them)."""

from __future__ import annotations

import torch

from server.lora.adapter import AdapterWeights
from server.lora.slots import LoraSlots


def random_adapter(bank: LoraSlots, rank: int, seed: int, std: float) -> AdapterWeights:
    """An adapter of `rank` on every module of `bank`, A and B drawn from N(0, std^2), scale 1."""
    generator = torch.Generator().manual_seed(seed)
    modules = {key: (torch.randn(rank, a.shape[2], generator=generator) * std,
                     torch.randn(bank.b[key].shape[1], rank, generator=generator) * std, 1.0)
               for key, a in bank.a.items()}
    return AdapterWeights(rank=rank, alpha=float(rank), use_rslora=False,
                          target_modules=frozenset(key.split(".")[-1] for key in modules),
                          base_model=None, modules=modules)


def fill(bank: LoraSlots, slots: int, rank: int, std: float) -> None:
    """Write a random adapter (seed = slot) into slots 1..`slots`."""
    for slot in range(1, slots + 1):
        bank.write(slot, random_adapter(bank, rank, seed=slot, std=std))
