"""Fused projections in the engine: one int4 matmul per shared input and step, same logits.

A tiny random Llama quantized to int4 (`weight_only.quantize_linears` fuses q/k/v and gate/up),
with two adapters in its slot bank. Within one forward of the runner, each fused layer runs
exactly once (counted by a forward hook), ragged or decode; the logits equal those of the same
model whose projections each run the fused matmul on their own (the slices called alone), and
the compiled decode step (`fullgraph=True`: no graph break) gives the eager step's logits. The
LoRA term of a fused group starts with one shrink per input (`LoraGroup`), and gives what each
projection's own LoRA term gives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from server.engine.runner import ForwardBatch, ModelRunner, module_shapes
from server.lora.slots import LoraGroup, LoraSlots
from server.model import weight_only
from server.model.weight_only import Int4Slice
from tests.numerics import SAFETY

BF16_EPS = torch.finfo(torch.bfloat16).eps
ROWS, SLOTS = [2, 0, 5], [1, 0, 2]
PROMPTS = [[5, 9, 2, 7], [7] * 6, [1, 2, 3]]


def _model() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                         max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    weight_only.quantize_linears(model)
    return model


def _runner(model: nn.Module, compile: bool = False) -> ModelRunner:
    bank = LoraSlots(module_shapes(model), 2, 8, torch.float32, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    for slot in (1, 2):
        bank.ranks[slot] = 8
        for key in bank.a:
            bank.a[key][slot].normal_(0, 0.2, generator=generator)
            bank.b[key][slot].normal_(0, 0.2, generator=generator)
    return ModelRunner(model, bank, 8, 32, torch.float32, torch.device("cpu"), compile=compile)


def _fused_layers(model: nn.Module) -> list[nn.Module]:
    found = {id(m.fused_rows[0]): m.fused_rows[0] for m in model.modules()
             if isinstance(m, Int4Slice)}
    return list(found.values())


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return _model()


def _counting(layers: list[nn.Module]) -> tuple[Counter[int], list[object]]:
    calls: Counter[int] = Counter()
    handles = [layer.register_forward_hook(
        lambda module, args, out: calls.update([id(module)])) for layer in layers]
    return calls, handles


def test_each_fused_layer_runs_once_per_forward(model: nn.Module) -> None:
    runner = _runner(model)
    layers = _fused_layers(model)
    assert len(layers) == 2 * 2  # q/k/v and gate/up in each of the two layers
    calls, handles = _counting(layers)
    try:
        runner.forward(ForwardBatch(PROMPTS, ROWS, [0, 0, 0], SLOTS))  # ragged: a prefill
        assert sorted(calls.values()) == [1] * len(layers)
        calls.clear()
        positions = [len(p) for p in PROMPTS]
        runner.forward(ForwardBatch([[3], [4], [5]], ROWS, positions, SLOTS))  # decode step
        assert sorted(calls.values()) == [1] * len(layers)
    finally:
        for handle in handles:
            handle.remove()  # type: ignore[attr-defined]


def test_shared_outputs_give_the_logits_of_slices_run_alone(model: nn.Module) -> None:
    """The slot path with each projection computed on its own (its slice of a full fused
    matmul, as outside a step) against the shared path: the same arithmetic, so equal up to
    the bfloat16 rounding of the kernel's output."""
    runner = _runner(model)
    ids = torch.tensor([PROMPTS[0]])
    with torch.inference_mode():
        alone = model(ids).logits[0, -1]  # no step: every slice runs the fused layer itself
    shared = runner.forward(ForwardBatch([PROMPTS[0]], [0], [0], None))[0]
    tolerance = SAFETY * BF16_EPS * float(alone.abs().max())
    assert float((shared - alone).abs().max()) <= tolerance


@pytest.fixture
def fresh_compiler() -> Iterator[None]:
    """An empty dynamo cache during the test, and again after it. Under `make test-compiled`
    this process has compiled the step for a dozen runners of the embedded model (one code
    object, one cache of graphs and of the sizes seen); tracing this tiny model's step as one
    more entry failed inside torch (2.13) while building shape guards ("sources must not be
    empty for symbol ..."), and with its traces left in the cache the next merged-mode tests
    failed in one run (they pass alone). A server compiles one model per process."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_compiler")
def test_the_compiled_step_with_fused_layers_matches_the_eager_one(model: nn.Module) -> None:
    eager, compiled = _runner(model), _runner(model, compile=True)
    assert compiled.step.compiled is not None
    positions = [len(p) for p in PROMPTS]
    results = []
    for runner in (eager, compiled):
        runner.forward(ForwardBatch(PROMPTS, ROWS, [0, 0, 0], SLOTS))
        results.append(runner.forward(ForwardBatch([[3], [4], [5]], ROWS, positions, SLOTS)))
    tolerance = SAFETY * BF16_EPS * float(results[0].abs().max())
    assert float((results[0] - results[1]).abs().max()) <= tolerance


@pytest.mark.parametrize("strategy", ["gather", "segments"])
def test_a_fused_group_shrinks_once_and_gives_each_projections_own_lora_term(
        model: nn.Module, strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = _runner(model)
    runner.lora_strategy = strategy
    grouped = [linear for linear in runner.linears.values() if linear.group is not None]
    assert len(grouped) == 2 * 5  # q, k, v, gate and up of each layer
    shrinks: Counter[str] = Counter()
    for name in ("shrink", "shrink_one"):
        original = getattr(LoraGroup, name)

        def counted(self: LoraGroup, *args: object, _name: str = name,
                    _original: object = original) -> torch.Tensor:
            shrinks[_name] += 1
            return _original(self, *args)  # type: ignore[operator, no-any-return]

        monkeypatch.setattr(LoraGroup, name, counted)
    positions = [len(p) for p in PROMPTS]
    prefill = ForwardBatch(PROMPTS, ROWS, [0, 0, 0], SLOTS)
    decode = ForwardBatch([[3], [4], [5]], ROWS, positions, SLOTS)
    fused = [runner.forward(prefill), runner.forward(decode)]
    groups, segments = 2 * 2, len(set(SLOTS) - {0})
    expected = ({"shrink": 2 * groups} if strategy == "gather"
                else {"shrink_one": 2 * groups * segments})
    assert shrinks == expected
    for linear in grouped:
        linear.group = None  # each projection's own x @ A^T @ B^T
    apart = [runner.forward(prefill), runner.forward(decode)]
    for got, want in zip(fused, apart, strict=True):  # float32 LoRA sums, bfloat16 activations
        assert float((got - want).abs().max()) <= SAFETY * BF16_EPS * float(want.abs().max())
    assert float((fused[0] - runner.forward(ForwardBatch(PROMPTS, ROWS, [0, 0, 0], None))
                  ).abs().max()) > 1e-3  # the adapters do change the logits
