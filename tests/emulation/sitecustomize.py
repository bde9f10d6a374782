"""Started by Python in every process whose PYTHONPATH holds this folder (the test suite puts it
there while it emulates a CPU path), so that servers the tests start emulate it too."""

from tests.emulation import requested

for emulation in requested():
    emulation.install()
