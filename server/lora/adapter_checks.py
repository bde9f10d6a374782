"""The rules an adapter_config.json must pass, and PEFT's own rule for which modules it adapts.

Contract: `check_config(config)` raises `ConfigProblem(field, message)` for the first field that
breaks a rule; `targeted(config, module)` says whether PEFT, loading this (checked) config,
would put a LoRA layer on `module` (its full name in the base, "model.layers.3.self_attn.q_proj").

One table, `FIELDS`, holds every field PEFT's LoraConfig writes: what type and range the value
must have (`valid`) and whether the server implements that value (`served`). A value of the
wrong type is refused, never coerced (`"use_rslora": "no"` is not true). A field the server
does not implement (DoRA, biases, modules_to_save, layer_replication, aLoRA, QA-LoRA, ...) is
accepted only when it is off, so nothing an adapter asks for is silently ignored; a field not
in the table (a newer PEFT's) likewise only when it is off (null, false or empty).

Limits: 0 < lora_alpha <= MAX_ALPHA (1e4): common recipes use alpha <= 2r, and r <= 2048
gives 4096 at most; the tensors' own bound (`MAX_DELTA_NORM` in `adapter`) is the real guard.
rank_pattern / alpha_pattern are honoured only when they change nothing (every entry equal to
r / lora_alpha): PEFT matches their keys as regular expressions, which an upload may not make
the server run. For the same reason a target_modules or exclude_modules regex is refused and
layers_pattern must be plain names.

This module reads no files and knows nothing about tensors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_ALPHA = 1e4
Config = Mapping[str, Any]
REQUIRED = ("peft_type", "r", "lora_alpha", "target_modules")
# PEFT's init_lora_weights values that leave the base model's weights alone when it loads the
# adapter; the others (pissa, olora, corda, loftq, lora_ga) rewrite them, mica is a variant
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
_PLAIN_NAME = re.compile(r"\w+", re.ASCII)


class ConfigProblem(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _anything(value: Any, config: Config) -> bool:
    return True


def _off(value: Any, config: Config | None = None) -> bool:
    return value is None or value is False or (isinstance(value, str | list | dict)
                                               and len(value) == 0)


def _is_bool(value: Any, config: Config) -> bool:
    return isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any, Config], bool]:
    return lambda value, config: value is None or check(value)


def _pattern_off(default: str) -> Callable[[Any, Config], bool]:
    """A rank_pattern / alpha_pattern that changes nothing: empty, or every entry the default."""
    return lambda value, config: all(_is_number(v) and v == config.get(default)
                                     for v in (value or {}).values())


@dataclass(frozen=True)
class Field:
    valid: Callable[[Any, Config], bool]  # the type and range PEFT gives the field
    expected: str  # what `valid` asks for, in words
    served: Callable[[Any, Config], bool] = _anything  # the server implements this value
    refused: str = ""  # why a valid value that is not served is refused


BOOLEAN = "true or false"
_OBJECT = "an object or null"


def _unsupported(feature: str, valid: Callable[[Any, Config], bool] = _anything,
                 expected: str = "") -> Field:
    return Field(valid, expected, _off, f"{feature} is not supported by this server")


FIELDS: dict[str, Field] = {
    "peft_type": Field(lambda v, c: v == "LORA", '"LORA" (this server serves LoRA adapters)'),
    "r": Field(lambda v, c: _is_int(v) and v >= 1, "a whole number of at least 1"),
    "lora_alpha": Field(lambda v, c: _is_number(v) and math.isfinite(v) and 0 < v <= MAX_ALPHA,
                        f"a number above 0 and at most {MAX_ALPHA:g}"),
    "use_rslora": Field(_is_bool, BOOLEAN),
    "inference_mode": Field(_is_bool, BOOLEAN),
    "fan_in_fan_out": Field(_is_bool, BOOLEAN),  # PEFT ignores it on torch.nn.Linear layers
    "ensure_weight_tying": Field(_is_bool, BOOLEAN),
    "lora_dropout": Field(lambda v, c: _is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "init_lora_weights": Field(lambda v, c: isinstance(v, bool | str), "true, false or a name",
                               lambda v, c: v in PLAIN_INITS,
                               "this initialisation rewrites the base model's weights when PEFT "
                               "loads the adapter; convert it to a plain LoRA adapter first"),
    "target_modules": Field(lambda v, c: _names(v) or isinstance(v, str),
                            'a list of module names or "all-linear"',
                            lambda v, c: isinstance(v, list) or v.lower() == "all-linear",
                            "a regular expression in target_modules is not supported; list "
                            "the module names"),
    "exclude_modules": Field(_optional(lambda v: _names(v) or isinstance(v, str)),
                             "a list of module names or null",
                             lambda v, c: not isinstance(v, str) or v == "",
                             "a regular expression in exclude_modules is not supported; list "
                             "the module names"),
    "layers_to_transform": Field(_optional(lambda v: _is_int(v) or (isinstance(v, list) and all(
        _is_int(i) for i in v))), "a layer number, a list of them, or null"),
    "layers_pattern": Field(_optional(lambda v: isinstance(v, str) or _names(v)),
                            "a name, a list of names, or null",
                            lambda v, c: all(_PLAIN_NAME.fullmatch(p) for p in (
                                [v] if isinstance(v, str) and v else v or [])),
                            "layers_pattern must be plain names such as \"layers\""),
    "rank_pattern": Field(_optional(lambda v: isinstance(v, dict)), _OBJECT,
                          _pattern_off("r"), "a rank_pattern that gives some modules another "
                          "rank than r is not supported"),
    "alpha_pattern": Field(_optional(lambda v: isinstance(v, dict)), _OBJECT,
                           _pattern_off("lora_alpha"), "an alpha_pattern that gives some "
                           "modules another lora_alpha is not supported"),
    "base_model_name_or_path": Field(_optional(lambda v: isinstance(v, str)), "a name or null"),
    "bias": Field(lambda v, c: v in ("none", "all", "lora_only"), '"none", "all" or "lora_only"',
                  lambda v, c: v == "none", "bias terms are not supported (bias must be none)"),
    "lora_bias": _unsupported("lora_bias (a bias on lora_B)", _is_bool, BOOLEAN),
    "use_dora": _unsupported("DoRA (use_dora)", _is_bool, BOOLEAN),
    "use_qalora": _unsupported("QA-LoRA (use_qalora)", _is_bool, BOOLEAN),
    "modules_to_save": _unsupported("modules_to_save (fully trained extra modules)"),
    "layer_replication": _unsupported("layer_replication (repeated base layers)"),
    "trainable_token_indices": _unsupported("trainable_token_indices (trained embeddings)"),
    "target_parameters": _unsupported("target_parameters (LoRA on bare parameters)"),
    "megatron_config": _unsupported("megatron_config (Megatron parallel layers)"),
    "alora_invocation_tokens": _unsupported("aLoRA (alora_invocation_tokens)"),
    "velora_config": _unsupported("VeLoRA (velora_config)"),
    "monteclora_config": _unsupported("MonteCLoRA (monteclora_config)"),
    "use_bdlora": _unsupported("BD-LoRA (use_bdlora)"),
    "arrow_config": _unsupported("Arrow routing (arrow_config)"),
    "kasa_config": _unsupported("KaSA (kasa_config)"),
    # bookkeeping, or used only while training or by an initialisation refused above
    **{name: Field(_anything, "") for name in (
        "task_type", "auto_mapping", "peft_version", "revision", "megatron_core",
        "qalora_group_size", "loftq_config", "eva_config", "corda_config", "lora_ga_config",
        "runtime_config")},
}
_UNKNOWN = Field(_anything, "", _off, "this server does not know the field; it is refused "
                 "rather than ignored")


def check_config(config: Config) -> None:
    """Raise `ConfigProblem` for the first field of `config` that breaks its rule."""
    for field in REQUIRED:
        if field not in config:
            raise ConfigProblem(field, f"adapter_config has no {field}")
    for field, value in config.items():
        rule = FIELDS.get(field, _UNKNOWN)
        if not rule.valid(value, config):
            raise ConfigProblem(field, f"{_clip(field)} must be {rule.expected}, got "
                                f"{_show(value)}")
        if not rule.served(value, config):
            raise ConfigProblem(field, f"{_clip(field)} is {_show(value)}: {rule.refused}")


def targeted(config: Config, module: str) -> bool:
    """PEFT's `check_target_module_exists` for a checked config (no regexes left to run)."""
    exclude = config.get("exclude_modules") or []
    if module in exclude or any(module.endswith(f".{name}") for name in exclude):
        return False
    targets = config["target_modules"]
    if isinstance(targets, str):  # "all-linear": every linear, and every LoRA-capable one is
        return _in_layers(config, module)
    if module in targets:  # a full name: PEFT does not look at layers_to_transform then
        return True
    return any(module.endswith(f".{name}") for name in targets) and _in_layers(config, module)


def _in_layers(config: Config, module: str) -> bool:
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    patterns = config.get("layers_pattern") or []
    patterns = [patterns] if isinstance(patterns, str) else patterns
    found = None
    if not patterns:
        found = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
    for pattern in patterns:  # plain names (checked), so these regexes are PEFT's own
        found = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", module)
        if found:
            break
    if found is None:
        return False
    index = int(found["idx"])
    return index == layers if isinstance(layers, int) else index in layers


def _show(value: Any) -> str:
    """A value from the upload as JSON writes it (true, "no", null), cut short."""
    return _clip(json.dumps(value))


def _clip(text: str, limit: int = 80) -> str:
    """`text` (from the upload) cut short enough for an error message."""
    return text if len(text) <= limit else f"{text[:limit]}..."
