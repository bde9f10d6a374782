"""What is supported is what is tested: every family of the matrix, in `none`, `nf4` and `int4`,
against transformers' own forward, `generate` and PEFT on the same weights.

Each case loads the tiny random model twice: the engine's copy (Cameo's attention, KV cache and
slot hooks plugged in) and an untouched reference copy. NF4 and int4 loads are deterministic, and both
copies run the same kernel path (on an AVX512-BF16 CPU both repack at their first
forward), so the references are computed on the path they check. Tolerances: `tests.numerics`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from server.engine.runner import ForwardBatch, ModelRunner, module_shapes
from server.lora.adapter import read_adapter
from server.lora.slots import LoraSlots
from server.model.loader import LoadedModel, load_base
from server.model.weight_only import with_peft_layers
from server.settings import Settings
from tests.helpers import write_peft_adapter
from tests.model.families import FAMILIES, WINDOW, build_family
from tests.numerics import assert_logits_close, clear_positions, logits_tolerance

PROMPT = "The quick brown fox jumps over the lazy dog and keeps running far away"
CHUNK = 5  # the prompt is prefilled in two chunks, the first shorter than the window
MAX_ROWS, MAX_LEN, RANK = 3, 64, 8


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory, embedded: LoadedModel) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, root / name, embedded.tokenizer) for name in FAMILIES}


class Case:
    """One family in one format: the engine's runner, a reference copy, a persona adapter."""

    def __init__(self, folder: Path, quantization: str, adapter_dir: Path) -> None:
        settings = Settings(base_model=str(folder), quantization=quantization, device="cpu")
        self.reference = load_base(settings).model
        self.fresh = lambda: load_base(settings).model
        loaded = load_base(settings)
        self.model = loaded.model
        self.shapes = module_shapes(self.model)
        self.bank = LoraSlots(self.shapes, 1, RANK, torch.float32, torch.device("cpu"))
        self.bank.write(1, read_adapter(adapter_dir, self.shapes, RANK))
        self.runner = ModelRunner(self.model, self.bank, MAX_ROWS, MAX_LEN, loaded.dtype,
                                  loaded.device)
        self.adapter_dir = adapter_dir

    def prefill(self, ids: list[int], row: int, slot: int) -> torch.Tensor:
        """Run `ids` through the runner in two chunks on cache `row`: (len, vocab) logits."""
        parts = [ids[:CHUNK], ids[CHUNK:]]
        logits = [self.runner.forward(_batch([part], [row], [start], [slot]), all_logits=True)[0]
                  for part, start in zip(parts, (0, CHUNK), strict=True)]
        return torch.cat(logits)

    def greedy(self, ids: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
        """Greedy decode on row 0 with the base: the tokens and each step's logits."""
        last = self.prefill(ids, row=0, slot=0)[-1]
        tokens, logits = [], []
        for position in range(len(ids), len(ids) + steps):
            logits.append(last)
            tokens.append(int(last.argmax()))
            last = self.runner.forward(_batch([[tokens[-1]]], [0], [position], [0]))[0]
        return tokens, torch.stack(logits)


def _batch(tokens: list[list[int]], rows: list[int], starts: list[int],
           slots: list[int]) -> ForwardBatch:
    return ForwardBatch(tokens, rows, starts, slots if any(slots) else None)


@pytest.fixture(scope="module", params=[(f, q) for f in FAMILIES for q in ("none", "nf4", "int4")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def case(request: pytest.FixtureRequest, family_dirs: dict[str, Path],
         tmp_path_factory: pytest.TempPathFactory) -> Case:
    family, quantization = request.param
    folder = family_dirs[family]
    adapter_dir = tmp_path_factory.mktemp(f"{family}-adapter")
    plain = load_base(Settings(base_model=str(folder), quantization="none", device="cpu")).model
    write_peft_adapter(plain, adapter_dir, seed=7, rank=RANK, targets="all-linear", b_scale=3.0)
    return Case(folder, quantization, adapter_dir)


def _ids(case: Case, text: str = PROMPT) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(case.model.config.name_or_path)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > WINDOW + CHUNK
    return ids


def _reference_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].float()  # (T, vocab)


def test_base_logits_equal_transformers_forward(case: Case) -> None:
    ids = _ids(case)
    expected = _reference_logits(case.reference, ids)
    ours = case.prefill(ids, row=1, slot=0)
    assert_logits_close(ours, expected, logits_tolerance(case.model, expected))


def test_outside_a_step_the_model_is_plain_transformers(case: Case) -> None:
    """Training, PEFT and `generate` run on the engine's module tree too: with no Cameo step the
    hooks are the plain layers and attention is the model's previous implementation."""
    ids = _ids(case)
    expected = _reference_logits(case.reference, ids)
    assert_logits_close(_reference_logits(case.model, ids), expected,
                        logits_tolerance(case.model, expected))


def test_sliding_window_is_honoured(case: Case) -> None:
    """The reference without its window differs: the window matters to the check above."""
    config = case.reference.config
    windowed = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    if not windowed or case.model.config.model_type == "phi3":
        pytest.skip("no sliding window shorter than the prompt in this family")
    ids = _ids(case)
    ours = case.prefill(ids, row=1, slot=0)
    config.sliding_window = 10 * MAX_LEN  # the reference's masks now cover every key
    try:
        unwindowed = _reference_logits(case.reference, ids)
    finally:
        config.sliding_window = WINDOW
    assert (ours - unwindowed).abs().max() > 10 * logits_tolerance(case.model, unwindowed)


def test_greedy_text_equals_generate(case: Case) -> None:
    ids = _ids(case)
    tokens, logits = case.greedy(ids, steps=8)
    with torch.no_grad():
        generated = case.reference.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                            min_new_tokens=8)[0, len(ids):].tolist()
    # Equal until the first difference, which may only come where our top-2 margin is within
    # the kernel path's noise (a near-tie); from there on the continuations legitimately differ.
    tolerance = logits_tolerance(case.model, logits)
    clear = clear_positions(logits, tolerance)
    agreed = 0
    for step, (ours, theirs) in enumerate(zip(tokens, generated, strict=True)):
        if ours != theirs:
            assert not clear[step], f"step {step}: {ours} != {theirs} with a clear margin"
            break
        agreed += 1
    assert agreed > 0 or not clear[0]


def test_persona_equals_peft(case: Case) -> None:
    from peft import LoraConfig, PeftModel

    ids = _ids(case)
    config = with_peft_layers(LoraConfig.from_pretrained(case.adapter_dir))
    peft_model = PeftModel.from_pretrained(case.fresh(), case.adapter_dir, config=config)
    expected = _reference_logits(peft_model, ids)
    base = _reference_logits(case.reference, ids)
    tolerance = logits_tolerance(case.model, expected)
    assert (expected - base).abs().max() > 10 * tolerance  # the adapter matters
    ours = case.prefill(ids, row=2, slot=1)
    assert_logits_close(ours, expected, tolerance)


def test_mixed_batch_equals_each_alone(case: Case) -> None:
    """Base and persona rows of different lengths in one forward, teacher-forced."""
    ids = _ids(case)
    other = _ids(case, "A rainy day in the old city of tall glass towers and narrow streets")
    alone = [case.prefill(ids, row=0, slot=0), case.prefill(other, row=1, slot=1)]
    mixed = case.runner.forward(_batch([ids, other], [2, 0], [0, 0], [0, 1]), all_logits=True)
    for row, (expected, length) in enumerate(zip(alone, (len(ids), len(other)), strict=True)):
        assert_logits_close(mixed[row, :length], expected, logits_tolerance(case.model, expected))
