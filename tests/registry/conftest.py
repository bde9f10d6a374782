"""Fixtures for registry tests: a fresh registry (own folder) on the shared embedded model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.api.app import create_app
from server.composition import Cameo
from server.model.loader import LoadedModel
from tests.conftest import CameoFactory
from tests.helpers import live_server, write_peft_adapter, write_persona


@pytest.fixture(scope="session")
def extra_adapters(tmp_path_factory: pytest.TempPathFactory, plain_embedded: LoadedModel,
                   persona_dirs: dict[str, Path]) -> dict[str, Path]:
    """Six distinct adapter folders (the three test personas plus three more)."""
    root = tmp_path_factory.mktemp("extra")
    dirs = dict(persona_dirs)
    for seed, name in enumerate(("delta", "echo", "foxtrot"), start=10):
        write_peft_adapter(plain_embedded.model, root / name, seed=seed, rank=8,
                           targets=("q_proj", "v_proj", "down_proj"), b_scale=0.5,
                           base_model=plain_embedded.model_id)
        write_persona(root / name, name.title())
        dirs[name] = root / name
    return dirs


@pytest.fixture
def served(make_cameo: CameoFactory) -> Iterator[tuple[Cameo, str]]:
    cameo = make_cameo()
    with live_server(create_app(cameo.settings, cameo)) as url:
        yield cameo, url


def upload(url: str, folder: Path, name: str, *, replace: bool = False, force: bool = False,
           files: dict[str, tuple[str, bytes]] | None = None,
           headers: dict[str, str] | None = None) -> httpx.Response:
    """POST /v1/adapters with the folder's files (or explicit `files`)."""
    if files is None:
        files = {}
        for field, filename in (("adapter_config", "adapter_config.json"),
                                ("adapter_model", "adapter_model.safetensors"),
                                ("persona", "persona.json")):
            if (folder / filename).exists():
                files[field] = (filename, (folder / filename).read_bytes())
    data = {"name": name, "replace": str(replace).lower(), "force": str(force).lower()}
    return httpx.post(f"{url}/v1/adapters", data=data, files=files, timeout=120,
                      headers=headers or {})


def snapshot(cameo: Cameo) -> tuple[list[Any], list[str]]:
    """The catalog rows and every path under the registry folder (minus SQLite side files)."""
    rows = sorted((r.name, r.version, r.files) for r in cameo.registry.catalog.all_versions())
    root = cameo.settings.registry_dir
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if "catalog.sqlite3" not in p.name)
    return rows, paths
