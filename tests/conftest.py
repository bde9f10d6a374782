"""Shared fixtures: the embedded model (NF4, loaded once), PEFT adapters for it, a composition.

Engines and servers started by the tests keep the decode step eager unless CAMEO_COMPILE is set.

The embedded model is converted once into the user's cache (as `make serve` does), so the first
test session pays about 25 s and later ones reuse it.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.emulation import avx2, avx512bf16, requested

if not torch.cuda.is_available():
    # Triton kernels run in Triton's interpreter on the CPU. Set before anything imports Triton
    # (bitsandbytes does), since Triton reads it when kernels are decorated.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Servers and engines the tests build run their decode step eagerly (compiling costs minutes on
# a small CPU at every start): tests/engine/test_step.py compiles its own, and
# `make test-compiled` runs the engine tests with CAMEO_COMPILE=on over the embedded model in
# int4 (CAMEO_TEST_QUANTIZATION; NF4 by default).
os.environ.setdefault("CAMEO_COMPILE", "off")

if _emulations := requested():
    # a CPU path this CPU does not take by itself, here and in every process the tests start
    for _emulation in _emulations:
        _emulation.install()
    _paths = [str(Path(__file__).parent / "emulation"), str(Path(__file__).parent.parent)]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*_paths, *filter(None, [os.environ.get("PYTHONPATH")])])

from server.composition import Cameo
from server.model.loader import LoadedModel, load_base
from server.settings import Settings
from tests.helpers import write_peft_adapter, write_persona

# Every runner compiled in one process adds its graphs to the same code object's cache (a server
# holds one runner; the tests build dozens under `make test-compiled`): room for all of them.
torch._dynamo.config.recompile_limit = 1024
torch._dynamo.config.accumulated_recompile_limit = 8192

PERSONAS = {  # name -> (seed, rank, targets)
    "alpha": (1, 8, ("q_proj", "v_proj")),
    "bravo": (2, 16, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                      "down_proj")),
    "charlie": (3, 4, ("o_proj", "down_proj")),
}


def pytest_report_header(config: pytest.Config) -> str:
    from bitsandbytes.functional import has_avx512bf16

    if avx512bf16.requested():
        path = "AVX512-BF16 (repacked, bfloat16), emulated by tests/emulation"
    elif avx2.requested():
        path = "standard layout, float32, on a CPU without AVX-512 emulated by tests/emulation"
    elif has_avx512bf16():
        path = "AVX512-BF16 (repacked, bfloat16), native"
    else:
        path = "standard layout, float32"
    return f"bitsandbytes NF4 on the CPU: {path}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embedded_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(registry_dir=tmp_path_factory.mktemp("registry"),
                    seed_dir=tmp_path_factory.mktemp("seed"), adapter_slots=4, max_batch_size=8,
                    max_context=512, max_lora_rank=16, device="cpu",
                    quantization=os.environ.get("CAMEO_TEST_QUANTIZATION", "nf4"))


@pytest.fixture(scope="session")
def embedded(embedded_settings: Settings) -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct on the CPU, in NF4 (CAMEO_TEST_QUANTIZATION: another)."""
    return load_base(embedded_settings)


@pytest.fixture(scope="session")
def plain_embedded(embedded_settings: Settings) -> LoadedModel:
    """The same model unquantized: what PEFT wraps to write adapters."""
    return load_base(embedded_settings.model_copy(update={"quantization": "none"}))


@pytest.fixture(scope="session")
def persona_dirs(embedded_settings: Settings, plain_embedded: LoadedModel) -> dict[str, Path]:
    """Three PEFT adapters of different ranks and targets, as shipped persona folders (seed)."""
    dirs = {}
    for name, (seed, rank, targets) in PERSONAS.items():
        assert embedded_settings.seed_dir is not None
        folder = embedded_settings.seed_dir / name
        write_peft_adapter(plain_embedded.model, folder, seed=seed, rank=rank, targets=targets,
                           b_scale=0.5, base_model=plain_embedded.model_id)
        write_persona(folder, name.title(), description=f"test persona {name}",
                      greeting=f"Hello from {name}", tags=["test"])
        dirs[name] = folder
    return dirs


@pytest.fixture(scope="session")
def cameo(embedded_settings: Settings, embedded: LoadedModel,
          persona_dirs: dict[str, Path]) -> Iterator[Cameo]:
    """A started engine on the embedded NF4 model with the three test personas."""
    cameo = Cameo.local(embedded_settings, loaded=embedded)
    cameo.service.start()
    yield cameo
    cameo.service.close()


CameoFactory = Callable[..., Cameo]


@pytest.fixture
def make_cameo(tmp_path: Path, embedded: LoadedModel,
               embedded_settings: Settings) -> Iterator[CameoFactory]:
    """Build started compositions with their own empty registry; stopped after the test."""
    built: list[Cameo] = []

    def make(**overrides: Any) -> Cameo:
        settings = embedded_settings.model_copy(update={
            "registry_dir": tmp_path / f"registry{len(built)}", "seed_dir": None, **overrides})
        cameo = Cameo.local(settings, loaded=embedded)
        cameo.service.start()
        built.append(cameo)
        return cameo

    yield make
    for cameo in built:
        cameo.service.close()
        cameo.registry.close()
    built.clear()
    gc.collect()  # each cameo holds slot banks and a KV cache: free them before the next test
