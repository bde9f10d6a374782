"""Merging one slot's adapter into real layers of the embedded model, and restoring them exactly."""

from __future__ import annotations

from typing import Any

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch
from torch import nn

from server.lora.merge import MergeError, dense_weight, merge_slot
from server.lora.slots import LoraSlots, SlotLinear, base_of, lora_delta, plan_slots
from server.model.loader import LoadedModel
from tests.numerics import linear_tolerance

RANK = 8


def _slot_linear(layer: Any, seed: int = 0) -> SlotLinear:
    """`layer` with a two-slot bank whose slot 1 holds a random adapter large enough to matter."""
    bank = LoraSlots({"m": (layer.in_features, layer.out_features)}, 1, RANK, torch.float32,
                     torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    bank.a["m"][1] = torch.randn(RANK, layer.in_features, generator=generator) * 0.05
    bank.b["m"][1] = torch.randn(layer.out_features, RANK, generator=generator) * 0.05
    return SlotLinear(layer, bank.a["m"], bank.b["m"])


def _nf4_layer(embedded: LoadedModel) -> Any:
    layer = base_of(embedded.model.model.layers[0].self_attn.q_proj)
    assert isinstance(layer, bnb.nn.Linear4bit)
    return layer


def test_dense_merge_computes_base_plus_lora_and_restore_is_the_same_object(
        embedded: LoadedModel) -> None:
    linear = _slot_linear(_nf4_layer(embedded))
    original = linear.base
    x = torch.randn(2, 3, linear.base.in_features)  # (B, T, in)
    plan = plan_slots(torch.tensor([1, 1]), "gather")
    expected = linear(x, plan)  # base matmul + gathered LoRA term
    merge = merge_slot({"m": linear}, slot=1, fmt="dense")
    assert type(linear.base) is nn.Linear
    # The merged layer computes in float32; the base on its own kernel path (bfloat16 on an
    # AVX512-BF16 CPU): within one layer's rounding on that path.
    tolerance = linear_tolerance(original, expected)
    assert (linear(x, None) - expected).abs().max() <= tolerance
    merge.restore()
    assert linear.base is original
    assert torch.equal(linear(x, plan), expected)


def test_nf4_merge_requantizes_and_unmerge_is_bit_exact(embedded: LoadedModel) -> None:
    layer = _nf4_layer(embedded)
    packed, absmax = layer.weight.data.clone(), layer.weight.quant_state.absmax.clone()
    linear = _slot_linear(layer, seed=1)
    before = dense_weight(layer).clone()
    delta = linear.b[1] @ linear.a[1]  # (out, in)

    merge = merge_slot({"m": linear}, slot=1, fmt="nf4")
    assert isinstance(linear.base, bnb.nn.Linear4bit) and linear.base is not layer
    # The merged layer holds exactly NF4(dense + delta), quantized with the original block size.
    requantized, state = bnbf.quantize_4bit(before + delta, blocksize=layer.weight.blocksize,
                                            quant_type="nf4")
    assert torch.equal(dense_weight(linear.base), bnbf.dequantize_4bit(requantized, state))
    merge.restore()
    assert linear.base is layer
    assert torch.equal(layer.weight.data, packed)
    assert torch.equal(layer.weight.quant_state.absmax, absmax)
    assert torch.equal(dense_weight(layer), before)


def test_modules_the_adapter_does_not_target_are_left_alone(plain_embedded: LoadedModel) -> None:
    layer = base_of(plain_embedded.model.model.layers[0].self_attn.k_proj)
    linear = _slot_linear(layer)
    linear.a[1].zero_()  # slot 1 holds nothing for this module
    merge = merge_slot({"m": linear}, slot=1, fmt="dense")
    assert linear.base is layer and not merge.saved


def test_a_layer_that_cannot_merge_fails_the_whole_merge(plain_embedded: LoadedModel) -> None:
    good = _slot_linear(base_of(plain_embedded.model.model.layers[0].self_attn.q_proj))
    int8 = bnb.nn.Linear8bitLt(good.base.in_features, good.base.out_features, bias=False,
                               has_fp16_weights=False)
    bad = _slot_linear(int8)
    originals = (good.base, bad.base)
    with pytest.raises(MergeError, match="Linear8bitLt"):
        merge_slot({"good": good, "bad": bad}, slot=1, fmt="dense")
    assert (good.base, bad.base) == originals  # the first layer's merge was undone


def test_the_gathered_reference_matches_the_merged_delta(plain_embedded: LoadedModel) -> None:
    linear = _slot_linear(base_of(plain_embedded.model.model.layers[1].mlp.down_proj), seed=2)
    x = torch.randn(1, 4, linear.base.in_features)
    delta = lora_delta(x, linear.a, linear.b, torch.tensor([1]))  # (1, 4, out)
    merged = x @ (linear.b[1] @ linear.a[1]).T
    torch.testing.assert_close(delta, merged, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["nf4", "dense"])
def test_merge_then_unmerge_is_bit_exact_on_cuda(fmt: str) -> None:
    torch.manual_seed(0)
    dense = nn.Linear(256, 192, bias=False).to(torch.bfloat16)
    layer = bnb.nn.Linear4bit(256, 192, bias=False, compute_dtype=torch.bfloat16,
                              quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(dense.weight.data, requires_grad=False, quant_type="nf4")
    layer = layer.cuda()
    packed = layer.weight.data.clone()
    linear = _slot_linear(layer)
    linear.a, linear.b = linear.a.cuda().bfloat16(), linear.b.cuda().bfloat16()
    x = torch.randn(4, 1, 256, device="cuda", dtype=torch.bfloat16)
    before = linear(x, None)
    merge = merge_slot({"m": linear}, slot=1, fmt=fmt)  # type: ignore[arg-type]
    assert not torch.equal(linear(x, None), before)  # the delta is in the merged layer
    merge.restore()
    assert linear.base is layer and torch.equal(layer.weight.data, packed)
    assert torch.equal(linear(x, None), before)
