"""NF4 layers in both CPU layouts: read exactly, lent out for training, put back bit-exactly.

On a CPU without AVX512-BF16 bitsandbytes never repacks a layer by itself, so these tests repack
with bitsandbytes' own conversion (the code it runs at a layer's first forward on such a CPU).
Nothing here runs a repacked layer's forward, which needs the fused kernel; the suite covers that
path on an AVX512-BF16 CPU, or through tests/emulation (`make test-avx512bf16`) elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch

from adapters.training.train import TrainConfig, train
from server.lora.merge import merge_slot
from server.lora.slots import LoraSlots, SlotLinear
from server.model import nf4
from server.model.loader import LoadedModel, load_base
from server.settings import Settings
from tests.model.families import build_family


def _repack(layer: Any) -> None:
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    layer.weight.data, state = _convert_weight_packed_for_cpu(layer.weight.data,
                                                              layer.weight.quant_state)
    layer.weight.quant_state = layer.quant_state = state


def _absmax(state: Any) -> torch.Tensor:
    """The float32 block scales of a standard-layout state, double quantization undone."""
    if not state.nested:
        return state.absmax.float().clone()
    return bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset


def _nf4_layers(model: Any) -> list[Any]:
    return [m for m in model.modules() if nf4.is_nf4(m)]


@pytest.fixture()
def tiny(tmp_path: Path, embedded: LoadedModel) -> LoadedModel:
    folder = build_family("llama-gqa-tied", tmp_path / "tiny", embedded.tokenizer)
    return load_base(Settings(base_model=str(folder), quantization="nf4", device="cpu",
                              cache_dir=tmp_path / "cache"))


@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16])
def test_a_repacked_layer_reads_as_its_codes_times_bf16_absmax(storage: torch.dtype) -> None:
    torch.manual_seed(0)
    weight = torch.randn(96, 128)
    layer = bnb.nn.Linear4bit(128, 96, bias=False, quant_type="nf4", quant_storage=storage)
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                     quant_storage=storage).to("cpu")
    standard_bytes = layer.weight.data.clone()
    standard = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    absmax = _absmax(layer.weight.quant_state)
    _repack(layer)
    assert nf4.is_repacked(layer)
    data, state = nf4.standard_copy(layer)
    assert torch.equal(data.view(torch.uint8), standard_bytes.view(torch.uint8))  # codes exact
    # absmax is kept in bfloat16 by the repack: the values are the standard ones, so rounded.
    assert torch.equal(state.absmax, absmax.to(torch.bfloat16).float())
    rounded = bnbf.dequantize_4bit(standard_bytes, bnbf.QuantState(
        absmax=absmax.to(torch.bfloat16).float(), shape=state.shape, code=state.code,
        blocksize=state.blocksize, quant_type="nf4", dtype=state.dtype))
    assert torch.equal(nf4.dense_weight(layer), rounded)
    torch.testing.assert_close(rounded, standard, rtol=2**-8, atol=0)  # and close to the original
    assert nf4.is_repacked(layer)  # reading changed nothing


def test_standard_layout_lends_every_layer_and_restores_the_same_objects(tiny: LoadedModel) -> None:
    layers = _nf4_layers(tiny.model)
    for layer in layers:
        _repack(layer)
    before = [(layer.weight.data.data_ptr(), layer.weight.data.clone(), layer.weight.quant_state)
              for layer in layers]
    with nf4.standard_layout(tiny.model) as lent:
        assert lent == len(layers)
        assert not any(nf4.is_repacked(layer) for layer in layers)
        tiny.model.state_dict()  # what PEFT and saving do; harmless on the lent layout
    for layer, (pointer, copy, state) in zip(layers, before, strict=True):
        assert layer.weight.data.data_ptr() == pointer and torch.equal(layer.weight.data, copy)
        assert layer.weight.quant_state is state and nf4.is_repacked(layer)


def test_merge_and_unmerge_on_a_repacked_layer(tiny: LoadedModel) -> None:
    layer = _nf4_layers(tiny.model)[0]
    _repack(layer)
    packed = layer.weight.data.clone()
    bank = LoraSlots({"m": (layer.in_features, layer.out_features)}, 1, 4, torch.float32,
                     torch.device("cpu"))
    bank.a["m"][1].normal_(0, 0.1)
    bank.b["m"][1].normal_(0, 0.1)
    linear = SlotLinear(layer, bank.a["m"], bank.b["m"])
    merge = merge_slot({"m": linear}, slot=1, fmt="dense")
    expected = nf4.dense_weight(layer) + bank.b["m"][1] @ bank.a["m"][1]
    torch.testing.assert_close(linear.base.weight, expected, rtol=0, atol=1e-6)
    merge.restore()
    assert linear.base is layer and torch.equal(layer.weight.data, packed)


def test_training_on_a_repacked_base_lowers_the_loss_and_hands_it_back(
        tiny: LoadedModel, tmp_path: Path) -> None:
    layers = _nf4_layers(tiny.model)
    for layer in layers:
        _repack(layer)
    saved = [(layer.weight.data.clone(), layer.weight.quant_state) for layer in layers]
    data = tmp_path / "chats.jsonl"
    chat = {"messages": [{"role": "user", "content": "Say the word."},
                         {"role": "assistant", "content": "Banana banana banana."}]}
    data.write_text(json.dumps(chat) + "\n")
    result = train(TrainConfig(data=data, out=tmp_path / "out", name="tiny", rank=4, alpha=8,
                               epochs=100, max_steps=10, lr=1e-2, batch_size=1, max_length=64,
                               dropout=0.0, log_every=5), loaded=tiny)
    assert result.losses[-1] < 0.5 * result.losses[0], result.losses
    for layer, (data_before, state) in zip(layers, saved, strict=True):
        assert torch.equal(layer.weight.data, data_before) and layer.weight.quant_state is state
