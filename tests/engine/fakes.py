"""A fake runner, slot bank and tokenizer: the engine and scheduler without a model.

`CountingRunner` predicts token `(last + 1 + slot) % VOCAB` for each row (so a row's adapter
slot is visible in what it generates) and records every forward it ran; `FailingRunner` raises
on the forwards a test chooses. `FakeBank` stands for `LoraSlots` (writes are recorded, nothing
is allocated). `CharTokenizer` decodes token i as chr(ord('a') + i).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from server.engine.engine import Engine, EngineConfig
from server.engine.runner import ForwardBatch
from server.engine.types import GenerationRequest, RequestOutput, SamplingParams
from server.lora.adapter import AdapterWeights
from server.lora.manager import SlotManager
from server.lora.ref import AdapterRef

VOCAB = 26
EOS = 25


class CharTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(ord("a") + i) for i in ids if i != EOS)


@dataclass
class CountingRunner:
    forwards: list[ForwardBatch] = field(default_factory=list)
    fail_on: Callable[[ForwardBatch], bool] = lambda batch: False
    trims: int = 0  # idle steps that gave memory back

    def forward(self, batch: ForwardBatch, all_logits: bool = False) -> torch.Tensor:
        if self.fail_on(batch):
            raise RuntimeError("the fake forward failed")
        self.forwards.append(batch)
        tokens = batch.padded_tokens(torch.device("cpu"))  # (B, T)
        slots = torch.tensor(batch.slots or [0] * len(batch.rows))
        nxt = (tokens + 1 + slots[:, None]) % VOCAB  # (B, T)
        logits = torch.nn.functional.one_hot(nxt, VOCAB).float() * 10.0  # (B, T, V)
        if all_logits:
            return logits
        last = torch.tensor(batch.lengths) - 1
        return logits[torch.arange(len(batch.rows)), last]  # (B, V)

    def slot_linears(self) -> dict[str, Any]:
        return {}

    def trim(self) -> None:
        self.trims += 1


class FakeBank:
    def __init__(self, slots: int) -> None:
        self.num_slots = slots + 1
        self.writes: list[int] = []

    def write(self, slot: int, adapter: AdapterWeights) -> None:
        self.writes.append(slot)

    def clear(self, slot: int) -> None:
        pass


def make_engine(*, rows: int = 4, slots: int = 2, max_context: int = 64, chunk: int = 16,
                runner: CountingRunner | None = None) -> Engine:
    bank = FakeBank(slots)
    config = EngineConfig(max_rows=rows, max_context=max_context, adapter_slots=slots,
                          max_lora_rank=8, prefill_chunk_tokens=chunk)
    return Engine(runner or CountingRunner(), SlotManager(bank), config,  # type: ignore[arg-type]
                  tokenizer=CharTokenizer(), eos_token_ids={EOS}, device=torch.device("cpu"),
                  grammars=_no_grammars)


def _no_grammars() -> Any:
    raise AssertionError("no grammar in these tests")


def weights() -> AdapterWeights:
    return AdapterWeights(rank=1, alpha=1.0, use_rslora=False, target_modules=frozenset(),
                          base_model=None, modules={})


def ref(name: str, version: int = 1) -> AdapterRef:
    return AdapterRef(name, version, Path("/nonexistent") / name)


def request(rid: str, prompt: tuple[int, ...] = (0, 1, 2), *, tokens: int = 3,
            adapter: AdapterRef | None = None, deadline: float | None = None,
            seed: int | None = None) -> GenerationRequest:
    return GenerationRequest(rid, prompt, SamplingParams(max_tokens=tokens, temperature=0.0,
                                                         seed=seed),
                             adapter=adapter, deadline=deadline)


class Outputs:
    """Every output the engine sent, by request id."""

    def __init__(self) -> None:
        self.by_id: dict[str, list[RequestOutput]] = {}
        self.finished: list[str] = []  # request ids in the order they finished

    def sink(self, output: RequestOutput) -> None:
        self.by_id.setdefault(output.request_id, []).append(output)
        if output.finished:
            self.finished.append(output.request_id)

    def tokens(self, rid: str) -> list[int]:
        return [t for o in self.by_id.get(rid, []) for t in o.token_ids]

    def last(self, rid: str) -> RequestOutput:
        return self.by_id[rid][-1]


def run(engine: Engine, steps: int = 100) -> int:
    """Step until idle; returns the steps taken."""
    for taken in range(steps):
        if engine.idle:
            return taken
        engine.step()
    raise AssertionError(f"the engine was still busy after {steps} steps")
