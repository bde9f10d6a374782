"""CPU paths emulated for the tests: bitsandbytes' AVX512-BF16 one where the CPU lacks it
(`avx512bf16`), a CPU without AVX-512 where it has it (`avx2`). At most one per run."""

from __future__ import annotations

import os
from types import ModuleType


def env_flag(name: str) -> bool:
    """Whether environment variable `name` is set to anything but empty or 0."""
    return os.environ.get(name, "") not in ("", "0")


def requested() -> list[ModuleType]:
    """The emulation modules this run's environment asks for (none, or one)."""
    from tests.emulation import avx2, avx512bf16

    chosen = [module for module in (avx512bf16, avx2) if module.requested()]
    if len(chosen) > 1:
        raise RuntimeError(f"{avx512bf16.ENV} and {avx2.ENV} emulate opposite CPUs: set one")
    return chosen
