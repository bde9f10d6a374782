"""Settings: defaults, environment variables, and `cameo-server` flags (flags win)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.main import parse_settings
from server.settings import Settings


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.base_model) == ("127.0.0.1", 8000, "embedded")
    assert settings.quantization == "auto"  # nf4 on CUDA, int4 on the CPU


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMEO_ADAPTER_SLOTS", "3")
    monkeypatch.setenv("CAMEO_QUANTIZATION", "int8")
    monkeypatch.setenv("CAMEO_REGISTRY_DIR", "/tmp/from-env")
    settings = parse_settings(["--quantization", "none", "--max-batch-size", "4",
                               "--max-lora-rank", "8", "--max-context", "1024"])
    assert settings.adapter_slots == 3
    assert settings.quantization == "none"
    assert settings.registry_dir == Path("/tmp/from-env")
    assert (settings.max_batch_size, settings.max_lora_rank, settings.max_context) == (4, 8, 1024)


@pytest.mark.parametrize("field,value", [("quantization", "fp3"), ("device", "tpu"),
                                         ("adapter_slots", 0), ("port", 70000)])
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})
