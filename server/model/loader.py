"""Load the one resident base model: resolve where it comes from, quantize it, put it on a device.

Contract: `load_base(settings)` returns a `LoadedModel` whose `model` is a Hugging Face causal LM
in eval mode with its linear layers in the requested format (bitsandbytes NF4 or int8, torch's
weight-only int4 on the CPU, or plain weights), on the requested device, plus its tokenizer and
the facts the engine needs. `auto` is NF4 on CUDA and int4 on the CPU (`resolve_quantization`);
an int4 base also keeps dense copies of its layers for prefill where memory allows
(`Settings.int4_dense_copy`).

It does not attach adapters (see `server.lora`) and does not run the model (see `server.engine`,
whose runner refuses, with `UnsupportedModel`, a base it cannot serve faithfully). The families
served and tested are listed in `TESTED_FAMILIES` and docs/MODELS.md.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from server.errors import CameoError
from server.model import weight_only
from server.model.embedded import EMBEDDED_MODEL_ID, ensure_converted
from server.settings import EMBEDDED_MODEL, Settings

log = logging.getLogger(__name__)

# Model types the test matrix runs (tests/model/test_families.py); others may work and are
# refused at load when they ask for something Cameo's attention cannot do.
TESTED_FAMILIES = ("gemma2", "gemma3_text", "granite", "llama", "mistral", "olmo2", "phi3",
                   "qwen2", "qwen3")


class UnsupportedModel(CameoError, ValueError):
    """The base model cannot be served; the message names the model type and the reason."""

    code = "unsupported_model"

    def __init__(self, model_type: str, reason: str) -> None:
        super().__init__(f"base model type {model_type!r} cannot be served: {reason}. "
                         f"Families tested with Cameo: {', '.join(TESTED_FAMILIES)} "
                         "(docs/MODELS.md)")
        self.model_type = model_type
        self.reason = reason


@dataclass(frozen=True)
class LoadedModel:
    """The resident base: the HF module tree, its tokenizer and what the engine must know."""

    model: Any  # transformers PreTrainedModel (untyped upstream)
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    model_id: str
    device: torch.device
    dtype: torch.dtype
    quantization: str
    eos_token_ids: frozenset[int]
    max_position_embeddings: int


def resolve_device(name: str) -> torch.device:
    """`auto` means the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Compute dtype; on CPU bitsandbytes and matmuls are fastest in float32."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_quantization(name: str, device: torch.device) -> str:
    """`auto`: bitsandbytes NF4 on CUDA; torch's int4 kernel on the CPU, where bitsandbytes
    dequantizes every weight at every step (docs/BENCHMARKS.md, "The CPU's 4-bit path")."""
    if name == "auto":
        return "nf4" if device.type == "cuda" or not weight_only.available() else "int4"
    if name == "int4" and device.type != "cpu":
        raise ValueError("quantization 'int4' is the CPU path (torch's CPU int4 kernel); use "
                         "'nf4' on CUDA")
    return name


def load_base(settings: Settings) -> LoadedModel:
    """Load, quantize and place the base model named by `settings.base_model`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    quantization = resolve_quantization(settings.quantization, device)
    source, default_id = resolve_source(settings)
    config = AutoConfig.from_pretrained(source)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModel(config.model_type, "encoder-decoder models are not served")
    log.info(
        "loading base %s (%s, %s, %s)", source, quantization, dtype, device
    )
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=dtype,
        device_map={"": str(device)},
        quantization_config=_quantization_config(quantization, dtype),
    )
    model.eval()
    model.requires_grad_(False)
    if quantization == "int4":
        try:
            kernel = weight_only.choose_kernel(settings.int_kernels)
            count = weight_only.quantize_linears(model, kernel=kernel)
            log.info("int4: %d linear layers quantized, computed by %s's kernels", count, kernel)
        except ValueError as exc:  # no decoder layers where every served family has them
            raise UnsupportedModel(config.model_type, str(exc)) from exc
        _dense_copies(model, settings.int4_dense_copy)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model_id = settings.base_model_id or default_id
    log.info("base %s ready", model_id)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        device=device,
        dtype=dtype,
        quantization=quantization,
        eos_token_ids=eos_token_ids(model, tokenizer),
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 2048)),
    )


def _dense_copies(model: Any, mode: str) -> None:
    """The int4 layers' dense copies for prefill (`Settings.int4_dense_copy`)."""
    dtype = weight_only.dense_copy_dtype()
    size = weight_only.dense_copy_bytes(model, dtype)
    if mode == "off" or (mode == "auto" and size > physical_memory() // 8):
        log.info("int4: no dense copies for prefill (%s; they would take %.2f GB)", mode,
                 size / 1e9)
        return
    weight_only.add_dense_copies(model, dtype)
    log.info("int4: dense %s copies for prefill, %.2f GB", str(dtype).removeprefix("torch."),
             size / 1e9)


def physical_memory() -> int:
    """This machine's memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve_source(settings: Settings) -> tuple[str, str]:
    """(what to pass to from_pretrained, the id the base is served under)."""
    if settings.base_model == EMBEDDED_MODEL:
        return str(ensure_converted(settings.cache_dir)), EMBEDDED_MODEL_ID
    path = Path(settings.base_model).expanduser()
    if path.is_dir():
        return str(path), path.name
    return settings.base_model, settings.base_model


def _quantization_config(quantization: str, dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
