"""Hostile adapters, each a real PEFT adapter with one thing changed, and how each must be refused.

`CASES[name]` edits a PEFT folder's parsed config and tensors (or replaces the config's bytes);
`build(name, source, out)` writes the edited folder. The unit tests (`test_adapter`) read them
with `read_adapter`, the robustness tests (`test_bad_adapters`) upload them over HTTP: both
expect the same `param`, `code` and words in the message.

The source adapter must target q_proj, v_proj and gate_proj (rank 8, alpha 16), as
`write_source` writes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tests.helpers import write_peft_adapter

Tensors = dict[str, torch.Tensor]
Config = dict[str, Any]
CONFIG, MODEL = "adapter_config", "adapter_model"
TARGETS = ("q_proj", "v_proj", "gate_proj")


@dataclass(frozen=True)
class Case:
    edit: Callable[[Config, Tensors], tuple[Config | bytes, Tensors]]
    param: str  # the file the error names
    words: str  # what the message must say
    code: str = "invalid_adapter"


def write_source(model: Any, folder: Path, base_model: str) -> Path:
    return write_peft_adapter(model, folder, seed=21, rank=8, alpha=16.0, targets=TARGETS,
                              b_scale=0.5, base_model=base_model)


def build(name: str, source: Path, out: Path) -> Path:
    """Write `source` with the edit of case `name` into the new folder `out`."""
    config = json.loads((source / "adapter_config.json").read_text())
    tensors = load_file(str(source / "adapter_model.safetensors"))
    new_config, new_tensors = CASES[name].edit(config, tensors)
    out.mkdir(parents=True)
    raw = new_config if isinstance(new_config, bytes) else json.dumps(new_config).encode()
    (out / "adapter_config.json").write_bytes(raw)
    save_file(new_tensors, str(out / "adapter_model.safetensors"))
    return out


def _set(**changes: Any) -> Callable[[Config, Tensors], tuple[Config, Tensors]]:
    return lambda config, tensors: ({**config, **changes}, tensors)


def _text(text: str) -> Callable[[Config, Tensors], tuple[bytes, Tensors]]:
    return lambda config, tensors: (text.encode(), tensors)


def _alpha_text(literal: str) -> Callable[[Config, Tensors], tuple[bytes, Tensors]]:
    """The config with lora_alpha spelled `literal` (NaN, Infinity: not JSON, but Python's)."""
    def edit(config: Config, tensors: Tensors) -> tuple[bytes, Tensors]:
        return json.dumps({**config, "lora_alpha": "@"}).replace('"@"', literal).encode(), tensors
    return edit


def _key(tensors: Tensors, *parts: str) -> str:
    return next(k for k in sorted(tensors) if all(p in k for p in parts))


def _tensor(*parts: str, make: Callable[[torch.Tensor], torch.Tensor]
            ) -> Callable[[Config, Tensors], tuple[Config, Tensors]]:
    """Replace the first tensor whose name has all `parts` by `make(tensor)`."""
    def edit(config: Config, tensors: Tensors) -> tuple[Config, Tensors]:
        key = _key(tensors, *parts)
        return config, {**tensors, key: make(tensors[key])}
    return edit


def _rename(old: str, new: str, keep: bool = False
            ) -> Callable[[Config, Tensors], tuple[Config, Tensors]]:
    """The first q_proj lora_A tensor under a new name (`keep`: as well as the old one)."""
    def edit(config: Config, tensors: Tensors) -> tuple[Config, Tensors]:
        key = _key(tensors, "layers.0.self_attn.q_proj.lora_A")
        out = dict(tensors) if keep else {k: v for k, v in tensors.items() if k != key}
        out[key.replace(old, new)] = tensors[key].clone()
        return config, out
    return edit


def _add(name: str, make: Callable[[Tensors], torch.Tensor]
         ) -> Callable[[Config, Tensors], tuple[Config, Tensors]]:
    return lambda config, tensors: (config, {**tensors, name: make(tensors)})


def _scale_b(factor: float) -> Callable[[Config, Tensors], tuple[Config, Tensors]]:
    return lambda config, tensors: (config, {k: v * factor if "lora_B" in k else v
                                             for k, v in tensors.items()})


def _zero_rank(config: Config, tensors: Tensors) -> tuple[Config, Tensors]:
    a, b = _key(tensors, "q_proj.lora_A"), _key(tensors, "q_proj.lora_B")
    return config, {**tensors, a: tensors[a][:0].clone(), b: tensors[b][:, :0].clone()}


def _drop_b(config: Config, tensors: Tensors) -> tuple[Config, Tensors]:
    key = _key(tensors, "q_proj.lora_B")
    return config, {k: v for k, v in tensors.items() if k != key}


def _nested(depth: int, open_: str, close: str) -> str:
    return '{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "x": ' + open_ * depth + close * depth + "}"


_PREFIX = "base_model.model.model.layers.0."
_DEEP_DICT = '{"a": ' * 100_000 + "1" + "}" * 100_000
CASES: dict[str, Case] = {
    # adapter_config.json that is not a small JSON object
    "deep_list": Case(_text(_nested(100_000, "[", "]")), CONFIG, "deeper than", "invalid_json"),
    "deep_dict": Case(_text(_DEEP_DICT), CONFIG, "deeper than", "invalid_json"),
    "nested_past_limit": Case(_text(_nested(20, "[", "]")), CONFIG, "deeper than",
                              "invalid_json"),
    "top_level_array": Case(_text("[1, 2]"), CONFIG, "must hold an object", "invalid_json"),
    "huge_integer": Case(_text('{"r": ' + "9" * 5000 + "}"), CONFIG, "number too long",
                         "invalid_json"),
    "over_1_mib": Case(_set(peft_version="x" * (1 << 20)), CONFIG, "bytes"),
    "alpha_nan": Case(_alpha_text("NaN"), CONFIG, "NaN is not a number", "invalid_json"),
    "alpha_infinity": Case(_alpha_text("-Infinity"), CONFIG, "Infinity", "invalid_json"),
    # lora_alpha and r
    "alpha_overflows_to_inf": Case(_alpha_text("1e999"), CONFIG, "lora_alpha must be"),
    "alpha_1e308": Case(_set(lora_alpha=1e308), CONFIG, "lora_alpha must be"),
    "alpha_negative": Case(_set(lora_alpha=-16), CONFIG, "lora_alpha must be"),
    "alpha_zero": Case(_set(lora_alpha=0), CONFIG, "lora_alpha must be"),
    "alpha_string": Case(_set(lora_alpha="16"), CONFIG, "lora_alpha must be"),
    "alpha_bool": Case(_set(lora_alpha=True), CONFIG, "lora_alpha must be"),
    "r_bool": Case(_set(r=True), CONFIG, "r must be a whole number"),
    "r_float": Case(_set(r=8.0), CONFIG, "r must be a whole number"),
    "r_zero": Case(_set(r=0), CONFIG, "r must be a whole number"),
    "r_not_the_tensors_rank": Case(_set(r=4), CONFIG, "has rank 8 but adapter_config says r = 4"),
    "no_r": Case(lambda c, t: ({k: v for k, v in c.items() if k != "r"}, t), CONFIG, "has no r"),
    # booleans are JSON booleans
    "rslora_string": Case(_set(use_rslora="no"), CONFIG, "use_rslora must be true or false"),
    # the word JSON in a value does not make the code invalid_json
    "json_in_a_value": Case(_set(use_rslora="JSON"), CONFIG, "use_rslora must be"),
    "dora_string": Case(_set(use_dora="false"), CONFIG, "use_dora must be true or false"),
    "fan_in_fan_out_int": Case(_set(fan_in_fan_out=1), CONFIG, "fan_in_fan_out must be true"),
    "inference_mode_null": Case(_set(inference_mode=None), CONFIG, "inference_mode must be"),
    # PEFT features the server does not implement
    "dora": Case(_set(use_dora=True), CONFIG, "DoRA"),
    "bias_all": Case(_set(bias="all"), CONFIG, "bias must be none"),
    "lora_bias": Case(_set(lora_bias=True), CONFIG, "lora_bias"),
    "modules_to_save": Case(_set(modules_to_save=["lm_head"]), CONFIG, "modules_to_save is"),
    "layer_replication": Case(_set(layer_replication=[[0, 10], [5, 15]]), CONFIG,
                              "layer_replication is"),
    "megatron_config": Case(_set(megatron_config={"tensor_model_parallel_size": 2}), CONFIG,
                            "megatron_config is"),
    "target_parameters": Case(_set(target_parameters=["mlp.experts.down_proj"]), CONFIG,
                              "target_parameters is"),
    "alora": Case(_set(alora_invocation_tokens=[1, 2]), CONFIG, "aLoRA"),
    "qalora": Case(_set(use_qalora=True), CONFIG, "QA-LoRA"),
    "trainable_tokens": Case(_set(trainable_token_indices=[5]), CONFIG, "trainable_token"),
    "pissa_init": Case(_set(init_lora_weights="pissa"), CONFIG, "rewrites the base model"),
    "rank_pattern": Case(_set(rank_pattern={"q_proj": 4}), CONFIG, "rank_pattern"),
    "alpha_pattern": Case(_set(alpha_pattern={"v_proj": 64}), CONFIG, "alpha_pattern"),
    "target_regex": Case(_set(target_modules=".*(q|v)_proj"), CONFIG, "regular expression"),
    "exclude_regex": Case(_set(exclude_modules=".*v_proj"), CONFIG, "regular expression"),
    "unknown_field_set": Case(_set(future_feature={"on": True}), CONFIG, "future_feature"),
    "peft_type_ia3": Case(_set(peft_type="IA3"), CONFIG, "LORA"),
    "base_model_not_a_name": Case(_set(base_model_name_or_path=7), CONFIG,
                                  "base_model_name_or_path must be"),
    # the tensors are not what the config says PEFT would load
    "tensors_outside_targets": Case(_set(target_modules=["q_proj", "v_proj"]), MODEL,
                                    "target_modules"),
    "tensors_outside_layers": Case(_set(layers_to_transform=[1, 2]), MODEL, "layers_to_transform"),
    "tensors_excluded": Case(_set(exclude_modules=["gate_proj"]), MODEL, "exclude_modules"),
    # tensors of the wrong kind
    "scalar_a": Case(_tensor("q_proj.lora_A", make=lambda t: torch.tensor(1.0)), MODEL,
                     "not a LoRA pair"),
    "rank_zero": Case(_zero_rank, MODEL, "rank 1 or more"),
    "float8_e4m3fn": Case(_tensor("q_proj.lora_A", make=lambda t: t.to(torch.float8_e4m3fn)),
                          MODEL, "float8_e4m3fn, not float"),
    "float8_e5m2": Case(_tensor("v_proj.lora_B", make=lambda t: t.to(torch.float8_e5m2)),
                        MODEL, "float8_e5m2, not float"),
    "int32": Case(_tensor("q_proj.lora_A", make=lambda t: t.to(torch.int32)), MODEL,
                  "int32, not float"),
    "bool": Case(_tensor("q_proj.lora_B", make=lambda t: t > 0), MODEL, "bool, not float"),
    "complex": Case(_tensor("q_proj.lora_A", make=lambda t: t.to(torch.complex64)), MODEL,
                    "complex64, not float"),
    "infinite_a": Case(_tensor("gate_proj.lora_A", make=lambda t: t.index_fill(
        1, torch.tensor([3]), float("inf"))), MODEL, "NaN or infinite"),
    "b_times_1e30": Case(_scale_b(1e30), MODEL, "too large"),
    "lora_a_without_b": Case(_drop_b, MODEL, "lora_A without lora_B"),
    # tensor names that do not name exactly one module of the base
    "gate_proj_under_self_attn": Case(_rename("self_attn.q_proj", "self_attn.gate_proj"), MODEL,
                                      "has it at mlp.gate_proj"),
    "module_not_in_base": Case(_rename("layers.0.", "layers.99."), MODEL, "does not exist"),
    "leading_zero_layer": Case(_rename("layers.0.", "layers.00."), MODEL, "is not the lora_A"),
    "arabic_digit_layer": Case(_rename("layers.0.", "layers.\u0660."), MODEL, "is not the lora_A"),
    "duplicate_default": Case(_rename("lora_A.weight", "lora_A.default.weight", keep=True),
                              MODEL, "are both lora_A of"),
    "duplicate_without_prefix": Case(_rename("base_model.model.", "", keep=True), MODEL,
                                     "are both lora_A of"),
    "lora_embedding_a": Case(_add("base_model.model.model.embed_tokens.lora_embedding_A",
                                  lambda t: torch.zeros(8, 16)), MODEL, "is not the lora_A"),
    "magnitude_vector": Case(_add(_PREFIX + "self_attn.q_proj.lora_magnitude_vector",
                                  lambda t: torch.ones(576)), MODEL, "is not the lora_A"),
    "base_layer_weight": Case(_add(_PREFIX + "self_attn.q_proj.base_layer.weight",
                                   lambda t: torch.zeros(4, 4)), MODEL, "is not the lora_A"),
}
