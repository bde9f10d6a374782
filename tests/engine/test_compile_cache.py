"""server/engine/compile_cache.py: inductor's cache, one folder per CPU kind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from server.engine import compile_cache


def test_the_cache_moves_into_a_folder_named_after_this_cpu_kind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path))
    scoped = compile_cache.scope_to_this_cpu()
    assert scoped == tmp_path / compile_cache.cpu_kind()
    assert compile_cache.scope_to_this_cpu() == scoped  # not nested twice
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert Path(cache_dir()) == scoped  # where inductor now reads and writes


def test_the_kind_starts_with_torchs_kernel_level() -> None:
    kind = compile_cache.cpu_kind()
    assert kind.startswith(torch.backends.cpu.get_cpu_capability().lower() + "-")
    assert "/" not in kind and " " not in kind


def _kind_with(environment: dict[str, str]) -> str:
    code = "from server.engine.compile_cache import cpu_kind; print(cpu_kind())"
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                          text=True, check=True, cwd=Path(__file__).parents[2])
    return done.stdout.strip()


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512",
                    reason="needs a CPU (and torch) at AVX-512")
def test_torch_at_avx2_on_the_same_cpu_gets_a_folder_of_its_own() -> None:
    environment = {key: value for key, value in os.environ.items()
                   if key != "ATEN_CPU_CAPABILITY"}
    native = _kind_with(environment)
    lowered = _kind_with({**environment, "ATEN_CPU_CAPABILITY": "avx2"})
    assert native.startswith("avx512-") and lowered == "avx2-avx2"
