"""The admin merge routes over real HTTP: pin, state in the adapter record, errors, keys."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import CameoFactory
from tests.helpers import live_server, write_persona
from tests.registry.conftest import upload
from tests.scoring import EngineProbe

ADMIN = {"Authorization": "Bearer root-key"}


def _error(response: httpx.Response) -> dict[str, str]:
    return response.json()["error"]


def test_merge_and_unmerge_over_http(make_cameo: CameoFactory, extra_adapters: dict[str, Path],
                                     tmp_path: Path) -> None:
    from server.api.app import create_app

    cameo = make_cameo(admin_key="root-key", api_keys="user-key")
    write_persona(tmp_path / "narrator", "Narrator", system_prompt="You narrate.")
    with live_server(create_app(cameo.settings, cameo)) as url:
        assert upload(url, extra_adapters["bravo"], "bravo", headers=ADMIN).status_code == 201
        assert upload(url, tmp_path / "narrator", "narrator", headers=ADMIN).status_code == 201

        merged = httpx.post(f"{url}/v1/adapters/bravo/merge", headers=ADMIN, timeout=60)
        assert merged.status_code == 200, merged.text
        resident = merged.json()["resident"]
        assert resident["merged"] is True and resident["pinned"] is True
        assert resident["device_slot"] is not None  # the merge holds the adapter's slot
        state = httpx.get(f"{url}/v1/adapters/bravo", headers=ADMIN).json()
        assert state["resident"]["merged"] and state["resident"]["pinned"]
        metrics = httpx.get(f"{url}/metrics", headers=ADMIN).text
        assert f'cameo_merged_adapter_info{{adapter="bravo@{state["version"]}"}} 1.0' in metrics

        chat = httpx.post(f"{url}/v1/chat/completions", timeout=120, headers={
            "Authorization": "Bearer user-key"}, json={
            "model": "bravo", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 4

        unmerged = httpx.post(f"{url}/v1/adapters/bravo/unmerge", headers=ADMIN, timeout=60)
        assert unmerged.status_code == 200
        assert not unmerged.json()["resident"]["merged"]
        assert not unmerged.json()["resident"]["pinned"]
        assert EngineProbe.of(cameo).stats.merge.merges == 1 == EngineProbe.of(cameo).stats.merge.unmerges
        metrics = httpx.get(f"{url}/metrics", headers=ADMIN).text
        assert "cameo_adapter_merges_total 1.0" in metrics
        assert "cameo_merged_adapter_info{" not in metrics  # nothing merged now

        missing = httpx.post(f"{url}/v1/adapters/nobody/merge", headers=ADMIN)
        assert missing.status_code == 404 and _error(missing)["code"] == "model_not_found"
        prompt_only = httpx.post(f"{url}/v1/adapters/narrator/merge", headers=ADMIN)
        assert prompt_only.status_code == 400 and _error(prompt_only)["code"] == "no_adapter"
        assert _error(prompt_only)["param"] == "name"

        assert httpx.post(f"{url}/v1/adapters/bravo/merge").status_code == 401
        user = httpx.post(f"{url}/v1/adapters/bravo/merge",
                          headers={"Authorization": "Bearer user-key"})
        assert user.status_code == 403
    assert EngineProbe.of(cameo).stats.merge.merges == 1  # refused calls merged nothing


def test_merge_is_409_when_merging_is_disabled(make_cameo: CameoFactory,
                                               extra_adapters: dict[str, Path]) -> None:
    from server.api.app import create_app

    cameo = make_cameo(merge_mode="never")
    with live_server(create_app(cameo.settings, cameo)) as url:
        assert upload(url, extra_adapters["alpha"], "alpha").status_code == 201
        refused = httpx.post(f"{url}/v1/adapters/alpha/merge", timeout=60)
        assert refused.status_code == 409
        error = _error(refused)
        assert error["code"] == "merge_unavailable" and "disabled" in error["message"]
        assert error["type"] == "invalid_request_error"
        assert httpx.get(f"{url}/v1/adapters/alpha").json()["resident"]["pinned"] is False
