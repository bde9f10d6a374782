"""`clients.client`: CameoClient and AsyncCameoClient against a real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from clients.client import (
    Adapter,
    AsyncCameoClient,
    CameoClient,
    CameoConnectionError,
    CameoError,
    ChatChunk,
    ChatResult,
    PersonaDetails,
)
from tests.clients._support import MAX_TOKENS, card_v2, png_card
from tests.helpers import free_port


@pytest.fixture
def client(server_url: str):
    with CameoClient(server_url) as cameo:
        yield cameo


def test_personas_carry_the_card_fields(client: CameoClient) -> None:
    personas = {p.id: p for p in client.personas()}
    assert {"alpha", "bravo", "charlie"} <= set(personas)
    alpha = personas["alpha"]
    assert alpha.display_name == "Alpha"
    assert alpha.description == "test persona alpha"
    assert alpha.greeting == "Hello from alpha"
    assert alpha.tags == ("test",)
    assert not alpha.is_base
    models = client.models()
    assert models[0].is_base and models[0].id not in personas
    assert all(not p.is_base for p in personas.values())


def test_chat_returns_a_typed_result(client: CameoClient) -> None:
    result = client.chat("alpha", "Hello, who are you?", max_tokens=MAX_TOKENS, temperature=0)
    assert isinstance(result, ChatResult)
    assert result.model == "alpha"
    assert result.id.startswith("chatcmpl-")
    assert result.finish_reason in ("stop", "length")
    assert result.usage is not None and 1 <= result.usage.completion_tokens <= MAX_TOKENS
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert str(result) == result.text


def test_stream_matches_chat_and_ends_with_a_finish_reason(client: CameoClient) -> None:
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Name a colour."}]
    whole = client.chat("bravo", messages, max_tokens=MAX_TOKENS, temperature=0)
    chunks = list(client.stream("bravo", messages, max_tokens=MAX_TOKENS, temperature=0,
                                include_usage=True))
    assert all(isinstance(c, ChatChunk) for c in chunks)
    assert chunks[0].role == "assistant"
    assert "".join(c.text for c in chunks) == whole.text
    assert [c.finish_reason for c in chunks if c.finish_reason] == [whole.finish_reason]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    deltas = list(client.stream_text("bravo", messages, max_tokens=MAX_TOKENS, temperature=0))
    assert "".join(deltas) == whole.text and all(deltas)


def test_leaving_a_stream_early_leaves_the_client_usable(client: CameoClient) -> None:
    stream = client.stream_text("charlie", "Count to one hundred.", max_tokens=200)
    first = next(stream)
    stream.close()
    assert first
    assert client.chat("charlie", "Hi", max_tokens=2).usage is not None


def test_api_errors_are_raised_as_cameo_errors(client: CameoClient) -> None:
    with pytest.raises(CameoError) as missing:
        client.chat("no-such-persona", "Hi", max_tokens=2)
    assert missing.value.status == 404
    assert missing.value.code == "model_not_found"
    assert missing.value.param == "model"
    assert "no-such-persona" in missing.value.message
    assert "HTTP 404" in str(missing.value)

    with pytest.raises(CameoError) as too_long:
        list(client.stream("alpha", "Hi", max_tokens=100_000))
    assert too_long.value.status == 400
    assert too_long.value.code == "context_length_exceeded"

    with pytest.raises(CameoError) as invalid:
        client.chat("alpha", "Hi", temperature=5)
    assert invalid.value.status == 400 and invalid.value.param == "temperature"


def test_an_unreachable_server_is_a_connection_error() -> None:
    with CameoClient(f"http://127.0.0.1:{free_port()}", timeout=5) as cameo:
        with pytest.raises(CameoConnectionError) as caught:
            cameo.personas()
        assert caught.value.status == 0 and "cannot reach" in str(caught.value)
        assert cameo.health() is False


def test_base_url_may_end_in_v1(server_url: str) -> None:
    with CameoClient(server_url + "/v1/") as cameo:
        assert cameo.health() and cameo.ready()
        assert any(p.id == "alpha" for p in cameo.personas())


def test_async_client_chats_streams_and_lists(server_url: str) -> None:
    async def scenario() -> tuple[list[str], ChatResult, list[str]]:
        async with AsyncCameoClient(server_url) as cameo:
            names = [p.id for p in await cameo.personas()]
            result, deltas = await asyncio.gather(
                cameo.chat("alpha", "Hello!", max_tokens=MAX_TOKENS, temperature=0),
                _collect(cameo.stream_text("bravo", "Hello!", max_tokens=MAX_TOKENS,
                                           temperature=0)))
            with pytest.raises(CameoError) as caught:
                await cameo.chat("nobody", "Hi")
            assert caught.value.code == "model_not_found"
            assert await cameo.ready()
            return names, result, deltas

    names, result, deltas = asyncio.run(scenario())
    assert {"alpha", "bravo", "charlie"} <= set(names)
    assert result.model == "alpha" and result.usage and result.usage.completion_tokens >= 1
    assert deltas and all(isinstance(d, str) for d in deltas)


async def _collect(stream) -> list[str]:
    return [delta async for delta in stream]


def test_card_files_are_sent_as_they_are(client: CameoClient, tmp_path: Path,
                                         uploaded: list[str]) -> None:
    """The client reads no card: a .json or .png file goes to the server, which parses it."""
    uploaded.extend(["pycard-json", "pycard-png", "pycard-v1", "pycard-async"])
    card = card_v2("Mira")
    (tmp_path / "mira.json").write_text(json.dumps(card))
    assert client.import_card(tmp_path / "mira.json", name="pycard-json").display_name == "Mira"
    from_png = client.import_card(png_card(tmp_path / "iris.png", card_v2("Iris")),
                                  name="pycard-png")
    assert from_png.id == "pycard-png" and from_png.display_name == "Iris"
    assert from_png.greeting == "Welcome to the lighthouse! I am Iris."
    v1 = {"name": "Old", "description": "a V1 card", "first_mes": "Hi"}
    assert client.import_card(v1, name="pycard-v1").greeting == "Hi"  # wrapped by the server

    async def import_async() -> str:
        async with AsyncCameoClient(client.base_url) as cameo:
            return (await cameo.import_card(str(tmp_path / "iris.png"), name="pycard-async")).id

    assert asyncio.run(import_async()) == "pycard-async"
    (tmp_path / "plain.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a PNG without a card
    with pytest.raises(CameoError) as plain:
        client.import_card(tmp_path / "plain.png")
    assert (plain.value.status, plain.value.code, plain.value.param) == (400, "no_card",
                                                                         "card_file")
    assert "no character card" in plain.value.message
    with pytest.raises(CameoError) as not_a_card:
        client.import_card({"hello": "world"})
    assert not_a_card.value.status == 400 and "not a Character Card V2" in not_a_card.value.message
    with pytest.raises(FileNotFoundError):
        client.import_card(tmp_path / "missing.png")


def test_upload_refuses_a_folder_without_an_adapter(client: CameoClient, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        client.upload(tmp_path, "empty")


def test_upload_chat_import_and_delete(client: CameoClient, upload_dir: Path,
                                       uploaded: list[str]) -> None:
    uploaded.extend(["pyup", "pyup-card"])
    seen: list[tuple[int, int]] = []
    adapter = client.upload(upload_dir, "pyup", replace=True,
                            progress=lambda sent, total: seen.append((sent, total)))
    assert isinstance(adapter, Adapter)
    assert adapter.name == "pyup" and adapter.id == "pyup"
    assert adapter.rank == 8 and set(adapter.target_modules) == {"q_proj", "v_proj"}
    assert adapter.version is not None and adapter.versions
    total = seen[-1][1]
    assert seen[0][0] == 0 and seen[-1][0] == total > 0
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)

    personas = {p.id: p for p in client.personas()}
    assert personas["pyup"].display_name == "Webby"
    assert client.chat("pyup", "Hi!", max_tokens=MAX_TOKENS).usage is not None
    assert any(a.name == "pyup" for a in client.adapters())
    assert client.adapter("pyup").rank == 8

    with pytest.raises(CameoError) as exists:
        client.upload(upload_dir, "pyup")  # no replace
    assert exists.value.status in (400, 409)

    details = client.import_card(card_v2("Mira"), name="pyup-card")
    assert isinstance(details, PersonaDetails)
    assert details.id == "pyup-card" and details.display_name == "Mira"
    assert details.greeting == "Welcome to the lighthouse! I am Mira."
    assert client.persona("pyup-card").description.startswith("Mira is")

    attached = client.import_card(card_v2("Captain"), adapter="pyup")
    assert attached.adapter == "pyup"
    assert client.chat(attached.id, "Ahoy", max_tokens=MAX_TOKENS).text is not None

    deleted = client.delete("pyup")
    assert deleted.deleted and deleted.id == "pyup"
    with pytest.raises(CameoError) as gone:
        client.chat("pyup", "Hi", max_tokens=2)
    assert gone.value.status == 404


def test_async_upload_and_delete(server_url: str, upload_dir: Path,
                                 uploaded: list[str]) -> None:
    uploaded.append("pyup-async")

    async def scenario() -> tuple[Adapter, bool]:
        async with AsyncCameoClient(server_url) as cameo:
            progress: list[int] = []
            adapter = await cameo.upload(upload_dir, "pyup-async", replace=True,
                                         progress=lambda sent, total: progress.append(sent))
            assert progress and progress[-1] > 0
            await cameo.chat("pyup-async", "Hi", max_tokens=2)
            deleted = await cameo.delete("pyup-async")
            return adapter, deleted.deleted

    adapter, deleted = asyncio.run(scenario())
    assert adapter.name == "pyup-async" and deleted
