"""The runner with the Triton LoRA kernels computes what it computes with the gathered path.

A tiny random Llama keeps Triton's interpreter fast on the CPU; on a CUDA machine the same test
runs the compiled kernels. Ragged rows (different positions and lengths), slot 0 rows and
several ranks in one batch, for a prefill pass and a decode pass.
"""

from __future__ import annotations

import pytest
import torch

from server.engine.runner import ForwardBatch, ModelRunner, module_shapes
from server.lora.slots import LoraSlots

pytest.importorskip("triton")
from server.lora import kernels

ON_GPU = torch.cuda.is_available()
if not ON_GPU and not kernels.interpreted():
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
TOL = 3e-2 if ON_GPU else 1e-4  # bfloat16 on the GPU, float32 in the interpreter


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                         max_position_embeddings=64)
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    model = LlamaForCausalLM(config).to(DEVICE, dtype).eval()
    bank = LoraSlots(module_shapes(model), 3, 16, dtype, DEVICE)
    for index, rank in enumerate((16, 8, 4), start=1):  # three adapters of different ranks
        bank.ranks[index] = rank  # written by hand, so the real rank too (LoraSlots.write)
        for key in bank.a:
            bank.a[key][index, :rank].normal_(0, 0.2)
            bank.b[key][index, :, :rank].normal_(0, 0.2)
    return ModelRunner(model, bank, max_rows=4, max_len=48, dtype=dtype, device=DEVICE)


def _forward(runner: ModelRunner, batch: ForwardBatch, strategy: str) -> torch.Tensor:
    runner.lora_strategy = strategy
    try:
        return runner.forward(batch, all_logits=True).float()
    finally:
        runner.lora_strategy = "auto"


def _batch(tokens: list[list[int]], start: list[int], slots: list[int]) -> ForwardBatch:
    return ForwardBatch(tokens, list(range(len(tokens))), start, slots)


def test_prefill_then_decode_match_the_gathered_path(runner: ModelRunner) -> None:
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 128, (n,), generator=generator).tolist() for n in (9, 3, 20, 1)]
    slots = [1, 0, 3, 2]
    prefill = _batch(prompts, [0, 0, 0, 0], slots)
    reference = _forward(runner, prefill, "gather")
    kernel = _forward(runner, prefill, "triton")  # rewrites the same KV entries
    for row, prompt in enumerate(prompts):
        diff = (reference[row, :len(prompt)] - kernel[row, :len(prompt)]).abs().max().item()
        assert diff <= TOL * max(1.0, reference[row].abs().max().item()), (row, diff)

    decode = _batch([[5], [6], [7], [8]], [len(p) for p in prompts], slots)
    reference = _forward(runner, decode, "gather")
    kernel = _forward(runner, decode, "triton")
    assert (reference - kernel).abs().max().item() <= TOL * max(1.0, reference.abs().max().item())
    plain = _forward(runner, _batch([[5], [6], [7], [8]], [len(p) for p in prompts], [0] * 4),
                     "gather")
    assert torch.equal(plain[1], reference[1])  # the slot-0 row is the base in both
    assert (plain[0] - reference[0]).abs().max() > 10 * TOL  # the adapters matter
