"""The embedded default model: converted once, quantized to NF4, and it still knows things.

Example run: python -m pytest tests/model -q
"""

from __future__ import annotations

import bitsandbytes as bnb

from server.composition import Cameo
from server.engine.types import GenerationRequest, SamplingParams
from server.lora.slots import base_of
from server.model.embedded import converted_dir
from server.model.loader import LoadedModel
from server.settings import Settings
from tests.helpers import chat_prompt, run_requests
from tests.scoring import EngineProbe


def test_embedded_model_is_nf4_and_cached(embedded: LoadedModel, embedded_settings: Settings) -> None:
    q_proj = base_of(embedded.model.model.layers[0].self_attn.q_proj)
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.quant_state.quant_type == "nf4"
    assert (converted_dir(embedded_settings.cache_dir) / "model.safetensors").is_file()
    assert embedded.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_capital_of_france_is_paris(cameo: Cameo) -> None:
    prompt = chat_prompt(cameo.base.tokenizer, "What is the capital of France?")
    request = GenerationRequest("paris", prompt, SamplingParams(max_tokens=24, temperature=0.0))
    (result,) = run_requests(EngineProbe.of(cameo), [request])
    assert "Paris" in result.text, result.text
