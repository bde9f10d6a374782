"""An app and its cameo are freed when dropped (each cameo holds a KV cache and slot banks).

FastAPI caches dependency callables process-wide; a route closure over the app once kept every
app and cameo alive. This guards against that coming back.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import httpx

from server.api.app import create_app
from server.composition import Cameo
from server.model.loader import LoadedModel
from server.settings import Settings
from tests.helpers import live_server
from tests.scoring import EngineProbe


def test_served_app_and_runtime_are_garbage_after_use(tmp_path: Path, embedded: LoadedModel,
                                                      embedded_settings: Settings) -> None:
    settings = embedded_settings.model_copy(update={"registry_dir": tmp_path, "seed_dir": None})
    cameo = Cameo.local(settings, loaded=embedded)
    app = create_app(settings, cameo)
    with live_server(app) as url:
        assert httpx.get(f"{url}/openapi.json", timeout=30).status_code == 200
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": embedded.model_id, "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200
    cameo.service.close()
    cameo.registry.close()
    refs = weakref.ref(cameo), weakref.ref(app), weakref.ref(EngineProbe.of(cameo).runner.cache)
    del cameo, app
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
