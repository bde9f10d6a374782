"""Servers for the robustness tests: the embedded model with small, explicit limits."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from server.api.app import create_app
from server.composition import Cameo
from server.model.loader import LoadedModel
from server.settings import Settings
from tests.helpers import live_server

ServerFactory = Callable[..., AbstractContextManager[tuple[Cameo, str]]]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, embedded: LoadedModel,
          embedded_settings: Settings, persona_dirs: dict[str, Path]) -> ServerFactory:
    """`with serve(**settings) as (cameo, url)`: a fresh cameo and a real server."""
    count = 0

    @contextmanager
    def start(**overrides: Any) -> Iterator[tuple[Cameo, str]]:
        nonlocal count
        count += 1
        settings = embedded_settings.model_copy(update={
            "registry_dir": tmp_path_factory.mktemp(f"registry{count}"), **overrides})
        cameo = Cameo.local(settings, loaded=embedded)
        try:
            with live_server(create_app(settings, cameo)) as url:
                yield cameo, url
        finally:
            cameo.service.close()
            cameo.registry.close()
            del cameo
            gc.collect()  # slot banks and KV caches are large: free them before the next server

    return start


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
