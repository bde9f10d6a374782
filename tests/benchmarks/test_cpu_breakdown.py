"""benchmarks/cpu_breakdown.py: samples grouped by what runs, per thread; a real recording where
`perf` may attach."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import torch

from benchmarks.cpu_breakdown import CATEGORIES, Recording, available, category, thread_shares

# the layout `perf report --sort pid,dso,sym --stdio` prints (two threads of one process)
REPORT = """\
# Samples: 29K of event 'cpu-clock:ppp'
#
# Overhead  Pid:Command    Shared Object      Symbol
# ........  .............  .................  ......
#
    18.40%    15305:python   libtorch_cpu.so    [.] at::native::int4pack_mm_kernel_<c10::BFloat16>(...)
    18.39%    15296:python   libtorch_cpu.so    [.] at::native::int4pack_mm_kernel_<c10::BFloat16>(...)
     9.26%    15305:python   libtorch_cpu.so    [.] at::native::int8pack_mm_kernel_<c10::BFloat16>(...)
     8.24%    15305:python   libgomp.so.1       [.] 0x000000000001de62
     4.77%    15296:python   libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault
     2.40%    15296:python   libtorch_python.so  [.] torch::dynamo::GuardManager::check_nopybind
     0.16%    15296:python   c2wv7crh5ddw2x37.main.so  [.] kernel._omp_fn.0
     0.14%    15305:python   libsleef.so.3      [.] Sleef_finz_expf16_u10avx512f
     0.10%    15296:python   libfoo.so          [.] bar
"""


def test_each_sample_is_put_by_its_library_and_symbol() -> None:
    assert category("libtorch_cpu.so", "at::native::int4pack_mm_kernel_<float>") == "int4 matmuls"
    assert category("libtorch_cpu.so", "at::native::int8pack_mm_kernel_<float>") == "int8 matmuls"
    assert category("cabc.main.so", "kernel._omp_fn.0") == "compiled kernels"
    assert category("libsleef.so.3", "Sleef_finz_expf16_u10avx512f") == "compiled kernels"
    assert category("libgomp.so.1", "0x000000000001de62") == "OpenMP waits"
    assert category("libpython3.11.so.1.0", "_PyEval_EvalFrameDefault") == "host"
    assert category("libtorch_cpu.so", "at::empty") == "host"
    assert category("libfoo.so", "bar") == "other"


def test_the_weight_only_tiles_go_by_their_width() -> None:
    # the names perf printed for the out-of-line tiles on an AVX2 build (torch 2.13)
    tile = "at::native::(anonymous namespace)::tinygemm_kernel<{}, {}>"
    assert category("libtorch_cpu.so", tile.format(4, 32)) == "int4 matmuls"
    assert category("libtorch_cpu.so", tile.format(1, 16)) == "int4 matmuls"
    assert category("libtorch_cpu.so", tile.format(1, 4)) == "int8 matmuls"
    assert category("libtorch_cpu.so", tile.format(4, 1)) == "int8 matmuls"


def test_cameos_own_kernels_go_by_their_weight_format() -> None:
    # symbols of server/model/kernels/int_dot.cpp as `nm -C` prints them
    library = "cameo_int_dot.so"
    int4 = "at::Tensor (anonymous namespace)::matmul<(anonymous namespace)::Int4Codes>(...)"
    int8 = "at::Tensor (anonymous namespace)::matmul<(anonymous namespace)::Int8Codes>(...)"
    assert category(library, int4) == "int4 matmuls"
    assert category(library, int8) == "int8 matmuls"
    assert category(library, "(anonymous namespace)::quantize_input(at::Tensor const&)") \
        == "int4 matmuls"
    assert category("libtorch_cpu.so", int8) == "host"  # the library decides first


def test_shares_are_per_thread_and_sum_to_one() -> None:
    shares = thread_shares(REPORT)
    assert set(shares) == {"15296", "15305"}
    for values in shares.values():
        assert set(values) == set(CATEGORIES)
        assert sum(values.values()) == pytest.approx(1.0)
    main_total = 18.39 + 4.77 + 2.40 + 0.16 + 0.10
    assert shares["15296"]["host"] == pytest.approx((4.77 + 2.40) / main_total)
    assert shares["15296"]["int8 matmuls"] == 0.0
    worker_total = 18.40 + 9.26 + 8.24 + 0.14
    assert shares["15305"]["OpenMP waits"] == pytest.approx(8.24 / worker_total)
    assert shares["15305"]["compiled kernels"] == pytest.approx(0.14 / worker_total)


def test_lines_that_are_not_samples_are_ignored() -> None:
    assert thread_shares("# Overhead  Pid:Command\n\n#\n") == {}


def _can_attach() -> bool:
    if not available():
        return False
    probe = subprocess.run(["perf", "record", "-o", os.devnull, "--", "true"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_attach(), reason="needs Linux perf, allowed to sample")
def test_a_recording_finds_the_int8_matmul_this_process_runs() -> None:
    x = torch.randn(8, 2048, dtype=torch.bfloat16)
    weight = torch.randint(-127, 128, (16384, 2048), dtype=torch.int8)  # ms per call
    scales = torch.rand(16384, dtype=torch.bfloat16)
    with Recording(os.getpid()) as recording:
        ends = time.monotonic() + 1.0
        while time.monotonic() < ends:
            torch._weight_int8pack_mm(x, weight, scales)
    shares = thread_shares(recording.report())
    busiest = max(shares.values(), key=lambda values: values["int8 matmuls"])
    assert max(busiest, key=lambda name: busiest[name]) == "int8 matmuls"
