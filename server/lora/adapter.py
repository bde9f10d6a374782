"""Read a PEFT LoRA adapter folder into plain tensors, refusing anything the engine cannot serve.

Contract: `read_adapter(folder, shapes, max_rank)` returns `AdapterWeights` whose `modules` map a
module key (`"<layer>.<leaf>"`, e.g. `"3.q_proj"`) to `(A[r, in], B[out, r], scale)` with
`scale = lora_alpha / r` (or `lora_alpha / sqrt(r)` with `use_rslora`), which is what PEFT
computes for that config. Every check is done before anything is returned; a failure raises
`AdapterError` naming the file (`param`: "adapter_config" or "adapter_model") and, in words,
the field, tensor or module at fault.

What is accepted:
- adapter_config.json: at most `MAX_CONFIG_BYTES` (1 MiB; PEFT writes ~1.5 KiB), strict JSON
  (no NaN / Infinity), an object nested at most `MAX_JSON_DEPTH` (16) levels; every field
  passes `adapter_checks` (types, ranges, and no PEFT feature the server does not implement).
- adapter_model.safetensors (a pickled .bin is never opened): only
  `[base_model.model.]model.layers.<i>.<path>.lora_A|lora_B[.default].weight` tensors, where
  `<path>` is exactly where the base holds that LoRA-capable linear (`ModuleShapes.paths`), one
  A and one B per module (two spellings of one module are refused), each a 2-D float16 /
  bfloat16 / float32 / float64 tensor of finite values whose shapes fit the base layer, with
  rank r of the config (1 <= r <= max_rank), on a module PEFT would adapt for this config.
- the adapter's effect per module is bounded: scale * |B|_F * |A|_F, an upper bound on the
  spectral norm of the delta scale * B @ A, is at most `MAX_DELTA_NORM` (1e4). On the embedded
  model the trained personas (adapters/registry) measure at most 2.4, PEFT's non-zero random
  init (A and B Kaiming-uniform, as the tests write) 75 to 225 at rank 8 to 64, and the base's
  own linears have spectral norms up to 82: 1e4 leaves room for any real adapter while keeping
  |delta(x)| <= 1e4 |x| far inside the float32 / bfloat16 range, so a finite adapter cannot
  turn every chat into NaN. (float16, at 65504, has no such margin for any bound on the
  weights alone.)

This module does not touch the device (`slots` copies the tensors there) and does not know
where the folder came from (uploads, the shipped personas and the host cache all call it).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from server.errors import CameoError
from server.lora.adapter_checks import ConfigProblem, check_config, targeted

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1 << 20
MAX_JSON_DEPTH = 16
MAX_DELTA_NORM = 1e4
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PREFIX = "base_model.model."
_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<half>[AB])(?:\.default)?\.weight", re.ASCII)
_MODULE = re.compile(r"model\.layers\.(?P<layer>0|[1-9]\d{0,8})\.(?P<path>\w+(?:\.\w+)*)",
                     re.ASCII)  # an Arabic-Indic digit is no layer number


class ModuleShapes(dict[str, tuple[int, int]]):
    """(in_features, out_features) of every LoRA-capable module of the base, keyed
    "<layer>.<leaf>" (e.g. "3.q_proj"); `paths` holds each one's dotted path inside its decoder
    layer ("self_attn.q_proj"). A plain dict (no paths) checks an adapter's leaf names only."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]] | None = None,
                 paths: Mapping[str, str] | None = None) -> None:
        super().__init__(shapes or {})
        self.paths: dict[str, str] = dict(paths or {})


class AdapterError(CameoError, ValueError):
    """An adapter that cannot be served; `param` names the file or field at fault, `code` the
    kind of fault ("invalid_json" when adapter_config.json is not a JSON object)."""

    code = "invalid_adapter"


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


@dataclass(frozen=True)
class _Module:
    """One module an adapter's tensors name: its full name in the base and its key."""

    name: str  # "model.layers.3.self_attn.q_proj"
    key: str  # "3.q_proj"


def read_config(folder: Path) -> dict[str, Any]:
    """Parse and check `adapter_config.json`."""
    path = Path(folder) / CONFIG_FILE
    missing = AdapterError(f"{CONFIG_FILE} is missing", "adapter_config")
    if not path.is_file():  # a FIFO or a folder by that name: never opened
        raise missing
    try:  # one handle: the folder may be deleted at any moment (a persona deleted mid-read)
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise missing from exc
    if max(size, len(data)) > MAX_CONFIG_BYTES:
        raise AdapterError(f"{CONFIG_FILE} is {max(size, len(data))} bytes; a LoRA config is a "
                           f"few KiB and at most {MAX_CONFIG_BYTES} bytes are read",
                           "adapter_config")
    config = _parse_json(data)
    _check_config(config)
    return config


class _NotJson(ValueError):
    pass


def _parse_json(data: bytes) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise _NotJson(f"{constant} is not a number in JSON")

    try:
        config = json.loads(data.decode("utf-8"), parse_constant=refuse)
    except RecursionError as exc:
        raise _json_error(f"it nests values deeper than {MAX_JSON_DEPTH} levels") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, _NotJson) as exc:
        raise _json_error(str(exc)[:200]) from exc
    except ValueError as exc:  # int() of thousands of digits
        raise _json_error("it holds a number too long to read") from exc
    if not isinstance(config, dict):
        raise _json_error(f"it must hold an object, not {type(config).__name__}")
    if _depth(config) > MAX_JSON_DEPTH:
        raise _json_error(f"it nests values deeper than {MAX_JSON_DEPTH} levels")
    return config


def _json_error(why: str) -> AdapterError:
    return AdapterError(f"{CONFIG_FILE} is not valid JSON for an adapter config: {why}",
                        "adapter_config", code="invalid_json")


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _check_config(config: dict[str, Any]) -> None:
    try:
        check_config(config)
    except ConfigProblem as exc:
        raise AdapterError(exc.message, "adapter_config") from exc


def read_adapter(folder: Path, shapes: Mapping[str, tuple[int, int]],
                 max_rank: int) -> AdapterWeights:
    """Read and validate the adapter in `folder` against the base's module shapes (a
    `ModuleShapes`; a plain mapping has no paths, so only leaf names are checked)."""
    folder = Path(folder)
    if (folder / "adapter_model.bin").exists() and not (folder / WEIGHTS_FILE).exists():
        raise AdapterError(
            "pickled adapter_model.bin is refused; convert it to safetensors", "adapter_model")
    config = read_config(folder)
    tensors = _read_tensors(folder / WEIGHTS_FILE)
    alpha, rank = float(config["lora_alpha"]), int(config["r"])
    use_rslora = bool(config.get("use_rslora", False))
    scale = alpha / math.sqrt(rank) if use_rslora else alpha / rank
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for module, (a, b) in _pair_tensors(tensors, shapes).items():
        if not targeted(config, module.name):
            raise AdapterError(f"the adapter holds weights for {module.name}, which its "
                               "target_modules (and layers_to_transform / exclude_modules) do "
                               "not cover: PEFT would not load them", "adapter_model")
        _check_pair(module, a, b, shapes[module.key], max_rank, rank, scale)
        modules[module.key] = (a.float(), b.float(), scale)
    if not modules:
        raise AdapterError("the adapter holds no LoRA weights", "adapter_model")
    return AdapterWeights(
        rank=rank,
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


def _pair_tensors(tensors: dict[str, torch.Tensor], shapes: Mapping[str, tuple[int, int]]
                  ) -> dict[_Module, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) per module, refusing any tensor that is not exactly one of the two."""
    halves: dict[_Module, dict[str, tuple[str, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        module, half = _parse_key(name, shapes)
        seen = halves.setdefault(module, {})
        if half in seen:
            raise AdapterError(f"tensors {_clip(seen[half][0])} and {_clip(name)} are both "
                               f"lora_{half} of {module.name}", "adapter_model")
        seen[half] = (name, tensor)
    pairs = {}
    for module, found in halves.items():
        if set(found) != {"A", "B"}:
            raise AdapterError(f"module {module.name} has lora_A without lora_B or the reverse",
                               "adapter_model")
        pairs[module] = (found["A"][1], found["B"][1])
    return pairs


def _parse_key(name: str, shapes: Mapping[str, tuple[int, int]]) -> tuple[_Module, str]:
    """The module a tensor name gives lora_A or lora_B of, and which ("A" or "B")."""
    key = _KEY.fullmatch(name.removeprefix(_PREFIX))
    where = _MODULE.fullmatch(key["module"]) if key else None
    if key is None or where is None:
        raise AdapterError(f"tensor {_clip(name)} is not the lora_A or lora_B weight of a linear "
                           "module in the base's decoder layers (embedding LoRA, DoRA "
                           "magnitudes and biases are not supported)", "adapter_model")
    module_name, path = key["module"], where["path"]
    module = _Module(module_name, f"{int(where['layer'])}.{path.rpartition('.')[2]}")
    known = getattr(shapes, "paths", {}).get(module.key, path)
    if module.key not in shapes or path != known:
        leaves = sorted({k.partition(".")[2] for k in shapes})
        real = f"; layer {where['layer']} has it at {known}" if module.key in shapes else ""
        raise AdapterError(f"module {_clip(module_name)} does not exist in the base model (its "
                           f"LoRA-capable modules: {', '.join(leaves)}){real}", "adapter_model")
    return module, key["half"]


def _check_pair(module: _Module, a: torch.Tensor, b: torch.Tensor, shape: tuple[int, int],
                max_rank: int, rank: int, scale: float) -> None:
    for half, tensor in (("lora_A", a), ("lora_B", b)):
        if tensor.dtype not in FLOAT_DTYPES:
            raise AdapterError(f"{half} of {module.name} has dtype {tensor.dtype}, not float "
                               "(float16, bfloat16, float32 or float64)", "adapter_model")
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or a.shape[0] == 0:
        raise AdapterError(f"{module.name}: lora_A {tuple(a.shape)} and lora_B "
                           f"{tuple(b.shape)} are not a LoRA pair of rank 1 or more",
                           "adapter_model")
    in_features, out_features = shape
    if a.shape[1] != in_features or b.shape[0] != out_features:
        raise AdapterError(
            f"{module.name}: shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit the base "
            f"layer ({in_features} -> {out_features})", "adapter_model")
    if a.shape[0] > max_rank:
        raise AdapterError(f"rank {a.shape[0]} is above the server's max rank {max_rank}",
                           "adapter_config")
    if a.shape[0] != rank:
        raise AdapterError(f"{module.name} has rank {a.shape[0]} but adapter_config says "
                           f"r = {rank}", "adapter_config")
    for half, tensor in (("lora_A", a), ("lora_B", b)):
        if not bool(torch.isfinite(tensor.float()).all()):
            raise AdapterError(f"{half} of {module.name} holds NaN or infinite values",
                               "adapter_model")
    bound = scale * _norm(a) * _norm(b)
    if not bound <= MAX_DELTA_NORM:
        raise AdapterError(f"{module.name}: the adapter's change to this layer is too large "
                           f"(scale x |A| x |B| = {bound:.3g}, at most {MAX_DELTA_NORM:g}); "
                           "its outputs would overflow", "adapter_model")


def _norm(tensor: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(tensor, dtype=torch.float64))


def _clip(text: str, limit: int = 120) -> str:
    """A name from the upload, quoted and cut short enough for an error message."""
    return repr(text if len(text) <= limit else f"{text[:limit]}...")
