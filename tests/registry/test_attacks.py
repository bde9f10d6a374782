"""The registry against hostile input and unlucky operators, each over real HTTP on a real server.

One attack per test: a card import over the persona limits, a stored row that no longer
validates, persona names that are the catalog's own file names, a name with a trailing newline,
a name deleted and uploaded again while a stream of the old one runs, and a storm of uploads,
deletes and chats on one name after which the catalog, the disk and the API must agree.

Run: python -m pytest tests/registry/test_attacks.py -q
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.api.app import create_app
from server.composition import Cameo
from server.registry.registry import Registry
from server.registry.store import STAGING, TRASH
from tests.conftest import CameoFactory
from tests.helpers import live_server
from tests.registry.conftest import upload
from tests.registry.test_cards import CARD
from tests.registry.test_hot_swap import _solo_path, _stream, _wait_started

HI = [{"role": "user", "content": "Hi"}]
READS = ("/v1/models", "/v1/personas", "/v1/adapters")


def _chat(url: str, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": HI, "max_tokens": 2, "temperature": 0, **extra})


def _reads_ok(url: str) -> None:
    for path in READS:
        response = httpx.get(f"{url}{path}", timeout=30)
        assert response.status_code == 200, (path, response.text)


def _reopen(cameo: Cameo) -> Registry:
    """A second registry on the same folder: what the next start of the server sees."""
    return Registry.open(cameo.settings.registry_dir, cameo.base.model_id,
                         cameo.base.shapes, cameo.settings.max_lora_rank)


def test_card_import_over_a_persona_limit_is_refused_and_commits_nothing(
        served: tuple[Cameo, str]) -> None:
    cameo, url = served
    card = json.loads(json.dumps(CARD))
    card["data"]["description"] = "x" * 5000  # persona.json's description holds 4000
    response = httpx.post(f"{url}/v1/personas/import", json={"card": card}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "card.data.description"
    assert cameo.registry.catalog.all_versions() == []
    _reads_ok(url)


def test_composed_card_over_the_prompt_limit_is_refused(served: tuple[Cameo, str]) -> None:
    cameo, url = served
    card = json.loads(json.dumps(CARD))  # each field fits; the composed system prompt does not
    card["data"].update(description="d" * 3900, personality="p" * 7000, scenario="s" * 7000)
    response = httpx.post(f"{url}/v1/personas/import", json={"card": card}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "card"
    assert "system_prompt" in response.json()["error"]["message"]
    assert cameo.registry.catalog.all_versions() == []


def test_a_stored_row_that_no_longer_validates_is_quarantined_not_fatal(
        served: tuple[Cameo, str], extra_adapters: dict[str, Path]) -> None:
    """A row written by an older, laxer server (here: edited in SQLite) cannot take the
    catalog reads or the next start down; it is reported and the rest is served."""
    cameo, url = served
    for name in ("good", "bad"):
        assert upload(url, extra_adapters["alpha"], name).status_code == 201
    with sqlite3.connect(cameo.registry.catalog.path) as db:
        card = json.dumps({"display_name": "Bad", "description": "x" * 5000})
        db.execute("UPDATE versions SET card = ? WHERE name = 'bad'", (card,))
    _reads_ok(url)
    listed = httpx.get(f"{url}/v1/adapters").json()
    assert [a["id"] for a in listed["data"]] == ["good"]
    assert "description" in listed["quarantined"]["bad@1"]
    assert _chat(url, "good").status_code == 200
    assert _chat(url, "bad").status_code == 404
    restarted = _reopen(cameo)  # the next start comes up and serves the rest
    assert [p.name for p in restarted.all()] == ["good"]
    restarted.close()
    assert httpx.delete(f"{url}/v1/adapters/bad").status_code == 200  # the admin's way out
    assert httpx.get(f"{url}/v1/adapters").json()["quarantined"] == {}


@pytest.mark.parametrize("name", ["catalog.sqlite3", "catalog.sqlite3-journal",
                                  "catalog.sqlite3-wal", "catalog.sqlite3-shm"])
def test_names_of_the_catalogs_own_files_are_plain_personas(
        served: tuple[Cameo, str], extra_adapters: dict[str, Path], name: str) -> None:
    cameo, url = served
    assert upload(url, extra_adapters["alpha"], name).status_code == 201
    assert _chat(url, name).status_code == 200
    restarted = _reopen(cameo)  # with `-journal` the next start used to fail
    assert [p.name for p in restarted.all()] == [name]
    restarted.close()
    assert httpx.delete(f"{url}/v1/adapters/{name}").status_code == 200


def test_a_registry_with_the_catalog_beside_the_personas_is_moved_on_open(
        make_cameo: CameoFactory, extra_adapters: dict[str, Path]) -> None:
    cameo = make_cameo()
    staged = cameo.registry.stage()
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        (staged / file).write_bytes((extra_adapters["alpha"] / file).read_bytes())
    cameo.registry.add("old", staged)
    cameo.registry.close()
    root = cameo.settings.registry_dir
    for file in (root / ".catalog").iterdir():  # the layout before `.catalog/`
        file.rename(root / file.name)
    (root / ".catalog").rmdir()
    (root / "catalog.sqlite3-journal").mkdir()  # a persona folder that bricked such a registry
    reopened = _reopen(cameo)
    assert [p.name for p in reopened.all()] == ["old"]
    assert (root / ".catalog" / "catalog.sqlite3").is_file()
    assert not (root / "catalog.sqlite3").exists()
    reopened.close()


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "\nabc", "abc\x00"])
def test_names_with_control_characters_are_refused(served: tuple[Cameo, str],
                                                   extra_adapters: dict[str, Path],
                                                   name: str) -> None:
    cameo, url = served
    response = upload(url, extra_adapters["alpha"], name)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_name"
    imported = httpx.post(f"{url}/v1/personas/import", json={"card": CARD, "name": name})
    assert imported.status_code == 400 and imported.json()["error"]["code"] == "invalid_name"
    assert cameo.registry.catalog.all_versions() == []


def test_card_max_tokens_is_the_default_output_limit(served: tuple[Cameo, str],
                                                     tmp_path: Path) -> None:
    _runtime, url = served
    (tmp_path / "persona.json").write_text(json.dumps(
        {"display_name": "Brief", "sampling": {"max_tokens": 3, "temperature": 0}}))
    assert upload(url, tmp_path, "brief").status_code == 201
    body = {"model": "brief", "messages": HI, "ignore_eos": True}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
    assert reply["usage"]["completion_tokens"] == 3
    longer = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 5},
                        timeout=120).json()
    assert longer["usage"]["completion_tokens"] == 5  # the request's own limit wins


def test_delete_then_upload_again_during_a_stream_serves_the_new_adapter(
        make_cameo: CameoFactory, extra_adapters: dict[str, Path]) -> None:
    """Versions are never reused: the new upload is not `name@1` again, so no slot, host cache
    entry or running stream of the deleted adapter can answer for it."""
    cameo = make_cameo(adapter_slots=2)
    prompt, length = "Tell me a long story about a lighthouse.", 40
    with live_server(create_app(cameo.settings, cameo)) as url:
        assert upload(url, extra_adapters["alpha"], "swap").status_code == 201
        old = _solo_path(cameo, "swap", prompt, length)
        stream: dict[str, Any] = {}
        thread = threading.Thread(target=_stream, args=(url, "swap", prompt, length, stream))
        thread.start()
        _wait_started(stream)
        assert httpx.delete(f"{url}/v1/adapters/swap").status_code == 200
        again = upload(url, extra_adapters["bravo"], "swap")
        assert again.status_code == 201 and again.json()["version"] == 2
        new = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": "swap", "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": length, "ignore_eos": True})
        thread.join(300)
        assert stream["status"] == 200
        old.assert_followed_by(stream["text"])
        fresh = _solo_path(cameo, "swap", prompt, length)
        assert fresh.text != old.text
        fresh.assert_followed_by(new.json()["choices"][0]["message"]["content"])


def _agree(cameo: Cameo, url: str, name: str) -> None:
    """Catalog, disk and API tell the same story about `name`."""
    registry, root = cameo.registry, cameo.settings.registry_dir
    rows = {r.version for r in registry.catalog.versions(name)}
    on_disk = {int(p.name) for p in (root / name).iterdir()} if (root / name).exists() else set()
    assert rows == on_disk, (rows, on_disk)
    assert not any((root / STAGING).iterdir()) and not any((root / TRASH).iterdir())
    api = httpx.get(f"{url}/v1/adapters/{name}", timeout=30)
    current = registry.get(name)
    if current is None:
        assert api.status_code == 404 and not rows
    else:
        assert api.status_code == 200 and api.json()["version"] == current.version == max(rows)


@pytest.mark.slow  # 20 s of storm plus the checks
def test_a_storm_of_uploads_deletes_and_chats_on_one_name(
        served: tuple[Cameo, str], extra_adapters: dict[str, Path]) -> None:
    cameo, url = served
    statuses: dict[str, Counter[int]] = {k: Counter() for k in ("upload", "delete", "chat")}
    published: list[int] = []
    stop = time.monotonic() + 20
    lock = threading.Lock()

    def record(kind: str, response: httpx.Response) -> None:
        with lock:
            statuses[kind][response.status_code] += 1
            if kind == "upload" and response.status_code == 201:
                published.append(response.json()["version"])

    def uploads(folder: Path) -> None:
        while time.monotonic() < stop:
            record("upload", upload(url, folder, "storm", replace=True))

    def deletes() -> None:
        while time.monotonic() < stop:
            record("delete", httpx.delete(f"{url}/v1/adapters/storm", timeout=60))
            time.sleep(0.05)

    def chats() -> None:
        while time.monotonic() < stop:
            record("chat", _chat(url, "storm"))

    workers = [threading.Thread(target=uploads, args=(extra_adapters[n],))
               for n in ("alpha", "bravo")]
    workers += [threading.Thread(target=deletes), threading.Thread(target=chats),
                threading.Thread(target=chats)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert set(statuses["upload"]) <= {201}, statuses
    assert set(statuses["delete"]) <= {200, 404}, statuses
    assert set(statuses["chat"]) <= {200, 404}, statuses
    assert statuses["upload"][201] >= 4 and statuses["delete"][200] >= 1, statuses
    assert len(published) == len(set(published)), "a version number was handed out twice"
    _agree(cameo, url, "storm")
    final = upload(url, extra_adapters["alpha"], "storm", replace=True)
    assert final.json()["version"] > max(published)
    assert _chat(url, "storm").status_code == 200
    _agree(cameo, url, "storm")
