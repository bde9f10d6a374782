"""Hostile adapter uploads over real HTTP against a real server (one for the module).

Each case of `tests.lora.bad_adapters` (a real PEFT adapter with one thing changed) is answered
400 with the OpenAI error shape, the case's code and param and its reason in words, and leaves
nothing behind: no persona under the name and an empty staging folder. The unedited adapter
uploads, so each refusal is the edit's doing.

Run: python -m pytest tests/robustness/test_bad_adapters.py -q
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.composition import Cameo
from server.model.loader import LoadedModel
from server.registry.store import STAGING
from tests.lora.bad_adapters import CASES, build, write_source
from tests.registry.conftest import upload
from tests.robustness.conftest import ServerFactory

# About a minute or more on CI's 2-core machine: in the slow suite, which CI runs too.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(serve: ServerFactory) -> Iterator[tuple[Cameo, str]]:
    with serve() as started:
        yield started


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, plain_embedded: LoadedModel) -> Path:
    return write_source(plain_embedded.model, tmp_path_factory.mktemp("source"),
                        plain_embedded.model_id)


def _nothing_left(cameo: Cameo, url: str, name: str) -> None:
    assert httpx.get(f"{url}/v1/adapters/{name}", timeout=30).status_code == 404
    assert name not in [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]]
    assert list((cameo.settings.registry_dir / STAGING).iterdir()) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_upload_is_a_clear_400_that_changes_nothing(
        case: str, server: tuple[Cameo, str], source: Path, tmp_path: Path) -> None:
    cameo, url = server
    expected, name = CASES[case], case.replace("_", "-")
    response = upload(url, build(case, source, tmp_path / case), name)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (expected.param, expected.code), error
    assert expected.words in error["message"], error["message"]
    _nothing_left(cameo, url, name)


def test_the_unedited_adapter_uploads_and_chats(server: tuple[Cameo, str],
                                                source: Path) -> None:
    cameo, url = server
    response = upload(url, source, "unedited")
    assert response.status_code == 201, response.text
    assert response.json()["rank"] == 8
    chat = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": "unedited", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200, chat.text
    assert httpx.delete(f"{url}/v1/adapters/unedited", timeout=30).status_code == 200
    _nothing_left(cameo, url, "unedited")
