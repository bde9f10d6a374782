"""Emulate a CPU without AVX-512 (an AVX2 one) on a CPU that has it, so both paths get tested.

Two layers pick their kernels by the CPU. torch does, through its dispatch level
(`torch.backends.cpu.get_cpu_capability()`: ATen's kernels, inductor's vector ISA for the compiled
step, and bitsandbytes' choice of `torch._int_mm`), which `ATEN_CPU_CAPABILITY=avx2` takes down to
AVX2 when it is set before Python starts. bitsandbytes does, through its native CPUID check
`has_avx512bf16()`: with it, every `Linear4bit` repacks its NF4 bytes and computes in bfloat16
(tests/emulation/avx512bf16.py). `install()` makes that check false for the layers built
afterwards and for every reader of it (the project's own, `server.model.weight_only` and
`server.model.nf4`, through the layers' flag), so NF4 layers keep the standard layout and
compute in float32, as on an AVX2 CPU.

What it does not reach: the SIMD that code compiled outside torch picks for itself (bitsandbytes'
native library inside its dequantizing kernels, oneDNN's, MKL's). It is test tooling: the product
never imports it. `make test-avx2` runs the NF4, LoRA and engine suites under it, with
`ATEN_CPU_CAPABILITY=avx2 CAMEO_EMULATE_AVX2=1`; every server process the tests start inherits
both.
"""

from __future__ import annotations

import torch

from tests.emulation import env_flag

ENV = "CAMEO_EMULATE_AVX2"
_installed = False


def requested() -> bool:
    return env_flag(ENV)


def install() -> None:
    """Route bitsandbytes' CPU layers through the path of a CPU without AVX512-BF16
    (idempotent); refuses when torch itself still runs above AVX2."""
    global _installed
    if _installed:
        return
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        raise RuntimeError(f"{ENV} needs torch at AVX2 (ATEN_CPU_CAPABILITY=avx2 before Python "
                           f"starts); it runs at {capability}")
    import bitsandbytes.functional as bnbf
    import bitsandbytes.nn.modules as modules

    bnbf.has_avx512bf16 = lambda: False  # read at call time by the project and the tests
    modules.has_avx512bf16 = lambda: False  # read by Linear4bit.__init__
    _installed = True


__all__ = ["ENV", "install", "requested"]
