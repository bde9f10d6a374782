"""The int8 bank's LoRA term as one hand-written CPU kernel per layer group (`cpu_kernel.cpp`).

Contract: `load()` builds the kernel for this CPU (once: the library is kept in a folder per CPU
kind, keyed by its source, torch's version and the compiler flags) and registers
`torch.ops.cameo.lora_int8`; it returns False, with the reason logged, where it cannot (no C++
compiler). `term(x, codes, scales, slots, ranks, layout)` then gives, for x (B, T, in) and the
P projections a `layout` names (`group_layout`: one fused group, q/k/v or gate/up, or one
projection), every token's LoRA term of each projection side by side, (B, T, sum of outs), in
x's dtype: the same values the gathered path of `slots.lora_delta` computes from the same codes
(float32 accumulation, summed in another order), reading only each slot's real rank.

Why: the compiled step's gathered term is inductor's loops, which convert each int8 code to
float32 one vector at a time inside generic reduction loops, and add a few hundred statements to
the step's generated wrapper; this kernel reads a slot's codes with four rows sharing each load
of x, and is one call per layer group whose arguments are the bank's two flat storages (one
input each to the compiled step) and a list of integers. docs/BENCHMARKS.md has the numbers.

The op has a fake (meta) implementation, so `torch.compile(fullgraph=True)` traces it as one
extern call. Built with `-march=native` where torch runs its AVX-512 kernels, with AVX-512 off
where torch runs at AVX2 (so `ATEN_CPU_CAPABILITY=avx2` runs this kernel's AVX2 path too), and
as plain C++ otherwise. This module does not decide when the step uses the kernel (`slots`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

from server.lora.flat import Resident

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".cpp")
DTYPES = (torch.bfloat16, torch.float32)  # what x may be
_lock = threading.Lock()
_state: dict[str, bool] = {}  # "loaded": the outcome of the first `load()`


def load(cache: Path) -> bool:
    """Build into `cache` (a folder of this CPU kind's: `compile_cache.scope_to_this_cpu()`),
    when this CPU's library is not built yet, and load the kernel; idempotent and thread-safe.
    False, with the reason logged, where it cannot be built or loaded."""
    with _lock:
        if "loaded" not in _state:
            _state["loaded"] = _build_and_load(cache)
        return _state["loaded"]


def loaded() -> bool:
    """Whether `load()` has loaded the kernel in this process."""
    return _state.get("loaded", False)


def term(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, slots: torch.Tensor,
         ranks: torch.Tensor, layout: list[int]) -> torch.Tensor:
    """x (B, T, in), slots (B,) int64 -> (B, T, sum of outs): see the module docstring."""
    return torch.ops.cameo.lora_int8(x, codes, scales, slots, ranks, layout)


def group_layout(a: Resident, parts: list[tuple[Resident, Resident]], rank: int) -> list[int] | None:
    """The integers `term` reads: where a group's A (S, P * r, in), and each projection's B
    (S, out, r) and scales (S, r), lie in the bank's two flat storages. None when any of them
    is not a view of a flat storage (an unsealed bank) or not in the layout the kernel reads
    (A and B rows contiguous along in and out, scales along r)."""
    if a.flat is None:
        return None
    (_, a_rows, d_in), (a_slot, a_rank, a_in), a_offset = a.geometry
    if a_in != 1 or a_rows != rank * len(parts) or a_rank < d_in:
        return None
    values: list[int] = [int(v) for v in (a_offset, a_slot, a_rank, rank)]
    for b, scale in parts:
        if b.flat is not a.flat or scale.flat is None:
            return None
        (_, out, b_rows), (b_slot, b_out, b_rank), b_offset = b.geometry
        (_, s_rank), (s_slot, s_step), s_offset = scale.geometry
        if b_out != 1 or b_rows != rank or s_rank != rank or s_step != 1:
            return None
        values += [int(v) for v in (b_offset, out, b_slot, b_rank, s_offset, s_slot)]
    return values


def _build_and_load(cache: Path) -> bool:
    try:
        library = _library_path(cache)
        if not library.exists():
            _build(library)
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        log.warning("the CPU LoRA kernel could not be built or loaded (%s); the compiled step "
                    "computes the LoRA term with inductor's loops instead", exc)
        return False
    _register_fake()
    return True


def _register_fake() -> None:
    @torch.library.register_fake("cameo::lora_int8")
    def _shape(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, slots: torch.Tensor,
               ranks: torch.Tensor, layout: list[int]) -> torch.Tensor:
        out = sum(layout[5::6])  # each projection's out, from its six integers
        return x.new_empty(x.shape[0], x.shape[1], out)


def _isa_flags() -> list[str]:
    """The instruction sets to build for: torch's own kernel level on this CPU."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return ["-march=native"]
    if capability == "AVX2":
        return ["-march=native", "-mno-avx512f"]
    return []


def _command(output: Path) -> list[str]:
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    libraries = cpp_extension.library_paths()
    links = [f"-L{path}" for path in libraries] + [f"-Wl,-rpath,{path}" for path in libraries]
    compiler = os.environ.get("CXX", "g++")
    return [compiler, "-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-w",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *_isa_flags(), *includes, str(SOURCE),
            *links, "-lc10", "-ltorch_cpu", "-o", str(output)]


def _library_path(cache: Path) -> Path:
    """<cache>/cameo/lora_int8-<key>.so."""
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(" ".join([*_command(Path("lora_int8.so")), torch.__version__, sys.version]).encode())
    return cache / "cameo" / f"lora_int8-{key.hexdigest()[:16]}.so"


def _build(library: Path) -> None:
    """Compile into a temporary file beside `library`, then rename it into place, so that a
    failed or concurrent build never leaves a half-written library."""
    library.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the CPU LoRA kernel (once per CPU kind; a few seconds): %s", library)
    with tempfile.TemporaryDirectory(dir=library.parent) as folder:
        partial = Path(folder) / library.name
        result = subprocess.run(_command(partial), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"the compiler failed: {result.stderr.strip()[-2000:]}")
        partial.replace(library)


__all__ = ["DTYPES", "group_layout", "load", "loaded", "term"]
