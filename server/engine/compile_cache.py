"""Inductor's on-disk cache, one folder per CPU kind.

The compiled step's graphs in inductor's cache hold code vectorized for the CPU that compiled
them and can hold constants made by that CPU's kernels (int4 weights prepacked for its int4
matmul), and the cache's keys do not tell CPU kinds apart. A cache folder shared by hosts of
different kinds (a volume moved to another machine, a VM resized onto another CPU) would serve
one kind's graphs to the other: every logit came out NaN when graphs compiled with torch at
AVX-512 ran with torch at AVX2 (`make test-avx2`; which part of the graph broke was not pinned
down), and the same tests passed with a fresh cache folder. `scope_to_this_cpu()` points the
cache at a subfolder named after this CPU's kind, before anything compiles.

This module does not clear, size or share the cache; where it lives stays
`TORCHINDUCTOR_CACHE_DIR` (compose.yaml keeps it on a volume), or inductor's default.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

ENV = "TORCHINDUCTOR_CACHE_DIR"


def cpu_kind() -> str:
    """torch's kernel level here and inductor's vector instruction sets, as one folder name:
    `avx512-avx512+avx512_vnni+amx_tile` on an AMX Xeon, `avx2-avx2` with torch at AVX2."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    capability = torch.backends.cpu.get_cpu_capability()
    return f"{capability}-{'+'.join(str(pick_vec_isa()).split())}".lower()


def scope_to_this_cpu() -> Path:
    """Point inductor's cache at `<its folder>/<cpu_kind()>` (idempotent); returns it."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    base = Path(cache_dir())  # TORCHINDUCTOR_CACHE_DIR, or inductor's default
    kind = cpu_kind()
    scoped = base if base.name == kind else base / kind
    os.environ[ENV] = str(scoped)
    return scoped
