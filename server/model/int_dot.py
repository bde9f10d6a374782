"""Cameo's own weight-only int4 and int8 CPU matmuls (AVX2), built from C++ on first use.

Contract: `load()` compiles `kernels/int_dot.cpp` with torch's extension builder (once per
source version; cached under `TORCH_EXTENSIONS_DIR`, by default `~/.cache/torch_extensions`) and
registers `torch.ops.cameo.int4_linear` and `torch.ops.cameo.int8_linear`, with shape-only
("fake") versions so that `torch.compile` traces through them with no graph break. It returns
False, and logs why, where the kernels cannot run: not an x86-64 CPU with AVX2 and FMA, or no
C++ compiler. `to_layout`/`from_layout` (int8) and `pack_int4`/`unpack_int4` (int4) convert
(out, in) codes to and from the kernels' layout; `kernel_input(x)` is the input as the kernels
round it. `preferred()` says whether the int layers should use these kernels, not torch's.

Why: torch's CPU int4 kernel multiplies float activations by weights unpacked to float, which on
a 2-core AVX2 CPU ran at about 9 GB/s of weights, a third of the memory's bandwidth, and its
int8 kernel slows past four rows (docs/BENCHMARKS.md, "Where the step's time goes on this CPU").
These kernels quantize the input per group of 32 to int8 and sum each group's products in
integers, as llama.cpp does (the C++ file's header gives the layouts and the error): the
compiled one-row step went from 16.0 to 10.0 ms on that CPU (docs/BENCHMARKS.md, "Cameo's own
int kernels").

It does not decide which layers get quantized or how (see `weight_only`), and does not build
for other instruction sets (AVX-512 CPUs run torch's kernels by default: `preferred`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path

import torch

from server.model import cpu
from server.settings import IntKernels

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "int_dot.cpp"
GROUP = 32  # input columns per quantization group of the activations (and int4 weights)


@functools.cache
def load() -> bool:
    """Build (first time only) and register the operators; False, logged, where they cannot run."""
    if not cpu.has_avx2_fma():
        log.info("cameo int kernels: this CPU has no AVX2 and FMA; torch's kernels serve")
        return False
    from torch.utils import cpp_extension

    _put_venv_tools_on_path()
    started = time.monotonic()
    log.info("cameo int kernels: loading (compiled from C++ the first time: 11-18 s on 2 cores)")
    try:
        # -fopenmp: at::parallel_for is a header template that splits work only when compiled
        # with OpenMP; the library then uses the libgomp torch has loaded (same soname)
        cpp_extension.load(name="cameo_int_dot", sources=[str(SOURCE)],
                           extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"],
                           extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    except (OSError, RuntimeError, ImportError, ValueError) as error:  # no compiler, no ninja
        log.warning("cameo int kernels could not be built (%s); torch's kernels serve", error)
        return False
    _register_fakes()
    log.info("cameo int kernels: ready in %.1f s", time.monotonic() - started)
    return True


def preferred(choice: IntKernels = "auto") -> bool:
    """Whether int layers should compute with these kernels: `cameo` or `torch` as told, and
    `auto` where torch itself runs at AVX2 (measured faster there: docs/BENCHMARKS.md); on
    AVX-512, torch's kernels (16 lanes wide; measured faster on an AVX-512 EPYC, at every row
    count, than these, built for AVX2 or with AVX512-VNNI). Raises ValueError when told
    `cameo` where they cannot run."""
    if choice == "torch":
        return False
    if choice == "auto" and cpu.torch_runs_avx512():
        return False
    if not load() and choice == "cameo":
        raise ValueError("CAMEO_INT_KERNELS=cameo: Cameo's int kernels cannot run here (they "
                         "need an x86-64 CPU with AVX2 and FMA, and a C++ compiler; the log "
                         "says which is missing); use auto or torch")
    return load()


def kernel_input(x: torch.Tensor) -> torch.Tensor:
    """x (..., K) float32 as the kernels round it: per group of 32, codes round(x / step) with
    step = max|x| / 127, times step. For references and tests."""
    groups = x.reshape(*x.shape[:-1], -1, GROUP)  # (..., G, 32)
    step = groups.abs().amax(dim=-1, keepdim=True) / 127
    inverse = torch.where(step > 0, 1 / step, torch.zeros_like(step))
    return (torch.round(groups * inverse) * step).reshape(x.shape)


BLOCK = 8  # groups interleaved in one block of the kernels' layout


def layout_order(in_features: int) -> torch.Tensor:
    """(in,) the input each position of the kernels' layout holds: in blocks of 8 groups of 32,
    vector t of a block holds inputs 4t..4t+3 of each group in turn; the groups after the last
    whole block keep their order (kernels/int_dot.cpp, "Layout")."""
    groups = in_features // GROUP
    blocked = groups // BLOCK * BLOCK
    # (block, t, j, u) -> input 256 * block + 32 * j + 4 * t + u
    block, t, j, u = torch.meshgrid(torch.arange(blocked // BLOCK), torch.arange(GROUP // 4),
                                    torch.arange(BLOCK), torch.arange(4), indexing="ij")
    interleaved = (BLOCK * GROUP * block + GROUP * j + 4 * t + u).reshape(-1)
    return torch.cat([interleaved, torch.arange(blocked * GROUP, in_features)])


def to_layout(codes: torch.Tensor) -> torch.Tensor:
    """(out, in) codes in input order -> the same codes in the kernels' layout."""
    return codes[:, layout_order(codes.shape[1])].contiguous()


def from_layout(codes: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_layout`."""
    restored = torch.empty_like(codes)
    restored[:, layout_order(codes.shape[1])] = codes
    return restored


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """(out, in) codes in 0..15 -> (out, in/2) uint8 in the kernels' layout: vectors of 32 codes
    in pairs, byte i of a pair holding code i of the first in its low nibble and code i of the
    second in its high one; a last vector without a partner holds its code i low, 16 + i high."""
    out_features = codes.shape[0]
    vectors = to_layout(codes.to(torch.uint8)).reshape(out_features, -1, GROUP)  # (out, G, 32)
    paired = vectors.shape[1] // 2 * 2
    pairs = vectors[:, :paired].reshape(out_features, -1, 2, GROUP)  # (out, G/2, 2, 32)
    parts = [(pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(out_features, -1)]
    if paired < vectors.shape[1]:
        last = vectors[:, -1].reshape(out_features, 2, GROUP // 2)
        parts.append(last[:, 0] | (last[:, 1] << 4))
    return torch.cat(parts, dim=1)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4`: (out, in/2) uint8 -> (out, in) int32 codes in input order."""
    out_features, half = packed.shape
    groups = 2 * half // GROUP
    paired = groups // 2 * 2
    pairs = packed[:, :paired * GROUP // 2].reshape(out_features, -1, GROUP)  # (out, G/2, 32)
    parts = [torch.stack([pairs & 0x0F, pairs >> 4], dim=2).reshape(out_features, -1)]
    if paired < groups:
        last = packed[:, paired * GROUP // 2:]  # (out, 16)
        parts.append(torch.cat([last & 0x0F, last >> 4], dim=1))
    return from_layout(torch.cat(parts, dim=1)).to(torch.int32)


def _register_fakes() -> None:
    """Shapes for the compiler: (M, K) float32 in, (M, N) float32 out."""

    @torch.library.register_fake("cameo::int4_linear")
    def _int4(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
              mins: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], codes.shape[0]))

    @torch.library.register_fake("cameo::int8_linear")
    def _int8(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], codes.shape[0]))


def _put_venv_tools_on_path() -> None:
    """torch's builder runs `ninja` from PATH; a virtual environment used without activating it
    (`.venv/bin/python ...`) has the `ninja` package's binary beside its Python, not on PATH."""
    tools = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if tools not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([tools, path]) if path else tools


__all__ = ["BLOCK", "GROUP", "SOURCE", "from_layout", "kernel_input", "layout_order", "load",
           "pack_int4", "preferred", "to_layout", "unpack_int4"]
