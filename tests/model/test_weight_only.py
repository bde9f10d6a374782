"""The CPU's int4/int8 layers (`server.model.weight_only`): what they compute, how close their
weights are to the float ones, how a model is converted, and that PEFT and merges work on them.

Tolerances come from the kernel path (tests/numerics.py): torch's kernels take a bfloat16
input and give a bfloat16 output, so one layer computing with its own dense weight differs from
the float32 product of the same bfloat16-rounded input by the output's rounding and the
summation order: `linear_tolerance` on the bfloat16 path. Cameo's kernels round the input to
int8 per group instead (`kernel_input`) and are checked exactly in tests/model/test_int_dot.py;
here they are held to the same bound. Layer tests run with both kernels where Cameo's can run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from server.lora.merge import dense_weight, merge_slot
from server.lora.slots import LoraSlots, SlotLinear, plan_slots
from server.model import int_dot, weight_only
from server.model.loader import LoadedModel, load_base, resolve_quantization
from server.model.weight_only import (
    GROUP,
    Int4Linear,
    Int4Slice,
    Int8Linear,
    quantize,
    quantize_linears,
)
from server.settings import Settings
from tests.model.families import build_family
from tests.numerics import SAFETY

BF16_EPS = torch.finfo(torch.bfloat16).eps
KERNELS = ["torch", pytest.param("cameo", marks=pytest.mark.skipif(
    not int_dot.load(), reason="Cameo's int kernels need AVX2, FMA and a C++ compiler"))]
SHAPES = [(16, 64), (48, 96), (192, 576), (64, 128)]  # (out, in) the kernel takes


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, embedded: LoadedModel) -> Path:
    """A two-layer random Llama folder (tests/model/families.py) (biases, GELU)."""
    return build_family("llama-gelu-bias", tmp_path_factory.mktemp("tiny") / "llama",
                        embedded.tokenizer)


def _linear(out_features: int, in_features: int, seed: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def _layer_tolerance(expected: torch.Tensor) -> float:
    return SAFETY * BF16_EPS * float(expected.abs().max())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", [Int4Linear, Int8Linear])
@pytest.mark.parametrize("shape", SHAPES)
def test_a_layer_computes_with_its_dense_weight(kind: type, shape: tuple[int, int],
                                                kernel: str) -> None:
    float_layer = _linear(*shape, seed=sum(shape))
    layer = kind.from_linear(float_layer, kernel=kernel)
    assert layer.kernel == kernel
    x = torch.randn(3, 5, shape[1])  # (B, T, in)
    expected = layer.kernel_input(x) @ layer.dense_weight().T + float_layer.bias.detach()
    y = layer(x)
    assert y.shape == (3, 5, shape[0]) and y.dtype == torch.float32
    assert float((y - expected).abs().max()) <= _layer_tolerance(expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_int4_weights_are_within_half_a_step_of_the_float_ones(shape: tuple[int, int]) -> None:
    weight = _linear(*shape, seed=3).weight.detach()
    codes, scales, offsets = quantize(weight)
    assert int(codes.min()) == 0 and int(codes.max()) == 15  # the whole 4-bit range is used
    dense = Int4Linear.from_weight(weight, None).dense_weight()
    groups = (dense - weight).abs().reshape(shape[0], -1, GROUP)  # (out, in/GROUP, GROUP)
    # Nearest of 16 levels: half a step, plus the rounding of scale and offset to bfloat16
    # (which can move the outermost levels by that much).
    step, offset = scales.float()[..., None], offsets.float().abs()[..., None]
    bound = step / 2 + BF16_EPS * (offset + 15 * step)
    assert bool((groups <= bound).all())


def test_a_weight_already_on_a_4bit_grid_is_kept_exactly() -> None:
    """What a Q4_1 GGUF (the embedded model's source) dequantizes to: 16 levels per group of 32,
    with scale and minimum as bfloat16 values; int4 holds it without a further loss."""
    generator = torch.Generator().manual_seed(5)
    out_features, in_features = 32, 128
    groups = in_features // GROUP
    scale = (torch.rand(out_features, groups, 1, generator=generator) * 0.01 + 1e-3).bfloat16()
    low = (-8 * scale.float()).bfloat16()  # symmetric grids, like Q4_0 / Q4_1 weights
    codes = torch.randint(0, 16, (out_features, groups, GROUP), generator=generator)
    codes[..., 0], codes[..., 1] = 0, 15  # each group spans its whole grid
    weight = (low.float() + codes * scale.float()).reshape(out_features, in_features)
    dense = Int4Linear.from_weight(weight, None).dense_weight()
    assert float((dense - weight).abs().max()) <= BF16_EPS * float(weight.abs().max())


def test_int8_weights_are_within_half_a_step_of_the_float_ones() -> None:
    weight = _linear(96, 64, seed=4).weight.detach()
    layer = Int8Linear.from_linear(_linear(96, 64, seed=4))
    step = layer.scales.float()[:, None]  # (out, 1)
    assert bool(((layer.dense_weight() - weight).abs() <= step / 2 + BF16_EPS * 127 * step).all())


def test_quantize_linears_converts_decoder_layers_and_head(tiny_llama: Path) -> None:
    model = load_base(Settings(base_model=str(tiny_llama), quantization="none",
                               device="cpu")).model
    embeddings = model.get_input_embeddings().weight.detach().clone()
    linears = sum(type(m) is nn.Linear for m in model.model.layers.modules())
    assert quantize_linears(model) == linears + 1
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert sum(weight_only.is_int4(m) for m in model.modules()) == linears
    assert isinstance(model.get_output_embeddings(), Int8Linear)
    assert torch.equal(model.get_input_embeddings().weight, embeddings)  # lookups stay float


def test_the_loader_serves_int4_on_the_cpu_and_refuses_it_on_cuda(tiny_llama: Path) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_quantization("auto", cpu) == ("int4" if weight_only.available() else "nf4")
    assert resolve_quantization("auto", cuda) == "nf4"
    assert resolve_quantization("none", cpu) == "none"
    with pytest.raises(ValueError, match="CPU path"):
        resolve_quantization("int4", cuda)
    loaded = load_base(Settings(base_model=str(tiny_llama), quantization="auto", device="cpu"))
    assert loaded.quantization == "int4"
    assert weight_only.is_int4(loaded.model.model.layers[0].self_attn.q_proj)


def test_int4_embedded_model_stays_close_to_the_float_one(plain_embedded: LoadedModel) -> None:
    """The embedded model was dequantized from a Q4_1 GGUF (groups of 32, 16 levels), which
    int4's groups of 32 hold almost exactly: the next token agrees with the unquantized model's
    on nearly every position of a real text (measured 0.96 with the int8 head; NF4 0.70)."""
    plain, tokenizer = plain_embedded.model, plain_embedded.tokenizer
    quantized = copy.deepcopy(plain)
    quantize_linears(quantized)
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()[:3000]
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :400]
    with torch.inference_mode():
        expected = plain(ids).logits[0].argmax(-1)
        ours = quantized(ids).logits[0].argmax(-1)
    assert float((ours == expected).float().mean()) >= 0.9


def test_peft_wraps_the_quantized_layers(tiny_llama: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = load_base(Settings(base_model=str(tiny_llama), quantization="int4",
                               device="cpu")).model
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        base = model(ids).logits
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = weight_only.with_peft_layers(LoraConfig(r=4, target_modules=targets,
                                                     init_lora_weights=False))
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        adapted = peft_model(ids).logits
        with peft_model.disable_adapter():
            assert torch.equal(peft_model(ids).logits, base)
    assert float((adapted - base).abs().max()) > 1e-2


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("fmt", ["dense", "nf4"])
def test_merging_into_an_int4_layer_and_restoring_it(fmt: str, kernel: str) -> None:
    layer = Int4Linear.from_linear(_linear(64, 128, seed=6), kernel=kernel)
    packed = layer.qweight.clone()
    bank = LoraSlots({"m": (128, 64)}, 1, 8, torch.float32, torch.device("cpu"))
    generator = torch.Generator().manual_seed(6)
    bank.a["m"][1] = torch.randn(8, 128, generator=generator) * 0.05
    bank.b["m"][1] = torch.randn(64, 8, generator=generator) * 0.05
    linear = SlotLinear(layer, bank.a["m"], bank.b["m"])
    x = torch.randn(2, 3, 128)
    expected = linear(x, plan_slots(torch.tensor([1, 1]), "gather"))
    merge = merge_slot({"m": linear}, slot=1, fmt=fmt)  # type: ignore[arg-type]
    merged = linear.base
    wanted = layer.dense_weight() + bank.b["m"][1] @ bank.a["m"][1]
    if fmt == "dense":
        assert type(merged) is nn.Linear
        assert float((linear(x, None) - expected).abs().max()) <= _layer_tolerance(expected)
    else:  # the sum quantized again in int4, with the same group size
        assert isinstance(merged, Int4Linear) and merged.group == layer.group
        assert merged.kernel == kernel
        again = Int4Linear.from_weight(wanted, layer.bias.detach() if layer.bias is not None
                                       else None, kernel=kernel)
        assert torch.equal(dense_weight(merged), again.dense_weight())
    merge.restore()
    assert linear.base is layer and torch.equal(layer.qweight, packed)


def test_projections_of_one_input_are_fused_and_compute_what_they_did_alone(
        tiny_llama: Path) -> None:
    """q, k, v (one input) and gate, up (another) become slices of one int4 layer each; the
    layers read alone (o, down) stay whole. Quantization is per row, so a slice computes what
    the projection quantized alone computes, up to the bfloat16 output's rounding."""
    model = load_base(Settings(base_model=str(tiny_llama), quantization="none",
                               device="cpu")).model
    plain = copy.deepcopy(model)
    quantize_linears(model)
    for layer, original in zip(model.model.layers, plain.model.layers, strict=True):
        attention, mlp = layer.self_attn, layer.mlp
        fused = {name: getattr(attention, name).fused_rows[0] for name in ("q_proj", "k_proj",
                                                                            "v_proj")}
        assert len({id(f) for f in fused.values()}) == 1
        assert mlp.gate_proj.fused_rows[0] is mlp.up_proj.fused_rows[0]
        assert mlp.gate_proj.fused_rows[0] is not fused["q_proj"]
        assert type(attention.o_proj) is Int4Linear and type(mlp.down_proj) is Int4Linear
        for path in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "mlp.gate_proj", "mlp.up_proj"):
            piece = layer.get_submodule(path)
            alone = Int4Linear.from_linear(original.get_submodule(path))
            assert isinstance(piece, Int4Slice)
            x = torch.randn(3, 2, piece.in_features)
            expected = alone(x)
            assert piece(x).shape == expected.shape
            assert float((piece(x) - expected).abs().max()) <= _layer_tolerance(expected)
            assert torch.equal(piece.dense_weight(), alone.dense_weight())


def test_a_linear_that_reads_its_own_input_is_not_fused() -> None:
    """Two sibling linears on different inputs (k computed from a normed x) stay apart."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = nn.Linear(64, 64)
            self.k_proj = nn.Linear(64, 64)
            self.norm = nn.LayerNorm(64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.q_proj(x) + self.k_proj(self.norm(x))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(8, 64)
            self.model = nn.Module()
            self.model.layers = nn.ModuleList([Block()])

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model.layers[0](self.embed(input_ids))

        def get_output_embeddings(self) -> None:
            return None

    model = Model()
    assert quantize_linears(model) == 2
    block = model.model.layers[0]
    assert type(block.q_proj) is Int4Linear and type(block.k_proj) is Int4Linear


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_dense_copy_serves_many_rows_and_the_codes_serve_few(kernel: str) -> None:
    """With a dense copy, a forward of DENSE_ROWS rows or more multiplies by the copy (the
    values the codes stand for) and fewer rows still read the codes: both within the bfloat16
    path's rounding of the layer's own dense weight, and the copy is what the codes hold."""
    layer = Int4Linear.from_linear(_linear(64, 128, seed=7), kernel=kernel)
    few = torch.randn(weight_only.DENSE_ROWS - 1, 128)
    many = torch.randn(weight_only.DENSE_ROWS, 128)
    codes_few, codes_many = layer(few), layer(many)
    layer.keep_dense_copy(torch.bfloat16)
    # the codes' values (on bfloat16's grid with torch's layout; rounded to it with cameo's)
    assert layer.dense is not None and torch.equal(layer.dense, layer.dense_weight().bfloat16())
    assert torch.equal(layer(few), codes_few)  # still the int4 kernel
    dense_many = layer(many)
    expected = many @ layer.dense_weight().T + layer.bias
    for got in (codes_many, dense_many):
        assert float((got - expected).abs().max()) <= _layer_tolerance(expected)
    assert _reads_codes(layer, few) and not _reads_codes(layer, many)


def _reads_codes(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether a forward of `layer` on `x` ran the int4 kernel."""
    with torch.autograd.profiler.profile() as prof:
        layer(x)
    names = ("int4pack", "cameo::int4_linear")
    return any(name in event.name for event in prof.function_events for name in names)


def test_dense_copies_cover_each_fused_layer_once(tiny_llama: Path) -> None:
    model = load_base(Settings(base_model=str(tiny_llama), quantization="int4",
                               int4_dense_copy="off", device="cpu")).model
    layers = weight_only.int4_layers(model)
    assert len(layers) == 2 * 4  # per layer: q/k/v fused, o, gate/up fused, down
    assert all(layer.dense is None for layer in layers)
    size = weight_only.add_dense_copies(model, torch.bfloat16)
    assert all(layer.dense is not None and layer.dense.dtype == torch.bfloat16
               for layer in layers)
    assert size == sum(layer.dense.nbytes for layer in layers if layer.dense is not None)
    served = load_base(Settings(base_model=str(tiny_llama), quantization="int4",
                                int4_dense_copy="auto", device="cpu")).model
    assert all(layer.dense is not None for layer in weight_only.int4_layers(served))
