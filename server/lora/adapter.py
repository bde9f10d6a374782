"""Read a PEFT LoRA adapter folder into plain tensors, refusing anything the engine cannot serve.

Contract: `read_adapter(folder, shapes, max_rank)` returns `AdapterWeights` whose `modules` map a
module key (`"<layer>.<proj>"`, e.g. `"3.q_proj"`) to `(A[r, in], B[out, r], scale)` with
`scale = lora_alpha / r` (or `lora_alpha / sqrt(r)` with `use_rslora`). Every check is done
before anything is returned; failures raise `AdapterError` with the offending field in `param`.

Only safetensors files are read (a pickled `.bin` is never opened). Variants that change the
math (DoRA, biases, `modules_to_save`, per-module alpha patterns) are refused, not approximated.
This module does not touch the device: `slots` copies the tensors there.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# A LoRA weight of a decoder layer's linear: "...layers.<i>.<block>.<name>.lora_A.weight", e.g.
# self_attn.q_proj, mlp.down_proj, self_attn.qkv_proj (Phi-3). Whether the module exists is
# decided by the loaded base's own modules (`ModuleShapes`), not by a fixed list.
_KEY = re.compile(
    r"(?:^|\.)layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\.(?P<proj>\w+)"
    r"\.lora_(?P<ab>[AB])(?:\.default)?\.weight$"
)

# (in_features, out_features) of every LoRA-capable module of the base, keyed "<layer>.<name>".
ModuleShapes = dict[str, tuple[int, int]]


class AdapterError(ValueError):
    """An adapter that cannot be served; `param` names the file or field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class AdapterWeights:
    """A validated LoRA adapter: per-module A, B (CPU tensors) and scale."""

    rank: int
    alpha: float
    use_rslora: bool
    target_modules: frozenset[str]
    base_model: str | None
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b, _ in self.modules.values())


def read_config(folder: Path) -> dict[str, Any]:
    """Parse and check `adapter_config.json`."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise AdapterError(f"{CONFIG_FILE} is missing", param="adapter_config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{CONFIG_FILE} is not valid JSON: {exc}", "adapter_config") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG_FILE} must hold a JSON object", "adapter_config")
    _check_config(config)
    return config


def _check_config(config: dict[str, Any]) -> None:
    refuse = {
        "use_dora": "DoRA adapters are not supported",
        "modules_to_save": "adapters with modules_to_save are not supported",
        "alpha_pattern": "per-module alpha_pattern is not supported",
    }
    if config.get("peft_type") != "LORA":
        raise AdapterError(
            f"peft_type must be LORA, got {config.get('peft_type')!r}", "adapter_config"
        )
    for key, message in refuse.items():
        if config.get(key):
            raise AdapterError(message, "adapter_config")
    if config.get("bias", "none") != "none":
        raise AdapterError("LoRA bias terms are not supported (bias must be none)", "adapter_config")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise AdapterError(f"{key} must be a positive number", "adapter_config")


def read_adapter(folder: Path, shapes: ModuleShapes, max_rank: int) -> AdapterWeights:
    """Read and validate the adapter in `folder` against the base's module shapes."""
    folder = Path(folder)
    if (folder / "adapter_model.bin").exists() and not (folder / WEIGHTS_FILE).exists():
        raise AdapterError(
            "pickled adapter_model.bin is refused; convert it to safetensors", "adapter_model"
        )
    config = read_config(folder)
    tensors = _read_tensors(folder / WEIGHTS_FILE)
    alpha = float(config["lora_alpha"])
    use_rslora = bool(config.get("use_rslora", False))
    pairs = _pair_tensors(tensors)
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for key, (a, b) in pairs.items():
        _check_pair(key, a, b, shapes, max_rank)
        rank = a.shape[0]
        scale = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        modules[key] = (a.float(), b.float(), scale)
    if not modules:
        raise AdapterError("the adapter holds no LoRA weights", "adapter_model")
    return AdapterWeights(
        rank=max(a.shape[0] for a, _, _ in modules.values()),
        alpha=alpha,
        use_rslora=use_rslora,
        target_modules=frozenset(key.split(".")[1] for key in modules),
        base_model=config.get("base_model_name_or_path"),
        modules=modules,
    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise AdapterError(f"{WEIGHTS_FILE} is missing", "adapter_model")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise AdapterError(f"{WEIGHTS_FILE} is not a valid safetensors file: {exc}",
                           "adapter_model") from exc


def _pair_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = _KEY.search(name)
        if match is None:
            raise AdapterError(f"tensor {name!r} is not a LoRA weight of a supported module",
                               "adapter_model")
        halves.setdefault(f"{match['layer']}.{match['proj']}", {})[match["ab"]] = tensor
    pairs = {}
    for key, half in halves.items():
        if set(half) != {"A", "B"}:
            raise AdapterError(f"module {key} has lora_A without lora_B or the reverse",
                               "adapter_model")
        pairs[key] = (half["A"], half["B"])
    return pairs


def _check_pair(
    key: str, a: torch.Tensor, b: torch.Tensor, shapes: ModuleShapes, max_rank: int
) -> None:
    if key not in shapes:
        names = sorted({k.partition(".")[2] for k in shapes})
        raise AdapterError(f"module {key} does not exist in the base model (its LoRA-capable "
                           f"modules: {', '.join(names)})", "adapter_model")
    in_features, out_features = shapes[key]
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
        raise AdapterError(f"module {key}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                           "are not a LoRA pair", "adapter_model")
    if a.shape[1] != in_features or b.shape[0] != out_features:
        raise AdapterError(
            f"module {key}: shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit the base "
            f"layer ({in_features} -> {out_features})", "adapter_model")
    if a.shape[0] > max_rank:
        raise AdapterError(f"rank {a.shape[0]} is above the server's max rank {max_rank}",
                           "adapter_config")
    for name, tensor in (("lora_A", a), ("lora_B", b)):
        if not tensor.is_floating_point():
            raise AdapterError(f"module {key}: {name} has dtype {tensor.dtype}, not float",
                               "adapter_model")
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterError(f"module {key}: {name} holds NaN or infinite values",
                               "adapter_model")
