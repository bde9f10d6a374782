"""Int8 slot banks: each row's codes within half a level of its values, and a written adapter's
update B @ A within the bound that half a level per row gives (derived from the rounding, not
measured on one machine)."""

from __future__ import annotations

import pytest
import torch

from server.lora.adapter import AdapterWeights, ModuleShapes
from server.lora.int8 import LEVELS, compute_dtype, quantize_rows
from server.lora.slots import LoraSlots, SlotLinear


def test_each_row_is_within_half_a_level_and_its_largest_value_is_exact() -> None:
    generator = torch.Generator().manual_seed(0)
    t = torch.randn(6, 40, generator=generator) * torch.logspace(-3, 1, 6).unsqueeze(1)
    t[2] = 0  # an all-zero row: the zero-padded ranks of a smaller adapter
    codes, scale = quantize_rows(t)
    assert codes.dtype == torch.int8 and codes.abs().max() <= LEVELS
    half_level = t.abs().amax(dim=1, keepdim=True) / (2 * LEVELS)
    error = (codes.float() * scale.unsqueeze(1) - t).abs()
    assert bool((error <= half_level * (1 + 1e-5)).all())
    assert bool(codes[2].eq(0).all()) and scale[2] == 0
    peaks = t.abs().argmax(dim=1)
    assert codes[[0, 1, 3, 4, 5], peaks[[0, 1, 3, 4, 5]]].abs().eq(LEVELS).all()


def test_codes_compute_in_float32_and_other_banks_in_their_own_dtype() -> None:
    assert compute_dtype(torch.int8) == torch.float32
    assert compute_dtype(torch.bfloat16) == torch.bfloat16


def _adapter(shapes: ModuleShapes, rank: int, seed: int) -> AdapterWeights:
    generator = torch.Generator().manual_seed(seed)
    modules = {key: (torch.randn(rank, d_in, generator=generator) / 8,
                     torch.randn(d_out, rank, generator=generator) / 8, 0.75)
               for key, (d_in, d_out) in shapes.items()}
    return AdapterWeights(rank=rank, alpha=0.75 * rank, use_rslora=False,
                          target_modules=frozenset(key.split(".")[1] for key in shapes),
                          base_model=None, modules=modules)


def test_a_written_adapters_update_is_within_the_bound_of_its_rows_rounding() -> None:
    """B' A' - B A = dB A + B dA + dB dA with |dA_j.| <= max|A_j.| / 254 and |dB_.j| <=
    max|B_.j| / 254 (B scaled, per rank j): the bound, element by element."""
    shapes = ModuleShapes({"0.q_proj": (48, 32), "0.down_proj": (96, 24)})
    bank = LoraSlots(shapes, 2, 8, torch.int8, torch.device("cpu"))
    adapter = _adapter(shapes, 6, seed=3)
    bank.write(2, adapter)
    for key, (a, b, scale) in adapter.modules.items():
        linear = SlotLinear(torch.nn.Identity(), bank.a[key], bank.b[key],
                            scales=bank.scales[key])
        a_q, b_q = linear.slot_matrices(2)  # (r_max, in), (out, r_max), padding zero
        assert a_q.dtype == torch.float32 and bool(a_q[6:].eq(0).all())
        got = b_q.double() @ a_q.double()
        b = (b * scale).double()
        a = a.double()
        half_a = a.abs().amax(dim=1) / (2 * LEVELS)  # (r,)
        half_b = b.abs().amax(dim=0) / (2 * LEVELS)  # (r,)
        bound = (half_b.unsqueeze(1) * a.abs()).sum(0).unsqueeze(0) \
            + b.abs() @ half_a.unsqueeze(1) + (half_a * half_b).sum()  # (out, in)
        error = (got - b @ a).abs()
        assert bool((error <= bound * (1 + 1e-4) + 1e-7).all()), float((error / bound).max())
        assert float(error.max()) > 0  # it is rounded: the bound is what is being tested
    assert bank.nbytes == sum(t.nbytes for t in (*bank.a.values(), *bank.b.values(),
                                                  *bank.scales.values()))
    bank.clear(2)
    assert all(bool(t.eq(0).all()) for t in (*bank.a.values(), *bank.scales.values()))


def test_an_int8_bank_is_the_cpus_only() -> None:
    with pytest.raises(ValueError, match="int8 slot bank is the CPU's"):
        LoraSlots(ModuleShapes({"0.q_proj": (8, 8)}), 1, 4, torch.int8, torch.device("cuda"))


@pytest.mark.parametrize("strategy", ["gather", "segments"])
def test_a_fused_groups_projections_serve_the_values_their_codes_stand_for(strategy: str) -> None:
    """q and k sharing one shrink (`LoraSlots.fuse`), rows on mixed slots: each projection's
    term is x @ codes_A^T, times its scales, @ codes_B^T, row by row."""
    from server.lora.slots import SharedOutputs, plan_slots

    shapes = ModuleShapes({"0.q_proj": (16, 16), "0.k_proj": (16, 8)})
    bank = LoraSlots(shapes, 3, 4, torch.int8, torch.device("cpu"))
    group = bank.fuse(list(shapes))
    for slot in (1, 2, 3):
        bank.write(slot, _adapter(shapes, 4 - slot % 2, seed=slot))
    slots = [2, 0, 1, 3, 3, 1]
    plan = plan_slots(torch.tensor(slots), strategy)
    x = torch.randn(len(slots), 2, 16, generator=torch.Generator().manual_seed(9))
    shared = SharedOutputs()
    for index, key in enumerate(shapes):
        base = torch.nn.Linear(*shapes[key], bias=False)
        linear = SlotLinear(base, bank.a[key], bank.b[key], group=(group, index),
                            scales=bank.scales[key])
        with torch.no_grad():
            got = linear(x, plan, shared) - base(x)
        a = bank.a[key].double()  # (S, r, in) codes
        b = bank.b[key].double() * bank.scales[key].double().unsqueeze(1)  # (S, out, r)
        expected = torch.stack([x[i].double() @ a[s].T @ b[s].T for i, s in enumerate(slots)])
        torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-4)
