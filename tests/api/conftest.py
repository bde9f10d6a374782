"""A real uvicorn server on a free localhost port, serving the shared test cameo; and `serve`
(from the robustness tests): a fresh cameo with its own registry behind a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.api.app import create_app
from server.composition import Cameo
from tests.helpers import live_server
from tests.robustness.conftest import serve  # noqa: F401  (a fixture, re-exported)


@pytest.fixture(scope="module")
def base_url(cameo: Cameo) -> Iterator[str]:
    with live_server(create_app(cameo.settings, cameo)) as url:
        yield url
