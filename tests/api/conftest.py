"""A real uvicorn server on a free localhost port, serving the shared test runtime; and `serve`
(from the robustness tests): a fresh runtime with its own registry behind a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.api.app import create_app
from server.runtime import Runtime
from tests.helpers import live_server
from tests.robustness.conftest import serve  # noqa: F401  (a fixture, re-exported)


@pytest.fixture(scope="module")
def base_url(runtime: Runtime) -> Iterator[str]:
    with live_server(create_app(runtime.settings, runtime)) as url:
        yield url
