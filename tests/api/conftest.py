"""A real uvicorn server on a free localhost port, serving the shared test runtime."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.api.app import create_app
from server.runtime import Runtime
from tests.helpers import live_server


@pytest.fixture(scope="module")
def base_url(runtime: Runtime) -> Iterator[str]:
    with live_server(create_app(runtime.settings, runtime)) as url:
        yield url
