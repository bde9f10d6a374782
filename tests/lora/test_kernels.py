"""The Triton LoRA kernels against the gathered PyTorch path, on many shapes, ranks and mixes.

On a CUDA machine they run compiled (bfloat16, the serving dtype); elsewhere they run in
Triton's interpreter on the CPU (float32), which checks the same indexing, masking and tile
arithmetic without a GPU. The workspace and the rows of slot 0 are poisoned before each run,
and, given each slot's real rank, so is the bank's padding past it: the kernels must not read it.
"""

from __future__ import annotations

import pytest
import torch

from server.lora.slots import lora_delta

pytest.importorskip("triton")
from server.lora import kernels

ON_GPU = torch.cuda.is_available()
if not ON_GPU and not kernels.interpreted():
    pytest.skip("no GPU and TRITON_INTERPRET is not 1 (tests/conftest.py sets it)",
                allow_module_level=True)

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
TOL = 2e-2 if ON_GPU else 1e-4  # relative to the largest |delta| of the case

CASES = [  # (rows, T, in, out, r_max, ranks of slots 1.., row -> slot)
    (1, 1, 64, 48, 16, [16], [1]),
    (4, 1, 96, 130, 8, [8, 4], [0, 1, 2, 1]),
    (7, 1, 200, 64, 32, [32, 16, 8, 4], [4, 3, 2, 1, 0, 1, 3]),
    (3, 5, 64, 72, 16, [16, 8], [2, 0, 1]),
    (2, 40, 80, 96, 16, [4, 16], [1, 2]),
    (5, 17, 48, 40, 64, [64, 1, 33], [3, 3, 0, 1, 2]),
]


def _bank(slots: int, r_max: int, d_in: int, d_out: int, ranks: list[int],
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.zeros(slots, r_max, d_in)
    b = torch.zeros(slots, d_out, r_max)
    for slot, rank in enumerate(ranks, start=1):  # slot 0 stays zero: the base
        a[slot, :rank] = torch.randn(rank, d_in, generator=generator) / d_in ** 0.5
        b[slot, :, :rank] = torch.randn(d_out, rank, generator=generator)
    return a.to(DEVICE, DTYPE), b.to(DEVICE, DTYPE)


def _poisoned(a: torch.Tensor, b: torch.Tensor,
              ranks: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bank with NaN past each slot's real rank, and the ranks (S,) as the bank keeps them."""
    a, b = a.clone(), b.clone()
    for slot, rank in enumerate(ranks, start=1):
        a[slot, rank:] = float("nan")
        b[slot, :, rank:] = float("nan")
    return a, b, torch.tensor([0, *ranks], dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("real_ranks", [True, False], ids=["real-ranks", "r-max"])
@pytest.mark.parametrize(("rows", "width", "d_in", "d_out", "r_max", "ranks", "mix"), CASES)
def test_kernels_match_the_gathered_path(rows: int, width: int, d_in: int, d_out: int,
                                         r_max: int, ranks: list[int], mix: list[int],
                                         real_ranks: bool) -> None:
    generator = torch.Generator().manual_seed(rows * 1000 + width)
    a, b = _bank(len(ranks) + 1, r_max, d_in, d_out, ranks, generator)
    x = torch.randn(rows, width, d_in, generator=generator).to(DEVICE, DTYPE)
    base = torch.randn(rows, width, d_out, generator=generator).to(DEVICE, DTYPE)
    slots = torch.tensor(mix, device=DEVICE)
    workspace = torch.full((rows, width, r_max), float("nan"), device=DEVICE)

    if real_ranks:  # the padding is NaN: reading any of it would show in y
        poisoned_a, poisoned_b, real = _poisoned(a, b, ranks)
        y = kernels.add_lora(base.clone(), x, poisoned_a, poisoned_b, slots, real,
                             workspace=workspace)
    else:
        y = kernels.add_lora(base.clone(), x, a, b, slots, workspace=workspace)

    delta = lora_delta(x.float(), a.float(), b.float(), slots)  # (B, T, out), float32
    expected = base.float() + delta
    scale = delta.abs().max().clamp(min=1.0)
    assert torch.isfinite(y).all()
    assert ((y.float() - expected).abs().max() / scale).item() <= TOL
    for row, slot in enumerate(mix):  # base rows are left exactly as they were
        if slot == 0:
            assert torch.equal(y[row], base[row])


@pytest.mark.gpu
def test_the_engine_uses_the_kernels_on_cuda() -> None:
    from server.lora.slots import plan_slots

    plan = plan_slots(torch.tensor([1, 0, 2], device="cuda"))
    assert plan is not None and plan.kernel
