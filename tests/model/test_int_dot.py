"""Cameo's own int4/int8 CPU kernels (`server.model.int_dot`): the layouts, what the kernels
compute, and that the compiler traces through them.

What they compute is known exactly: the weight's codes times the input rounded per group of 32
to int8 (`int_dot.kernel_input`). Against that product in float64 the kernels differ only by
float32 arithmetic (each group's integer sum is exact; the groups are summed in float32), so
the tolerance is float32's over the sum of |terms|: `SAFETY * eps(float32) * G * (|x| @ |W|.T)`,
G the number of groups added one after another in each lane.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from server.model import cpu, int_dot
from server.model.weight_only import Int4Linear, Int8Linear, choose_kernel
from tests.numerics import SAFETY

pytestmark = pytest.mark.skipif(not int_dot.load(),
                                reason="Cameo's int kernels need an x86-64 CPU with AVX2 and FMA "
                                       "and a C++ compiler")

F32_EPS = torch.finfo(torch.float32).eps


def _bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Elementwise float32 error bound for y = kernel_input(x) @ weight.T, (M, N)."""
    groups = x.shape[-1] // int_dot.GROUP
    terms = int_dot.kernel_input(x).abs().double() @ weight.abs().double().T
    return SAFETY * F32_EPS * groups * terms + 1e-30


def _exact(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return int_dot.kernel_input(x).double() @ weight.double().T


@pytest.mark.parametrize("in_features", [96, 288, 576, 1536])
def test_int4_packing_round_trips(in_features: int) -> None:
    codes = torch.randint(0, 16, (48, in_features), generator=torch.Generator().manual_seed(1))
    packed = int_dot.pack_int4(codes)
    assert packed.shape == (48, in_features // 2) and packed.dtype == torch.uint8
    assert torch.equal(int_dot.unpack_int4(packed), codes.int())
    # byte i of the first pair: code i of vector 0 low, code i of vector 1 high
    vectors = int_dot.to_layout(codes)[0].reshape(-1, 32)
    assert int(packed[0, 5]) == int(vectors[0, 5]) | int(vectors[1, 5]) << 4
    if vectors.shape[0] % 2:  # a last vector alone: its code i low, code 16 + i high
        assert int(packed[0, -16]) == int(vectors[-1, 0]) | int(vectors[-1, 16]) << 4


def test_the_layout_interleaves_blocks_of_8_groups_and_keeps_the_rest_in_order() -> None:
    order = int_dot.layout_order(576)  # 18 groups: 2 blocks of 8, then 2 groups
    assert torch.equal(order.sort().values, torch.arange(576))  # a permutation
    # vector t of block 0 holds inputs 4t..4t+3 of group j at positions 4j..4j+3
    for t, j, u in ((0, 0, 0), (0, 1, 0), (3, 5, 2), (7, 7, 3)):
        assert int(order[32 * t + 4 * j + u]) == 32 * j + 4 * t + u
    assert int(order[256]) == 256  # block 1 starts where it should
    assert torch.equal(order[512:], torch.arange(512, 576))  # the last two groups in order
    assert torch.equal(int_dot.layout_order(96), torch.arange(96))  # no whole block


def test_the_input_rounds_per_group_of_32_to_127_steps() -> None:
    x = torch.randn(3, 64) * torch.tensor([100.0] * 32 + [0.01] * 32)  # two scales of groups
    rounded = int_dot.kernel_input(x)
    step = x.reshape(3, 2, 32).abs().amax(-1, keepdim=True) / 127  # (3, 2, 1)
    codes = rounded.reshape(3, 2, 32) / step
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # whole steps of each group
    assert float(codes.abs().max()) == pytest.approx(127, abs=1e-3)
    assert bool(((rounded - x).reshape(3, 2, 32).abs() <= step / 2 * (1 + 1e-5)).all())
    assert torch.equal(int_dot.kernel_input(torch.zeros(1, 32)), torch.zeros(1, 32))


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 17])
@pytest.mark.parametrize("shape", [(16, 32), (48, 96), (960, 576), (20, 64), (32, 1536),
                                   (16, 288)])
def test_int4_kernel_is_the_codes_times_the_rounded_input(rows: int,
                                                          shape: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(rows * 1000 + shape[0])
    weight = torch.randn(*shape, generator=generator) * 0.05
    layer = Int4Linear.from_weight(weight, None, kernel="cameo")
    x = torch.randn(rows, shape[1], generator=generator) * 3
    scales, mins = layer.scales_offsets
    y = torch.ops.cameo.int4_linear(x, layer.qweight, scales, mins)
    dense = layer.dense_weight()
    assert y.shape == (rows, shape[0]) and y.dtype == torch.float32
    assert bool(((y.double() - _exact(x, dense)).abs() <= _bound(x, dense)).all())


@pytest.mark.parametrize("rows", [1, 3, 4, 8, 17])
@pytest.mark.parametrize("shape", [(7, 32), (64, 128), (4096, 576), (12, 288)])
def test_int8_kernel_is_the_codes_times_the_rounded_input(rows: int,
                                                          shape: tuple[int, int]) -> None:
    """Output counts that are not a multiple of the kernel's block of 4 included."""
    torch.manual_seed(rows + shape[0])
    layer = Int8Linear.from_linear(nn.Linear(shape[1], shape[0], bias=False), kernel="cameo")
    assert layer.kernel == "cameo" and layer.scales.dtype == torch.float32
    x = torch.randn(rows, shape[1])
    y = torch.ops.cameo.int8_linear(x, layer.qweight, layer.scales)
    dense = layer.dense_weight()
    assert bool(((y.double() - _exact(x, dense)).abs() <= _bound(x, dense)).all())


def test_both_kernels_stay_within_the_input_rounding_of_the_exact_product() -> None:
    """Against the unrounded input, the error is the input's rounding: at most half a step of
    each group times the weights' magnitudes (the bound below), and it is not zero."""
    torch.manual_seed(5)
    weight = torch.randn(256, 576) * 0.05
    x = torch.randn(4, 576)
    layer = Int4Linear.from_weight(weight, None, kernel="cameo")
    dense = layer.dense_weight()
    y = layer(x).double()
    half_steps = (x.reshape(4, -1, 32).abs().amax(-1) / 254).repeat_interleave(32, dim=1)
    bound = half_steps.double() @ dense.abs().double().T + _bound(x, dense)
    error = (y - x.double() @ dense.double().T).abs()
    assert bool((error <= bound).all()) and float(error.max()) > 0


def test_a_cameo_layer_and_a_torch_layer_hold_the_same_weight() -> None:
    """The same codes in two layouts: the weights agree up to the torch kernel's bfloat16
    output, through which its `dense_weight` is read."""
    weight = torch.randn(96, 128) * 0.05
    ours = Int4Linear.from_weight(weight, None, kernel="cameo").dense_weight()
    theirs = Int4Linear.from_weight(weight, None, kernel="torch").dense_weight()
    eps = torch.finfo(torch.bfloat16).eps
    assert bool(((ours - theirs).abs() <= eps * theirs.abs() + 1e-12).all())


def test_the_compiler_traces_through_the_kernels_with_no_graph_break() -> None:
    torch.manual_seed(6)
    int4 = Int4Linear.from_weight(torch.randn(64, 128) * 0.05, torch.randn(64), kernel="cameo")
    head = Int8Linear.from_linear(nn.Linear(64, 96), kernel="cameo")

    def forward(x: torch.Tensor) -> torch.Tensor:
        return head(torch.relu(int4(x)))

    compiled = torch.compile(forward, fullgraph=True, dynamic=True)
    for rows in (3, 5):
        x = torch.randn(rows, 128)
        assert torch.allclose(compiled(x), forward(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("x", "message"), [
    (torch.randn(2, 64, dtype=torch.float64), "float32"),
    (torch.randn(2, 48), "multiple of 32"),
    (torch.randn(2, 96), "codes must be contiguous"),
])
def test_bad_operands_are_refused_with_a_reason(x: torch.Tensor, message: str) -> None:
    layer = Int4Linear.from_weight(torch.randn(16, 64), None, kernel="cameo")
    scales, mins = layer.scales_offsets
    with pytest.raises(RuntimeError, match=message):
        torch.ops.cameo.int4_linear(x, layer.qweight, scales, mins)


def test_the_kernel_choice_follows_the_setting_and_the_cpu() -> None:
    assert choose_kernel("torch") == "torch"
    assert choose_kernel("cameo") == "cameo"
    at_avx512 = cpu.torch_runs_avx512()
    assert choose_kernel("auto") == ("torch" if at_avx512 else "cameo")
