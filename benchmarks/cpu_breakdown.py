"""Where a CPU process's time goes, per thread, from Linux `perf` samples, grouped by what runs.

    with Recording(os.getpid()) as recording:
        ...                                   # the work to look at
    shares = thread_shares(recording.report())  # {thread id: {category: fraction}}

`benchmarks/runner_step.py --perf` uses it on the decode step. Each sample is put in one
category by the shared object and symbol it was taken in:

- `int4 matmuls`: torch's weight-only int4 kernel (`_weight_int4pack_mm`), the base's layers;
- `int8 matmuls`: its int8 kernel (`_weight_int8pack_mm`), the output head; a sample in
  either kernel's tile function (`tinygemm_kernel<rows, columns>`, where a build leaves it out
  of line) goes to one of the two by the tile's width; Cameo's own kernels
  (`server.model.int_dot`, library `cameo_int_dot.so`) by their weight format in the symbol
  (`Int8Codes`/`int8_linear`: int8; the rest, the input's quantization included, int4: the
  base's 120-odd layers quantize their input far more often than the head);
- `compiled kernels`: the libraries inductor generated (`*.main.so`) and the Sleef math they
  call: norms, attention, the LoRA term, sampling;
- `OpenMP waits`: libgomp itself, a thread spinning at a barrier or waiting for work (the
  kernels' own work runs in their outlined functions, counted above);
- `host`: the interpreter, torch's Python bindings and dispatcher, libc, the kernel, and any
  other torch operator (allocations, copies): what runs the step's Python and calls the kernels,
  on one thread while the others wait;
- `other`: anything else.

It needs `perf` on PATH and leave to attach to the process (root, or
`kernel.perf_event_paranoid` <= 2 for one's own processes). It reads samples and reports
shares; it times nothing itself (the caller turns shares into milliseconds).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

CATEGORIES = ("int4 matmuls", "int8 matmuls", "compiled kernels", "OpenMP waits", "host",
              "other")
HOST_LIBRARIES = ("libpython", "libtorch_python", "libc.so", "libc10", "libstdc++",
                  "libtorch_cpu", "[kernel.kallsyms]", "ld-linux")
ATTACH_S = 0.5  # what `perf record -p` is given to attach before the block runs
# `perf report --sort pid,dso,sym --stdio`: "  18.40%  15305:python  libtorch_cpu.so  [.] f(...)"
# Both weight-only kernels name their tile function `tinygemm_kernel<rows, columns>`: the int4
# kernel's tiles are 16 to 64 output columns wide, the int8 kernel's 1 to 4 (torch's
# int4mm_kernel.cpp and int8mm_kernel.cpp); which of them a build leaves out of line varies
# (AVX2: the int4 tile of 4 rows, the int8 tile of 1).
_TILE = re.compile(r"\btinygemm_kernel<\d+, (\d+)>")
INT4_TILE_COLUMNS = 16
CAMEO_KERNELS = "cameo_int_dot"
_LINE = re.compile(r"\s*([\d.]+)%\s+(\d+):\S+\s+(\S+)\s+\[.\]\s+(.*)")


def category(library: str, symbol: str) -> str:
    """The category (one of `CATEGORIES`) of a sample taken in `symbol` of `library`."""
    if library.startswith(CAMEO_KERNELS):
        return "int8 matmuls" if "Int8Codes" in symbol or "int8_linear" in symbol \
            else "int4 matmuls"
    if "int4pack_mm" in symbol:
        return "int4 matmuls"
    if "int8pack_mm" in symbol:
        return "int8 matmuls"
    tile = _TILE.search(symbol)
    if tile is not None:  # a tile the compiler did not inline into its kernel's loop
        return "int4 matmuls" if int(tile.group(1)) >= INT4_TILE_COLUMNS else "int8 matmuls"
    if library.endswith(".main.so") or symbol.startswith("Sleef_"):
        return "compiled kernels"
    if library.startswith("libgomp"):
        return "OpenMP waits"
    if library.startswith(HOST_LIBRARIES):
        return "host"
    return "other"


def thread_shares(report: str) -> dict[str, dict[str, float]]:
    """Per thread id, the fraction of its samples in each category (summing to 1), from the
    text of `perf report --sort pid,dso,sym --stdio`."""
    totals: dict[str, dict[str, float]] = {}
    for line in report.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        percent, thread, library, symbol = match.groups()
        shares = totals.setdefault(thread, dict.fromkeys(CATEGORIES, 0.0))
        shares[category(library, symbol)] += float(percent)
    return {thread: {name: value / sum(shares.values()) for name, value in shares.items()}
            for thread, shares in totals.items() if sum(shares.values()) > 0}


def available() -> bool:
    """Whether `perf` is on PATH."""
    return shutil.which("perf") is not None


class Recording:
    """`perf record` attached to process `pid` for the duration of the `with` block (after
    `ATTACH_S` seconds to attach), sampling every thread `frequency` times a second;
    `report()` afterwards."""

    def __init__(self, pid: int, frequency: int = 999) -> None:
        self.pid = pid
        self.frequency = frequency
        self._folder = tempfile.TemporaryDirectory(prefix="cameo-perf-")
        self.data = Path(self._folder.name) / "perf.data"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Recording:
        if not available():
            raise RuntimeError("`perf` is not on PATH (Debian: apt-get install linux-perf)")
        self._process = subprocess.Popen(
            ["perf", "record", "-F", str(self.frequency), "-p", str(self.pid), "-o",
             str(self.data)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(ATTACH_S)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGINT)  # perf writes its data on SIGINT
        _, stderr = self._process.communicate(timeout=60)
        if self._process.returncode not in (0, -signal.SIGINT) or not self.data.exists():
            raise RuntimeError(f"perf record failed: {stderr.decode(errors='replace')[-500:]}")

    def report(self) -> str:
        """The samples as `perf report --sort pid,dso,sym --stdio` prints them; removes the
        data file."""
        try:
            return subprocess.run(
                ["perf", "report", "-i", str(self.data), "--sort", "pid,dso,sym", "--stdio"],
                check=True, capture_output=True, text=True).stdout
        finally:
            self._folder.cleanup()
