"""A request that cannot be sampled fails alone: its row and slot are freed, the batch goes on.

Also the seeded path on CUDA (marked `gpu`): the generator lives on the logits' device.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from server.engine.types import GenerationRequest, SamplingParams
from server.model.loader import LoadedModel
from tests.conftest import CameoFactory
from tests.helpers import GreedyPath, chat_prompt, run_requests
from tests.scoring import EngineProbe


def _request(tokenizer: object, name: str, **sampling: object) -> GenerationRequest:
    prompt = chat_prompt(tokenizer, "Name three colours.")
    return GenerationRequest(name, prompt, SamplingParams(max_tokens=6, **sampling))  # type: ignore[arg-type]


def test_a_seed_out_of_range_fails_that_request_only(make_cameo: CameoFactory) -> None:
    cameo = make_cameo()
    tokenizer = cameo.base.tokenizer
    bad, good, seeded = run_requests(EngineProbe.of(cameo), [
        _request(tokenizer, "bad", temperature=1.0, seed=2**64),
        _request(tokenizer, "good", temperature=0.0),
        _request(tokenizer, "seeded", temperature=1.0, seed=7)])
    assert bad.outputs[-1].error_code == "invalid_seed" and not bad.token_ids
    assert good.finish_reason == "length" and len(good.token_ids) == 6
    assert seeded.finish_reason == "length" and len(seeded.token_ids) == 6
    after = _request(tokenizer, "after", temperature=0.0)
    again = run_requests(EngineProbe.of(cameo), [after])[0]
    # its row was freed and nothing was left behind: the same greedy reply, up to a near-tie
    GreedyPath(EngineProbe.of(cameo), after.prompt_ids, good.token_ids, good.text,
               None).assert_followed_by(again.text)


def test_a_row_whose_sampling_raises_fails_alone(make_cameo: CameoFactory) -> None:
    cameo = make_cameo()
    tokenizer = cameo.base.tokenizer
    # A NaN temperature makes every probability NaN: torch.multinomial raises for that row.
    broken, greedy = run_requests(EngineProbe.of(cameo), [
        _request(tokenizer, "nan", temperature=float("nan")),
        _request(tokenizer, "greedy", temperature=0.0)])
    assert broken.outputs[-1].error_code == "sampling_error"
    assert greedy.finish_reason == "length" and len(greedy.token_ids) == 6
    after = _request(tokenizer, "after", temperature=0.0)
    again = run_requests(EngineProbe.of(cameo), [after])[0]
    GreedyPath(EngineProbe.of(cameo), after.prompt_ids, greedy.token_ids, greedy.text,
               None).assert_followed_by(again.text)  # nothing was left behind


@pytest.mark.gpu
def test_a_seeded_request_samples_on_cuda(embedded: LoadedModel) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from server.engine.engine import EngineConfig
    from server.service.local import LocalEngineService

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=len(embedded.tokenizer))
    model = LlamaForCausalLM(config).cuda().eval()
    loaded = dataclasses.replace(embedded, model=model, model_id="tiny",
                                 device=torch.device("cuda"), dtype=torch.float32,
                                 quantization="none")
    engine = LocalEngineService.over(loaded, EngineConfig(
        max_rows=2, max_context=64, adapter_slots=1, max_lora_rank=4, prefill_chunk_tokens=64))
    engine.start()
    try:
        request = GenerationRequest("s", (1, 2, 3), SamplingParams(max_tokens=5, seed=3, ignore_eos=True))
        first, second = (run_requests(engine, [request])[0] for _ in range(2))
        assert first.finish_reason == "length" and first.token_ids == second.token_ids
    finally:
        engine.close()
