"""One local Ray cluster per module: the Cameo Serve application with two engine replicas on the
embedded model, six personas in a shared registry, and a single local engine to compare with.

The cluster is started by the fixture (`ray.init`, no dashboard) and shared by the module's
tests; the whole folder is skipped when `ray[serve]` is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.api.app import create_app
from server.composition import Cameo
from server.model.loader import LoadedModel
from server.settings import Settings
from tests import helpers
from tests.helpers import free_port, live_server, write_peft_adapter, write_persona

# name -> (seed, rank, targets, system prompt)
PERSONAS = {
    "ada": (21, 8, ("q_proj", "v_proj"), "You are Ada, a precise mathematician."),
    "bo": (22, 4, ("o_proj", "down_proj"), "You are Bo, a cheerful baker."),
    "cy": (23, 16, ("q_proj", "k_proj", "v_proj", "o_proj"), "You are Cy, a terse sailor."),
    "di": (24, 8, ("gate_proj", "up_proj", "down_proj"), "You are Di, a patient teacher."),
    "ed": (25, 8, ("q_proj", "v_proj", "down_proj"), "You are Ed, a grumpy wizard."),
    "flo": (26, 4, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                    "down_proj"), "You are Flo, a curious astronaut."),
}
ENGINE_REPLICAS = 2
SLOTS = 4  # 6 personas over 2 replicas: 3 each fit, so affinity can stay near 100%
CLUSTER_TIMEOUT = 240.0


@dataclass
class Cluster:
    url: str
    settings: Settings
    app_name: str


@pytest.fixture(scope="module")
def persona_seed(tmp_path_factory: pytest.TempPathFactory,
                 plain_embedded: LoadedModel) -> Path:
    """Six PEFT adapters (different ranks and targets) with persona cards, as a seed folder."""
    seed = tmp_path_factory.mktemp("ray-seed")
    for name, (number, rank, targets, prompt) in PERSONAS.items():
        write_peft_adapter(plain_embedded.model, seed / name, seed=number, rank=rank,
                           targets=targets, b_scale=0.5, base_model=plain_embedded.model_id)
        write_persona(seed / name, name.title(), system_prompt=prompt)
    return seed


@pytest.fixture(scope="module")
def cluster_settings(tmp_path_factory: pytest.TempPathFactory, persona_seed: Path) -> Settings:
    # nf4, as the session's `embedded` model that the local reference engine reuses
    return Settings(registry_dir=tmp_path_factory.mktemp("ray-registry"), seed_dir=persona_seed,
                    device="cpu", quantization="nf4", adapter_slots=SLOTS, max_batch_size=4,
                    max_context=256, host_adapters=8, log_level="warning")


@pytest.fixture(scope="module")
def reference_cameo(tmp_path_factory: pytest.TempPathFactory, embedded: LoadedModel,
                    cluster_settings: Settings) -> Iterator[Cameo]:
    """One local engine (same settings, its own registry from the same seed)."""
    settings = cluster_settings.model_copy(
        update={"registry_dir": tmp_path_factory.mktemp("ray-reference-registry")})
    cameo = Cameo.local(settings, loaded=embedded)
    cameo.service.start()
    try:
        yield cameo
    finally:
        cameo.service.close()
        cameo.registry.close()


@pytest.fixture(scope="module")
def reference_url(reference_cameo: Cameo) -> Iterator[str]:
    """The local reference engine behind the app."""
    with live_server(create_app(reference_cameo.settings, reference_cameo)) as url:
        yield url


@pytest.fixture(scope="module")
def cluster(cluster_settings: Settings) -> Iterator[Cluster]:
    import ray
    from ray import serve

    from server.distributed.app import application
    from server.distributed.settings import ClusterSettings

    # The machine is shared: Ray's own OOM killer reacts to other people's memory use too.
    monitor = "RAY_memory_monitor_refresh_ms"  # Ray's spelling
    saved = os.environ.get(monitor)
    os.environ[monitor] = "0"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ClusterSettings(
            **cluster_settings.model_dump(), ray_engine_replicas=ENGINE_REPLICAS,
            ray_engine_num_cpus=1, ray_ingress_num_cpus=0.5, ray_retries=3)
        serve.run(application(settings), name="cameo", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        yield Cluster(url, cluster_settings, "cameo")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if saved is None:
                os.environ.pop(monitor, None)
            else:
                os.environ[monitor] = saved


def wait_ready(url: str) -> None:
    helpers.wait_ready(url, timeout=CLUSTER_TIMEOUT)
