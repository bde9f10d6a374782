"""The CPU LoRA kernel (server/lora/cpu_kernel.cpp), built here with the machine's compiler: the
gathered path's values from the same int8 codes (`slots.lora_delta`), for a fused group and one
projection, bfloat16 and float32 inputs, one token and several per row, rows on the base; only
each slot's real rank read; errors for what it cannot read; one graph under the compiler; and
its AVX2 and plain C++ builds (in a child process with torch at that level), whatever this CPU's
own level is.

Tolerances: the kernel and the reference both accumulate in float32 from the same codes and
scales, in another order, so float32 results agree to float32 rounding (rtol 1e-5); bfloat16
results are each rounded once from such float32 values, so they agree to one bfloat16 step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from server.engine.compile_cache import scope_to_this_cpu
from server.lora import cpu_kernel
from server.lora.adapter import AdapterWeights, ModuleShapes
from server.lora.flat import Resident
from server.lora.slots import LoraSlots, lora_delta

# odd widths: every vector loop of the kernel also runs its scalar tail
SHAPES = ModuleShapes({"0.q_proj": (50, 40), "0.k_proj": (50, 24), "0.v_proj": (50, 24),
                       "0.down_proj": (72, 50)})
GROUP = ("0.q_proj", "0.k_proj", "0.v_proj")
RANKS = (16, 8, 5)  # slots 1..3; the bank's r_max is 16
BF16_STEP = 2.0 ** -8


def _adapter(rank: int, seed: int) -> AdapterWeights:
    generator = torch.Generator().manual_seed(seed)
    modules = {key: (torch.randn(rank, d_in, generator=generator) / 4,
                     torch.randn(d_out, rank, generator=generator) / 4, 0.5)
               for key, (d_in, d_out) in SHAPES.items()}
    return AdapterWeights(rank=rank, alpha=0.5 * rank, use_rslora=False,
                          target_modules=frozenset(key.split(".")[1] for key in SHAPES),
                          base_model=None, modules=modules)


def _bank(seal: bool = True, dtype: torch.dtype = torch.int8) -> LoraSlots:
    bank = LoraSlots(SHAPES, len(RANKS), 16, dtype, torch.device("cpu"))
    bank.fuse(list(GROUP))
    if seal:
        bank.seal()
    for slot, rank in enumerate(RANKS, start=1):
        bank.write(slot, _adapter(rank, seed=slot))
    return bank


@pytest.fixture(scope="module")
def bank() -> LoraSlots:
    assert cpu_kernel.load(scope_to_this_cpu()), "it builds wherever the step compiles (g++)"
    return _bank()


def _kernel_terms(bank: LoraSlots, keys: tuple[str, ...], x: torch.Tensor,
                  slots: torch.Tensor) -> list[torch.Tensor]:
    """Each of `keys`' columns of one kernel call."""
    calls = [bank.kernel_call(key) for key in keys]
    assert all(call is not None and call.layout == calls[0].layout for call in calls)  # type: ignore[union-attr]
    out = cpu_kernel.term(x, Resident(bank.a[keys[0]]).flat, Resident(bank.scales[keys[0]]).flat,
                          slots, bank.ranks, calls[0].layout)  # type: ignore[union-attr]
    return [out[..., call.columns] for call in calls]  # type: ignore[union-attr]


def _reference(bank: LoraSlots, key: str, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    return lora_delta(x.float(), bank.a[key], bank.b[key], slots, bank.scales[key])


def _assert_same(got: torch.Tensor, expected: torch.Tensor) -> None:
    if got.dtype == torch.bfloat16:
        torch.testing.assert_close(got.float(), expected, rtol=BF16_STEP, atol=1e-6)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("width", [1, 3], ids=["decode", "chunk"])
@pytest.mark.parametrize("keys", [GROUP, ("0.down_proj",)], ids=["fused-group", "one-projection"])
def test_the_kernel_gives_the_gathered_terms_values(bank: LoraSlots, dtype: torch.dtype, width: int,
                                                    keys: tuple[str, ...]) -> None:
    d_in = SHAPES[keys[0]][0]
    x = torch.randn(5, width, d_in, generator=torch.Generator().manual_seed(7)).to(dtype)
    slots = torch.tensor([2, 0, 1, 3, 2])  # a base row among rows of three ranks
    terms = _kernel_terms(bank, keys, x, slots)
    for key, got in zip(keys, terms, strict=True):
        assert got.dtype == dtype and got.shape == (5, width, SHAPES[key][1])
        _assert_same(got, _reference(bank, key, x, slots))
        assert bool(got[1].eq(0).all())  # the base row: nothing added
        assert float(got[0].abs().max()) > 0


def test_the_kernel_reads_only_each_slots_real_rank() -> None:
    """Codes past slot 3's rank 5 set to the largest code change nothing: they are never read
    (the bank keeps them zero; the kernel does not rely on it)."""
    bank = _bank()
    x = torch.randn(2, 1, 50, generator=torch.Generator().manual_seed(3))
    slots = torch.tensor([3, 3])
    expected = [_reference(bank, key, x, slots) for key in GROUP]
    for key in GROUP:
        bank.a[key][3, 5:] = 127
        bank.b[key][3, :, 5:] = 127
    for got, want in zip(_kernel_terms(bank, GROUP, x, slots), expected, strict=True):
        _assert_same(got, want)


def test_only_a_sealed_int8_bank_has_kernel_calls() -> None:
    assert _bank(seal=False).kernel_call("0.q_proj") is None  # no flat storage to name
    assert _bank(dtype=torch.float32).kernel_call("0.q_proj") is None  # the Triton/gather path
    call = _bank().kernel_call("0.k_proj")
    assert call is not None and call.columns == slice(40, 64)


def test_a_slot_past_the_bank_or_a_wrong_input_is_refused(bank: LoraSlots) -> None:
    x = torch.randn(1, 1, 50)
    with pytest.raises(RuntimeError, match="out of range"):
        _kernel_terms(bank, GROUP, x, torch.tensor([len(RANKS) + 1]))
    with pytest.raises(RuntimeError, match="bfloat16 or float32"):
        _kernel_terms(bank, GROUP, x.half(), torch.tensor([1]))
    with pytest.raises(RuntimeError, match="int64"):
        _kernel_terms(bank, GROUP, x, torch.tensor([1], dtype=torch.int32))


def test_the_kernel_is_one_call_in_a_full_graph(bank: LoraSlots) -> None:
    """Traced with `fullgraph=True` (its fake implementation gives the output's shape): the
    compiled function computes what the eager call does."""
    x = torch.randn(4, 1, 50, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    slots = torch.tensor([1, 2, 3, 0])

    call = bank.kernel_call(GROUP[0])
    assert call is not None
    codes, scales = Resident(bank.a[GROUP[0]]).flat, Resident(bank.scales[GROUP[0]]).flat

    def terms(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return cpu_kernel.term(x, codes, scales, slots, bank.ranks, call.layout) * 2

    torch._dynamo.reset()
    compiled = torch.compile(terms, fullgraph=True)
    torch.testing.assert_close(compiled(x, slots), terms(x, slots), rtol=0, atol=0)


CHILD = """
import torch
from tests.lora.test_cpu_kernel import GROUP, _assert_same, _bank, _kernel_terms, _reference
from server.lora import cpu_kernel
from server.engine.compile_cache import scope_to_this_cpu
assert cpu_kernel.load(scope_to_this_cpu())
print(torch.backends.cpu.get_cpu_capability(), cpu_kernel._isa_flags())
bank = _bank()
x = torch.randn(5, 2, 50, generator=torch.Generator().manual_seed(11))
slots = torch.tensor([1, 2, 3, 0, 1])
for key, got in zip(GROUP, _kernel_terms(bank, GROUP, x, slots), strict=True):
    _assert_same(got, _reference(bank, key, x, slots))
print("same")
"""


@pytest.mark.parametrize("level", ["avx2", "default"])
def test_the_avx2_and_plain_builds_give_the_same_values(level: str) -> None:
    """With torch at AVX2 the kernel is built with AVX-512 off (its 8-lane path); with torch at
    its default level, as plain C++ (its scalar loops)."""
    if level == "avx2" and not torch.backends.cpu.get_cpu_capability().startswith("AVX"):
        pytest.skip("this CPU has no AVX2")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": level}
    child = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                           timeout=300, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    capability, _, rest = child.stdout.partition(" ")
    assert capability.lower().startswith(level if level == "avx2" else "default")
    assert ("-mno-avx512f" in rest) == (level == "avx2") and rest.strip().endswith("same")
