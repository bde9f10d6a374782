"""The PEFT adapter reader on adapters PEFT itself writes into tmp folders.

What it accepts means what PEFT means: the same A, B and scale per module as PEFT's own loader
gives for the same folder. Every hostile edit of `tests.lora.bad_adapters` is refused with its
file, code and reason. Real adapters sit far below the reader's limits.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from server.engine.runner import module_shapes
from server.lora.adapter import MAX_DELTA_NORM, AdapterError, ModuleShapes, read_adapter
from server.lora.slots import plain_modules
from server.model.loader import LoadedModel
from tests.helpers import write_peft_adapter
from tests.lora.bad_adapters import CASES, build, write_source

SHIPPED = Path(__file__).parents[2] / "adapters" / "registry"
MAX_RANK = 16


@pytest.fixture(scope="module")
def shapes(plain_embedded: LoadedModel) -> ModuleShapes:
    return module_shapes(plain_embedded.model)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, plain_embedded: LoadedModel) -> Path:
    return write_source(plain_embedded.model, tmp_path_factory.mktemp("source"),
                        plain_embedded.model_id)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_adapter_is_refused_with_its_reason(case: str, source: Path, shapes: ModuleShapes,
                                                    tmp_path: Path) -> None:
    expected = CASES[case]
    with pytest.raises(AdapterError) as caught:
        read_adapter(build(case, source, tmp_path / case), shapes, MAX_RANK)
    error = caught.value
    assert expected.words in error.message, error.message
    assert (error.param, error.code) == (expected.param, expected.code), error.message


def _peft_layers(model: Any, folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """(A, B, scaling) of every LoRA layer PEFT's own loader makes of `folder`, keyed by name."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    with plain_modules(model):
        peft_model = PeftModel.from_pretrained(model, str(folder))
        try:
            layers: dict[str, Any] = {name.removeprefix("base_model.model."): layer for name, layer
                                      in peft_model.named_modules() if isinstance(layer, LoraLayer)}
            return {name: (layer.lora_A["default"].weight.detach().clone(),
                           layer.lora_B["default"].weight.detach().clone(),
                           layer.scaling["default"]) for name, layer in layers.items()}
        finally:
            peft_model.unload()


@pytest.mark.parametrize("kwargs", [
    {"rank": 8},
    {"rank": 16, "targets": "all-linear"},
    {"rank": 4, "alpha": 8.0, "use_rslora": True, "targets": ("q_proj", "down_proj")},
], ids=["plain", "all-linear", "rslora"])
def test_what_is_read_is_what_peft_loads(kwargs: dict[str, Any], plain_embedded: LoadedModel,
                                          shapes: ModuleShapes, tmp_path: Path) -> None:
    folder = write_peft_adapter(plain_embedded.model, tmp_path / "a", seed=3, **kwargs)
    weights = read_adapter(folder, shapes, MAX_RANK)
    peft = _peft_layers(plain_embedded.model, folder)
    ours = {f"model.layers.{key.split('.')[0]}.{shapes.paths[key]}": value
            for key, value in weights.modules.items()}
    assert set(ours) == set(peft)
    for name, (a, b, scale) in ours.items():
        peft_a, peft_b, peft_scale = peft[name]
        assert torch.equal(a, peft_a) and torch.equal(b, peft_b), name
        assert scale == peft_scale, name
    alpha, rank = kwargs.get("alpha", 16.0), kwargs["rank"]
    assert scale == (alpha / math.sqrt(rank) if kwargs.get("use_rslora") else alpha / rank)
    assert weights.rank == rank and weights.use_rslora == bool(kwargs.get("use_rslora"))


def test_module_shapes_know_where_each_module_is(shapes: ModuleShapes) -> None:
    assert shapes.paths["0.q_proj"] == "self_attn.q_proj"
    assert shapes.paths["29.gate_proj"] == "mlp.gate_proj"
    assert set(shapes.paths) == set(shapes)


def _delta_bounds(weights: Any) -> list[float]:
    return [scale * float(a.norm()) * float(b.norm()) for a, b, scale in weights.modules.values()]


def test_real_adapters_are_far_below_the_effect_limit(plain_embedded: LoadedModel,
                                                      shapes: ModuleShapes,
                                                      tmp_path: Path) -> None:
    """PEFT's non-zero random init (A and B both Kaiming-uniform, as `write_peft_adapter` does)
    and the trained personas shipped in adapters/registry, against MAX_DELTA_NORM."""
    random_init = write_peft_adapter(plain_embedded.model, tmp_path / "init", seed=4, rank=16,
                                     targets="all-linear")
    assert max(_delta_bounds(read_adapter(random_init, shapes, MAX_RANK))) < MAX_DELTA_NORM / 10
    trained = [read_adapter(folder, shapes, 64) for folder in sorted(SHIPPED.iterdir())]
    assert trained and max(max(_delta_bounds(w)) for w in trained) < MAX_DELTA_NORM / 1000


def _rewrite(source: Path, out: Path, **changes: Any) -> Path:
    shutil.copytree(source, out)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return out


@pytest.mark.parametrize("changes", [
    {"rank_pattern": {"q_proj": 8}, "alpha_pattern": {"v_proj": 16}},  # the same r and alpha
    {"future_feature": None, "another_future_feature": []},  # unknown, but off
    {"fan_in_fan_out": True},  # PEFT ignores it on torch.nn.Linear
    {"layers_to_transform": list(range(30)), "layers_pattern": "layers"},
    {"init_lora_weights": "gaussian", "lora_dropout": 0.1, "inference_mode": False},
], ids=["trivial-patterns", "unknown-off", "fan-in-fan-out", "all-layers", "training-only"])
def test_fields_that_change_nothing_are_accepted(changes: dict[str, Any], source: Path,
                                                 shapes: ModuleShapes, tmp_path: Path) -> None:
    expected = read_adapter(source, shapes, MAX_RANK)
    weights = read_adapter(_rewrite(source, tmp_path / "a", **changes), shapes, MAX_RANK)
    assert weights.modules.keys() == expected.modules.keys()
    assert all(torch.equal(weights.modules[k][1], b) and weights.modules[k][2] == s
               for k, (_, b, s) in expected.modules.items())


def test_other_spellings_of_the_tensor_names_read_the_same(source: Path, shapes: ModuleShapes,
                                                          tmp_path: Path) -> None:
    """Without the base_model.model. prefix, or with PEFT's in-memory ".default" adapter name."""
    expected = read_adapter(source, shapes, MAX_RANK)
    out = shutil.copytree(source, tmp_path / "a")
    tensors = load_file(str(out / "adapter_model.safetensors"))
    renamed = {k.removeprefix("base_model.model.").replace(".weight", ".default.weight"): v
               for k, v in tensors.items()}
    save_file(renamed, str(out / "adapter_model.safetensors"))
    weights = read_adapter(out, shapes, MAX_RANK)
    assert all(torch.equal(weights.modules[k][0], a) for k, (a, _, _) in expected.modules.items())


def test_plain_dict_shapes_check_leaf_names_only(source: Path, shapes: ModuleShapes) -> None:
    """Shapes that lost their paths (a JSON round trip) still read a valid adapter."""
    plain = {key: (value[0], value[1]) for key, value in json.loads(json.dumps(shapes)).items()}
    expected = read_adapter(source, shapes, MAX_RANK).modules.keys()
    assert read_adapter(source, plain, MAX_RANK).modules.keys() == expected


@pytest.mark.parametrize("vanishing", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_folder_deleted_while_it_is_read_is_an_adapter_error(
        vanishing: str, source: Path, shapes: ModuleShapes, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A persona deleted while a request reads its version (CI's upload/delete/chat storm):
    the files go between the check that they exist and the read. That is an AdapterError
    (the API turns it into 404), never a bare FileNotFoundError (a 500)."""
    folder = shutil.copytree(source, tmp_path / "storm")
    checked = Path.is_file

    def delete_right_after_the_check(path: Path) -> bool:
        found = checked(path)
        if path.name == vanishing:
            shutil.rmtree(folder, ignore_errors=True)
        return found

    monkeypatch.setattr(Path, "is_file", delete_right_after_the_check)
    with pytest.raises(AdapterError, match=r"missing|not a valid safetensors"):
        read_adapter(folder, shapes, MAX_RANK)
