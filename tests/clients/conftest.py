"""Fixtures for the client tests: one real uvicorn server (the shared test cameo, the web chat
mounted at `/`), an adapter folder to upload, clean-up of what the tests upload, and `serve` (a
fresh cameo with its own registry behind a real server, from the robustness tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from server.api.app import create_app
from server.api.webmount import web_dir
from server.composition import Cameo
from server.model.loader import LoadedModel
from server.settings import Settings
from tests.helpers import live_server, write_peft_adapter, write_persona
from tests.robustness.conftest import serve  # noqa: F401  (a fixture, re-exported)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def mount_web(app: FastAPI) -> FastAPI:
    """Mount the web chat at `/` as the server does, unless the app already serves it."""
    for route in app.routes:
        if isinstance(getattr(route, "app", None), StaticFiles):
            return app
    app.mount("/", StaticFiles(directory=web_dir(), html=True), name="web")
    return app


@pytest.fixture(scope="session")
def server_url(embedded_settings: Settings, cameo: Cameo) -> Iterator[str]:
    """A real server on a free localhost port: the API plus the web chat at `/`."""
    app = mount_web(create_app(embedded_settings, cameo))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def upload_dir(tmp_path_factory: pytest.TempPathFactory, plain_embedded: LoadedModel,
               persona_dirs: dict[str, Path]) -> Path:
    """A PEFT adapter folder (adapter + persona.json) for the embedded model, to upload."""
    folder = tmp_path_factory.mktemp("upload") / "webby"
    write_peft_adapter(plain_embedded.model, folder, seed=11, rank=8,
                       targets=("q_proj", "v_proj"), b_scale=0.5,
                       base_model=plain_embedded.model_id)
    write_persona(folder, "Webby", description="uploaded by a test",
                  greeting="Hi, I was uploaded", tags=["test"])
    return folder


@pytest.fixture
def uploaded(server_url: str) -> Iterator[list[str]]:
    """Names a test uploads or imports; they are deleted afterwards (best effort), so that the
    shared registry holds only alpha, bravo and charlie for the other tests."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(f"{server_url}/v1/adapters/{name}", timeout=30)


USER_KEY = "user-key-123"
ADMIN_KEY = "admin-key-456"


@pytest.fixture(scope="session")
def keyed_server_url(embedded_settings: Settings, cameo: Cameo) -> Iterator[str]:
    """The same cameo behind a server that needs keys: CAMEO_API_KEYS and CAMEO_ADMIN_KEY."""
    settings = embedded_settings.model_copy(update={"api_keys": f"other-key,{USER_KEY}",
                                                    "admin_key": ADMIN_KEY})
    with live_server(mount_web(create_app(settings, cameo))) as url:
        yield url
