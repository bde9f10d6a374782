"""Facts about this CPU that decide which kernels serve: one place for each check.

It does not choose anything itself: `int_dot.preferred` and `engine.build.bank_dtype` do.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def torch_runs_avx512() -> bool:
    """torch's CPU kernels run at AVX-512 here (not with `ATEN_CPU_CAPABILITY=avx2`)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def has_avx2_fma() -> bool:
    """An x86-64 CPU that runs AVX2 and FMA, as Linux reports it."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split("\nflags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return "avx2" in flags and "fma" in flags


__all__ = ["has_avx2_fma", "torch_runs_avx512"]
