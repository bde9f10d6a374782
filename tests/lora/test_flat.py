"""A sealed slot bank: one flat storage per dtype, contents and layouts kept, and a compiled
LoRA term that reads it as one input however many modules it has."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from server.lora.adapter import AdapterWeights, ModuleShapes
from server.lora.flat import flatten
from server.lora.slots import LoraSlots, SharedOutputs, SlotLinear, SlotPlan

SHAPES = ModuleShapes({"0.q_proj": (16, 16), "0.k_proj": (16, 8), "0.o_proj": (16, 12),
                       "1.q_proj": (16, 16), "1.k_proj": (16, 8), "1.o_proj": (16, 12)})


def _adapter(seed: int) -> AdapterWeights:
    generator = torch.Generator().manual_seed(seed)
    modules = {key: (torch.randn(4, d_in, generator=generator),
                     torch.randn(d_out, 4, generator=generator), 0.5)
               for key, (d_in, d_out) in SHAPES.items()}
    return AdapterWeights(rank=4, alpha=2.0, use_rslora=False,
                          target_modules=frozenset({"q_proj", "k_proj", "o_proj"}),
                          base_model=None, modules=modules)


def test_flatten_keeps_contents_and_layouts_in_one_storage() -> None:
    first = torch.arange(24.0).view(2, 3, 4)
    second = torch.arange(10.0).view(2, 5).T  # a transpose: dense, not contiguous
    views = flatten([first, second])
    assert all(torch.equal(v, t) and v.stride() == t.stride()
               for v, t in zip(views, [first, second], strict=True))
    assert views[0].untyped_storage().data_ptr() == views[1].untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="one dtype"):
        flatten([first, second.int()])
    with pytest.raises(ValueError, match="dense"):
        flatten([first[:, :, ::2]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_a_sealed_bank_keeps_what_it_holds_and_takes_later_writes(dtype: torch.dtype) -> None:
    bank = LoraSlots(SHAPES, 2, 4, dtype, torch.device("cpu"))
    for layer in "01":
        bank.fuse([f"{layer}.q_proj", f"{layer}.k_proj"])
    bank.write(1, _adapter(1))
    before = {key: (bank.a[key].clone(), bank.b[key].clone()) for key in SHAPES}
    bank.seal()
    storages = {t.untyped_storage().data_ptr() for t in (*bank.a.values(), *bank.b.values())}
    assert len(storages) == 1
    assert all(torch.equal(bank.a[key], a) and torch.equal(bank.b[key], b)
               for key, (a, b) in before.items())
    assert bank.b["0.o_proj"].transpose(1, 2).is_contiguous()  # the CPU's (r, out) order kept
    bank.write(2, _adapter(2))
    group = bank.groups[("0.q_proj", "0.k_proj")]
    assert torch.equal(group.a[2, 4:8], bank.a["0.k_proj"][2])  # members still view the group
    bank.clear(1)
    assert bool(bank.a["0.q_proj"][1].eq(0).all()) and not bool(bank.a["0.q_proj"][2].eq(0).all())


def test_a_compiled_term_reads_a_sealed_bank_as_one_input() -> None:
    """Every module's A and B come from one storage inside the trace: the graph's inputs are
    that storage, the rows and their slots (an unsealed bank: one input per tensor)."""
    bases = {key: nn.Linear(*shape, bias=False) for key, shape in SHAPES.items()}

    def inputs_of(bank: LoraSlots) -> tuple[int, torch.Tensor]:
        linears = {key: SlotLinear(bases[key], bank.a[key], bank.b[key]) for key in SHAPES}
        placeholders: list[int] = []

        def backend(graph: torch.fx.GraphModule, example: list[torch.Tensor]) -> object:
            placeholders.append(sum(1 for t in example if isinstance(t, torch.Tensor)))
            return graph.forward

        def term(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
            plan = SlotPlan(slots)
            return sum(linears[key](x, plan, SharedOutputs()).sum() for key in SHAPES)

        x = torch.randn(3, 1, 16, generator=torch.Generator().manual_seed(5))
        slots = torch.tensor([1, 0, 2])
        with torch.no_grad():
            value = torch.compile(term, backend=backend, fullgraph=True)(x, slots)
            assert torch.allclose(value, term(x, slots), rtol=1e-4)
        return placeholders[0], value

    bank = LoraSlots(SHAPES, 2, 4, torch.float32, torch.device("cpu"))
    bank.write(1, _adapter(1))
    bank.write(2, _adapter(2))
    loose, expected = inputs_of(bank)
    torch._dynamo.reset()
    bank.seal()
    sealed, value = inputs_of(bank)
    weights = len(SHAPES)  # the base layers' weights, inputs either way
    assert loose == 2 + weights + 2 * len(SHAPES) and sealed == 2 + weights + 1
    assert torch.allclose(value, expected)
