"""Faults stay where they happen: one bad row fails one request; a stalled or dead engine shows.

The faults are real where they can be: an adapter file that vanished from disk, a worker thread
that is blocked. Two are injected, since no client input can cause them any more: non-finite
weights in a resident adapter's device slot (uploads refuse adapters whose change could overflow,
`server/lora/adapter.py`, so only memory corruption or a kernel bug gets there), and the engine
thread's death (a step that raises SystemExit).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from server.model.loader import LoadedModel
from tests.helpers import write_peft_adapter
from tests.robustness.conftest import ServerFactory
from tests.scoring import EngineProbe


def _upload(url: str, folder: Path, name: str) -> None:
    files = {field: (filename, (folder / filename).read_bytes()) for field, filename in (
        ("adapter_config", "adapter_config.json"), ("adapter_model", "adapter_model.safetensors"))}
    response = httpx.post(f"{url}/v1/adapters", data={"name": name}, files=files, timeout=60)
    assert response.status_code == 201, response.text


def _chat(url: str, model: str, max_tokens: int = 6, **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me about rivers."}], **extra})


def test_nan_logits_fail_only_their_row(serve: ServerFactory, plain_embedded: LoadedModel,
                                        tmp_path: Path) -> None:
    adapter = write_peft_adapter(plain_embedded.model, tmp_path / "poison", seed=5,
                                 base_model=plain_embedded.model_id)
    with serve(adapter_slots=2) as (cameo, url):
        _upload(url, adapter, "poison")
        assert _chat(url, "poison").status_code == 200  # resident in a slot now
        engine = EngineProbe.of(cameo)
        slot = engine.call(engine.slots.resident).result()["poison@1"]
        engine.call(lambda: [b[slot].fill_(float("inf")) for b in engine.slots.bank.b.values()]
                    ).result()
        healthy: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: healthy.update(r=_chat(url, "alpha", 40,
                                                                        ignore_eos=True)))
        thread.start()
        time.sleep(0.5)  # the healthy request is running when the poisoned one joins
        bad = _chat(url, "poison")
        thread.join(120)
        assert bad.status_code == 500
        assert bad.json()["error"]["code"] == "numerical_error"
        assert healthy["r"].status_code == 200
        assert healthy["r"].json()["usage"]["completion_tokens"] == 40
        assert _chat(url, "bravo").status_code == 200  # the engine carries on


def test_missing_adapter_file_fails_that_request(serve: ServerFactory,
                                                 persona_dirs: dict[str, Path]) -> None:
    with serve(seed_dir=next(iter(persona_dirs.values())).parent) as (cameo, url):
        persona = cameo.registry.get("charlie")
        assert persona is not None and persona.adapter is not None
        (persona.adapter.path / "adapter_model.safetensors").unlink()  # the disk lost it
        broken = _chat(url, "charlie")
        assert broken.status_code == 500
        error = broken.json()["error"]
        assert error["code"] == "adapter_load_failed" and "charlie" in error["message"]
        assert _chat(url, "alpha").status_code == 200


def test_stalled_engine_turns_ready_503(serve: ServerFactory) -> None:
    with serve(stall_timeout=1.0) as (cameo, url):
        assert httpx.get(f"{url}/ready").status_code == 200
        blocked = EngineProbe.of(cameo).call(lambda: time.sleep(4))  # the worker is stuck in here
        deadline = time.monotonic() + 3.5
        seen = []
        while time.monotonic() < deadline:
            seen.append(httpx.get(f"{url}/ready").status_code)
            time.sleep(0.1)
        blocked.result(10)
        assert 503 in seen
        stalled = httpx.get(f"{url}/ready")
        assert stalled.status_code == 200  # it recovers once the worker runs again


def test_engine_thread_death_is_loud(serve: ServerFactory, caplog: Any) -> None:
    with serve() as (cameo, url):
        def die() -> None:
            raise SystemExit("injected engine death")

        cameo.service.engine.step = die  # type: ignore[method-assign]
        answer = _chat(url, "alpha")
        assert answer.status_code == 500
        assert "engine failure" in answer.json()["error"]["message"]
        cameo.service.worker._thread.join(5)  # type: ignore[union-attr]
        assert not cameo.service.worker.alive and cameo.service.worker.failure is not None
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and "engine" in ready.json()["error"]["message"]
        refused = _chat(url, "alpha")
        assert refused.status_code == 503
        assert any("engine worker died" in r.getMessage() for r in caplog.records)
