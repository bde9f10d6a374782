"""The slot bank's automatic storage (`server.engine.build.bank_dtype`) follows the CPU kind:
int8 codes under the compiled step over int4 layers only where torch runs at AVX-512 (a partial
load of 8 codes is one masked instruction there; with AVX2 it goes by a stack buffer, and the
float32 bank measured faster: docs/BENCHMARKS.md). `make test-avx2` runs this at AVX2."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from server.engine.build import bank_dtype
from server.model import cpu

CPU_INT4 = SimpleNamespace(device=torch.device("cpu"), quantization="int4", dtype=torch.float32)


def test_the_compiled_int4_step_gets_an_int8_bank_only_at_avx512() -> None:
    at_avx512 = cpu.torch_runs_avx512()
    expected = torch.int8 if at_avx512 else torch.float32
    assert bank_dtype(CPU_INT4, compiled=True) == expected  # type: ignore[arg-type]


def test_eager_steps_and_explicit_choices_ignore_the_cpu_kind() -> None:
    assert bank_dtype(CPU_INT4, compiled=False) == torch.float32  # type: ignore[arg-type]
    assert bank_dtype(CPU_INT4, compiled=True, choice="int8") == torch.int8  # type: ignore[arg-type]
    assert bank_dtype(CPU_INT4, compiled=True, choice="bfloat16") == torch.bfloat16  # type: ignore[arg-type]
