"""The slot bank's LoRA term (gathered and segmented strategies against a per-row reference), and
the hooks that put slot-aware layers into a model's module tree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from server.lora.slots import SlotHook, SlotLinear, attach_hooks, plain_modules, plan_slots


def _reference(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               slots: list[int]) -> torch.Tensor:
    """Row by row: x[i] @ A[slot_i]^T @ B[slot_i]^T, in float64."""
    rows = [x[i].double() @ a[s].double().T @ b[s].double().T for i, s in enumerate(slots)]
    return torch.stack(rows)  # (B, T, out)


def _float_bank(bank: object, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank's A (S, r, in) and B (S, out, r) of `key` as the values they stand for: an int8
    bank's codes, with each rank's scale on B."""
    a, b = bank.a[key], bank.b[key]  # type: ignore[attr-defined]
    scales = bank.scales.get(key)  # type: ignore[attr-defined]
    if scales is None:
        return a, b
    return a.float(), b.float() * scales.unsqueeze(1)


CASES = [  # (rows, T, in, out, rank, slot mix)
    (1, 1, 16, 24, 4, [1]),
    (4, 1, 32, 8, 8, [0, 1, 0, 1]),
    (8, 1, 24, 40, 16, [3, 1, 2, 3, 0, 0, 1, 2]),
    (6, 5, 16, 16, 2, [2, 2, 2, 2, 2, 2]),
    (5, 3, 48, 12, 8, [0, 4, 1, 3, 2]),
    (16, 1, 20, 20, 4, [i % 4 for i in range(16)]),
]


@pytest.mark.parametrize(("rows", "width", "d_in", "d_out", "rank", "mix"), CASES)
@pytest.mark.parametrize("strategy", ["gather", "segments", "auto"])
def test_every_strategy_matches_the_per_row_reference(rows: int, width: int, d_in: int,
                                                      d_out: int, rank: int, mix: list[int],
                                                      strategy: str) -> None:
    generator = torch.Generator().manual_seed(rows * 100 + rank)
    slots = 5
    a = torch.randn(slots, rank, d_in, generator=generator)
    b = torch.randn(slots, d_out, rank, generator=generator)
    a[0], b[0] = 0, 0  # slot 0 is the base
    a[3, rank // 2:] = 0  # a smaller rank, zero-padded
    b[3, :, rank // 2:] = 0
    base = nn.Linear(d_in, d_out, bias=False)
    linear = SlotLinear(base, a, b)
    x = torch.randn(rows, width, d_in, generator=generator)
    plan = plan_slots(torch.tensor(mix), strategy)
    assert plan is not None
    with torch.no_grad():
        got = linear(x, plan) - base(x)
        expected = _reference(x, a, b, mix).float()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_auto_picks_segments_when_many_rows_share_few_adapters() -> None:
    shared = plan_slots(torch.tensor([1, 2] * 16 + [0] * 8))  # auto: 16+ rows per adapter
    assert shared is not None and shared.segments is not None
    assert [slot for slot, _ in shared.segments] == [1, 2]  # base rows are skipped
    assert shared.segments[0][1] is not None and shared.segments[0][1].tolist() == list(
        range(0, 32, 2))
    one = plan_slots(torch.tensor([3, 3, 3]))
    assert one is not None and one.segments == ((3, None),)
    distinct = plan_slots(torch.tensor([1, 1, 2, 2, 0, 0, 1, 2]))
    assert distinct is not None and distinct.segments is None  # auto gathers
    assert plan_slots(torch.tensor([0, 0])) is None and plan_slots(None) is None


def _layers() -> nn.ModuleList:
    attn = nn.Module()
    attn.q_proj = nn.Linear(8, 8)
    mlp = nn.Module()
    mlp.up_proj = nn.Linear(8, 16)
    layer = nn.Module()
    layer.self_attn, layer.mlp, layer.norm = attn, mlp, nn.LayerNorm(8)
    return nn.ModuleList([layer])


def test_hooks_are_attached_once_and_lent_back_as_the_plain_layers() -> None:
    layers = _layers()
    q_proj = layers[0].self_attn.q_proj
    bases = attach_hooks(layers, lambda m: type(m) is nn.Linear)
    assert set(bases) == {"0.q_proj", "0.up_proj"} and bases["0.q_proj"] is q_proj
    hook = layers[0].self_attn.q_proj
    assert isinstance(hook, SlotHook) and attach_hooks(layers, lambda m: type(m) is nn.Linear) == bases
    assert layers[0].self_attn.q_proj is hook  # no hook around a hook
    x = torch.randn(2, 8)
    assert torch.equal(hook(x), q_proj(x))  # outside a step a hook is its layer
    with plain_modules(layers):
        assert layers[0].self_attn.q_proj is q_proj
    assert layers[0].self_attn.q_proj is hook


def test_a_leaf_name_twice_in_one_layer_is_refused() -> None:
    layers = _layers()
    layers[0].mlp.q_proj = nn.Linear(8, 8)  # an adapter's "0.q_proj" could mean either
    with pytest.raises(ValueError, match="two LoRA-capable modules named 'q_proj'"):
        attach_hooks(layers, lambda m: type(m) is nn.Linear)


def test_the_bank_keeps_each_slots_real_rank() -> None:
    """What the Triton kernels read up to: set by a write, zeroed by a clear."""
    from server.lora.adapter import AdapterWeights, ModuleShapes
    from server.lora.slots import LoraSlots

    bank = LoraSlots(ModuleShapes({"0.q_proj": (8, 8), "0.v_proj": (8, 4)}), 2, 16,
                     torch.float32, torch.device("cpu"))
    modules = {"0.q_proj": (torch.ones(4, 8), torch.ones(8, 4), 1.0),
               "0.v_proj": (torch.ones(6, 8), torch.ones(4, 6), 1.0)}
    bank.write(2, AdapterWeights(rank=6, alpha=6.0, use_rslora=False,
                                 target_modules=frozenset({"q_proj", "v_proj"}), base_model=None,
                                 modules=modules))
    assert bank.ranks.tolist() == [0, 0, 6]  # the largest rank of its modules
    assert bool(bank.a["0.q_proj"][2, 4:].eq(0).all())  # smaller modules stay zero-padded
    bank.clear(2)
    assert bank.ranks.tolist() == [0, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
@pytest.mark.parametrize("strategy", ["gather", "segments"])
def test_the_cpu_bank_stores_each_b_by_rank_and_serves_what_was_written(
        strategy: str, dtype: torch.dtype) -> None:
    """On the CPU each slot's B is stored as (r, out) (`_b_storage`); writes through the
    (out, r) view land where both strategies read them. An int8 bank serves the values its
    codes and scales stand for (how near those are to the adapter's: tests/lora/test_int8.py)."""
    from server.lora.adapter import AdapterWeights, ModuleShapes
    from server.lora.slots import LoraSlots

    bank = LoraSlots(ModuleShapes({"0.q_proj": (12, 20)}), 2, 4, dtype, torch.device("cpu"))
    assert bank.b["0.q_proj"].shape == (3, 20, 4)
    assert bank.b["0.q_proj"].transpose(1, 2).is_contiguous()
    generator = torch.Generator().manual_seed(7)
    a, b = torch.randn(3, 12, generator=generator), torch.randn(20, 3, generator=generator)
    bank.write(2, AdapterWeights(rank=3, alpha=1.5, use_rslora=False,
                                 target_modules=frozenset({"q_proj"}), base_model=None,
                                 modules={"0.q_proj": (a, b, 0.5)}))
    base = nn.Linear(12, 20, bias=False)
    linear = SlotLinear(base, bank.a["0.q_proj"], bank.b["0.q_proj"],
                        scales=bank.scales.get("0.q_proj"))
    x = torch.randn(3, 2, 12, generator=generator)  # (B, T, in)
    plan = plan_slots(torch.tensor([2, 0, 2]), strategy)
    with torch.no_grad():
        got = linear(x, plan) - base(x)
    if dtype == torch.int8:
        a_bank, b_bank = _float_bank(bank, "0.q_proj")
        a, b = a_bank[2, :3], b_bank[2, :, :3] / 0.5
    expected = x @ a.T @ (0.5 * b).T
    expected[1] = 0  # the base row
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_fused_group_keeps_its_as_side_by_side_and_shrinks_them_at_once() -> None:
    """`fuse`: each key's A becomes a view of one tensor, so writes and clears reach the group,
    and one shrink gives every projection's x @ A^T."""
    from server.lora.adapter import AdapterWeights, ModuleShapes
    from server.lora.slots import LoraSlots

    shapes = ModuleShapes({"0.q_proj": (8, 8), "0.k_proj": (8, 4), "0.o_proj": (8, 8)})
    bank = LoraSlots(shapes, 2, 4, torch.float32, torch.device("cpu"))
    group = bank.fuse(["0.q_proj", "0.k_proj"])
    assert bank.fuse(["0.q_proj", "0.k_proj"]) is group  # fusing again changes nothing
    generator = torch.Generator().manual_seed(0)
    modules = {key: (torch.randn(3, 8, generator=generator),
                     torch.randn(shapes[key][1], 3, generator=generator), 0.5)
               for key in ("0.q_proj", "0.k_proj", "0.o_proj")}
    bank.write(1, AdapterWeights(rank=3, alpha=1.5, use_rslora=False,
                                 target_modules=frozenset({"q_proj", "k_proj", "o_proj"}),
                                 base_model=None, modules=modules))
    assert group.a.shape == (3, 2 * 4, 8)
    assert torch.equal(group.a[1, :3], modules["0.q_proj"][0])
    assert torch.equal(group.a[1, 4:7], modules["0.k_proj"][0])
    x = torch.randn(2, 3, 8, generator=generator)  # (B, T, in)
    slots = torch.tensor([1, 0])
    shrunk = group.shrink(x, slots)  # (B, T, 2 * r_max)
    for index, key in enumerate(("0.q_proj", "0.k_proj")):
        own = torch.bmm(x, bank.a[key].index_select(0, slots).transpose(1, 2))
        assert torch.allclose(shrunk[..., index * 4:(index + 1) * 4], own, atol=1e-6)
    assert torch.allclose(group.shrink_one(x[:1], 1), shrunk[:1], atol=1e-6)
    bank.clear(1)
    assert bool(group.a.eq(0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_a_traced_steps_packed_tokens_take_their_chunks_adapters(dtype: torch.dtype) -> None:
    """`PackedRows`: the one-token entries are gathered per row and the packed prefill tokens per
    chunk on the segment grid; every token still gets its own slot's term, through a fused
    group's shared shrink and through a projection of its own."""
    from server.lora.adapter import AdapterWeights, ModuleShapes
    from server.lora.slots import LoraSlots, PackedRows, SharedOutputs, SlotPlan

    shapes = ModuleShapes({"0.q_proj": (8, 8), "0.k_proj": (8, 4), "0.o_proj": (8, 6)})
    bank = LoraSlots(shapes, 3, 4, dtype, torch.device("cpu"))
    group = bank.fuse(["0.q_proj", "0.k_proj"])
    generator = torch.Generator().manual_seed(1)
    for slot in (1, 2, 3):
        modules = {key: (torch.randn(4, 8, generator=generator),
                         torch.randn(shapes[key][1], 4, generator=generator), 0.5)
                   for key in shapes}
        bank.write(slot, AdapterWeights(rank=4, alpha=2.0, use_rslora=False,
                                        target_modules=frozenset({"q_proj", "k_proj", "o_proj"}),
                                        base_model=None, modules=modules))
    # three one-token entries, then a chunk of 3 tokens (segment 0, slot 3), one of 2 (segment
    # 1, slot 1) and a padding token in the padding segment 2, on a grid 4 positions wide
    token_slots = [2, 0, 1, 3, 3, 3, 1, 1, 0]
    packed = PackedRows(entries=3, cell=torch.tensor([0, 1, 2, 4, 5, 8]),
                        segment_slots=torch.tensor([3, 1, 0]), width=4)
    plan = SlotPlan(torch.tensor(token_slots), packed=packed)
    x = torch.randn(len(token_slots), 1, 8, generator=generator)  # (N, 1, in)
    shared = SharedOutputs()  # one step's: q and k share the group's shrink
    for key, member in (("0.q_proj", (group, 0)), ("0.k_proj", (group, 1)), ("0.o_proj", None)):
        base = nn.Linear(*shapes[key], bias=False)
        linear = SlotLinear(base, bank.a[key], bank.b[key], group=member,
                            scales=bank.scales.get(key))
        with torch.no_grad():
            got = linear(x, plan, shared) - base(x)
        expected = _reference(x, *_float_bank(bank, key), token_slots).float()
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

