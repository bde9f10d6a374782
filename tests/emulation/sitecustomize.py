"""Started by Python in every process whose PYTHONPATH holds this folder (the test suite puts it
there while it emulates the AVX512-BF16 path), so that servers the tests start emulate it too."""

from tests.emulation.avx512bf16 import install, requested

if requested():
    install()
