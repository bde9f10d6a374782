"""Upload over HTTP and chat at once; every bad upload is refused with nothing left behind."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from server.composition import Cameo
from server.engine.types import AdapterRef, GenerationRequest, SamplingParams
from tests.helpers import chat_prompt, run_requests
from tests.registry.conftest import snapshot, upload
from tests.scoring import EngineProbe

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTION = "What is your favourite food?"


def _chat(url: str, model: str, max_tokens: int = 10) -> str:
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0, "max_tokens": max_tokens})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


def test_upload_then_chat_matches_direct_load(served: tuple[Cameo, str],
                                              extra_adapters: dict[str, Path]) -> None:
    cameo, url = served
    folder = extra_adapters["bravo"]
    assert httpx.get(f"{url}/v1/models").json()["data"][1:] == []
    response = upload(url, folder, "newbie")
    assert response.status_code == 201, response.text
    info = response.json()
    assert (info["name"], info["version"], info["kind"], info["rank"]) == ("newbie", 1,
                                                                             "adapter", 16)
    assert {f["name"] for f in info["files"]} == {"adapter_config.json",
                                                  "adapter_model.safetensors", "persona.json"}
    assert "newbie" in [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]

    served_text = _chat(url, "newbie")
    direct = GenerationRequest("direct", chat_prompt(cameo.base.tokenizer, QUESTION),
                               SamplingParams(max_tokens=10, temperature=0.0),
                               AdapterRef("direct", 1, folder))
    (result,) = run_requests(EngineProbe.of(cameo), [direct])
    assert served_text == result.text
    assert served_text != _chat(url, BASE_ID)
    detail = httpx.get(f"{url}/v1/adapters/newbie").json()
    assert detail["resident"]["host"] is True
    assert [v["version"] for v in detail["versions"]] == [1]


def _edit_config(folder: Path, tmp: Path, **changes: Any) -> Path:
    out = tmp / "edited"
    out.mkdir()
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (out / "adapter_config.json").write_text(json.dumps(config))
    (out / "adapter_model.safetensors").write_bytes(
        (folder / "adapter_model.safetensors").read_bytes())
    return out


def _edit_tensors(folder: Path, tmp: Path, edit: Any) -> Path:
    out = tmp / "edited"
    out.mkdir()
    (out / "adapter_config.json").write_text((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    save_file(edit(tensors), str(out / "adapter_model.safetensors"))
    return out


def _first_key(tensors: dict[str, torch.Tensor], part: str) -> str:
    return next(k for k in sorted(tensors) if part in k)


def _bad_uploads(folder: Path, tmp: Path) -> dict[str, Any]:
    """case -> (folder, name, extra upload kwargs, expected status, words in the message)."""
    def rename(tensors: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
        return {k.replace(old, new): v for k, v in tensors.items()}

    def retype(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = _first_key(tensors, "lora_A")
        return {**tensors, key: tensors[key].to(torch.int32)}

    def poison(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = _first_key(tensors, "lora_B")
        bad = tensors[key].clone()
        bad[0, 0] = float("nan")
        return {**tensors, key: bad}

    def reshape(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = _first_key(tensors, "lora_A")
        return {**tensors, key: torch.zeros(tensors[key].shape[0], 7)}

    def big_rank(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in tensors.items():
            shape = (128, value.shape[1]) if "lora_A" in key else (value.shape[0], 128)
            out[key] = torch.randn(shape) * 0.01
        return out

    config = lambda **c: _edit_config(folder, tmp, **c)  # noqa: E731
    tensors = lambda f: _edit_tensors(folder, tmp, f)  # noqa: E731
    return {
        "pickle_bin": lambda: (folder, "x", {"files": {
            "adapter_config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
            "adapter_model": ("adapter_model.bin", b"\x80\x04\x95 pickle payload")}}, 400,
            "safetensors"),
        "not_lora": lambda: (config(peft_type="IA3"), "x", {}, 400, "LORA"),
        "rank_over_max": lambda: (tensors(big_rank), "x", {}, 400, "rank 128"),
        "module_not_in_base": lambda: (tensors(lambda t: rename(t, "layers.0.", "layers.99.")),
                                       "x", {}, 400, "does not exist"),
        "unsupported_module": lambda: (tensors(lambda t: rename(t, "self_attn.q_proj",
                                                                "self_attn.rotary_proj")),
                                       "x", {}, 400, "its LoRA-capable modules: down_proj"),
        "shape_mismatch": lambda: (tensors(reshape), "x", {}, 400, "do not fit"),
        "non_float": lambda: (tensors(retype), "x", {}, 400, "not float"),
        "non_finite": lambda: (tensors(poison), "x", {}, 400, "NaN"),
        "base_mismatch": lambda: (config(base_model_name_or_path="meta-llama/Llama-3-8B"), "x",
                                  {}, 400, "force=true"),
        "name_traversal": lambda: (folder, "../evil", {}, 400, "name must match"),
        "name_uppercase": lambda: (folder, "Evil", {}, 400, "name must match"),
        "name_too_long": lambda: (folder, "a" * 65, {}, 400, "name must match"),
        "malformed_config_json": lambda: (folder, "x", {"files": {
            "adapter_config": ("adapter_config.json", b"{not json"),
            "adapter_model": ("adapter_model.safetensors",
                              (folder / "adapter_model.safetensors").read_bytes())}}, 400, "JSON"),
        "malformed_persona_json": lambda: (folder, "x", {"files": {
            "adapter_config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
            "adapter_model": ("adapter_model.safetensors",
                              (folder / "adapter_model.safetensors").read_bytes()),
            "persona": ("persona.json", b"[1, 2")}}, 400, "JSON"),
        "corrupt_safetensors": lambda: (folder, "x", {"files": {
            "adapter_config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
            "adapter_model": ("adapter_model.safetensors", b"\x10\x00\x00\x00garbage")}}, 400,
            "safetensors"),
    }


CASES = ["pickle_bin", "not_lora", "rank_over_max", "module_not_in_base", "unsupported_module",
         "shape_mismatch", "non_float", "non_finite", "base_mismatch", "name_traversal",
         "name_uppercase", "name_too_long", "malformed_config_json", "malformed_persona_json",
         "corrupt_safetensors"]


@pytest.mark.parametrize("case", CASES)
def test_bad_upload_is_refused_and_changes_nothing(case: str, served: tuple[Cameo, str],
                                                   extra_adapters: dict[str, Path],
                                                   tmp_path: Path) -> None:
    cameo, url = served
    assert upload(url, extra_adapters["alpha"], "keeper").status_code == 201
    before = snapshot(cameo)
    folder, name, kwargs, status, words = _bad_uploads(extra_adapters["alpha"], tmp_path)[case]()
    response = upload(url, folder, name, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"], error["message"]
    assert snapshot(cameo) == before
    assert not (cameo.settings.registry_dir.parent / "evil").exists()


def test_base_mismatch_is_accepted_with_force(served: tuple[Cameo, str],
                                             extra_adapters: dict[str, Path],
                                             tmp_path: Path) -> None:
    _, url = served
    folder = _edit_config(extra_adapters["alpha"], tmp_path,
                          base_model_name_or_path="meta-llama/Llama-3-8B")
    assert upload(url, folder, "forced").status_code == 400
    response = upload(url, folder, "forced", force=True)
    assert response.status_code == 201, response.text


def test_oversized_upload_is_413_and_changes_nothing(make_cameo: Any,
                                                     extra_adapters: dict[str, Path]) -> None:
    from server.api.app import create_app
    from tests.helpers import live_server

    cameo = make_cameo(max_upload_bytes=20_000)
    with live_server(create_app(cameo.settings, cameo)) as url:
        before = snapshot(cameo)
        response = upload(url, extra_adapters["bravo"], "huge")
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        assert snapshot(cameo) == before


def test_replace_needs_replace_true_and_makes_a_version(served: tuple[Cameo, str],
                                                        extra_adapters: dict[str, Path]) -> None:
    _, url = served
    assert upload(url, extra_adapters["alpha"], "p").status_code == 201
    again = upload(url, extra_adapters["bravo"], "p")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_exists"
    replaced = upload(url, extra_adapters["bravo"], "p", replace=True)
    assert replaced.status_code == 201
    assert replaced.json()["version"] == 2
    assert [v["version"] for v in replaced.json()["versions"]] == [1, 2]


def test_concurrent_uploads_under_one_name(served: tuple[Cameo, str],
                                           extra_adapters: dict[str, Path]) -> None:
    cameo, url = served
    results: list[httpx.Response] = []

    def go(folder: Path, replace: bool) -> None:
        results.append(upload(url, folder, "race", replace=replace))

    threads = [threading.Thread(target=go, args=(extra_adapters[n], False))
               for n in ("alpha", "bravo")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [201, 409]
    results.clear()
    threads = [threading.Thread(target=go, args=(extra_adapters[n], True))
               for n in ("charlie", "delta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [201, 201]
    versions = cameo.registry.versions("race")
    assert [v.version for v in versions] == [1, 2, 3]
    for row in versions:  # every committed version is whole on disk
        folder = cameo.registry.store.path("race", row.version)
        assert sorted(p.name for p in folder.iterdir()) == sorted(f["name"] for f in row.files)


def test_delete_then_404(served: tuple[Cameo, str], extra_adapters: dict[str, Path]) -> None:
    cameo, url = served
    assert upload(url, extra_adapters["alpha"], "gone").status_code == 201
    deleted = httpx.delete(f"{url}/v1/adapters/gone")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert httpx.delete(f"{url}/v1/adapters/gone").status_code == 404
    chat = httpx.post(f"{url}/v1/chat/completions", json={
        "model": "gone", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 404
    assert not (cameo.settings.registry_dir / "gone").exists()


def test_admin_routes_need_the_admin_key(make_cameo: Any,
                                         extra_adapters: dict[str, Path]) -> None:
    from server.api.app import create_app
    from tests.helpers import live_server

    cameo = make_cameo(admin_key="root-key", api_keys="user-key")
    with live_server(create_app(cameo.settings, cameo)) as url:
        assert upload(url, extra_adapters["alpha"], "k").status_code == 401
        user = upload(url, extra_adapters["alpha"], "k", headers={"Authorization": "Bearer user-key"})
        assert user.status_code == 403
        wrong = httpx.get(f"{url}/v1/adapters", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = upload(url, extra_adapters["alpha"], "k", headers={"Authorization": "Bearer root-key"})
        assert ok.status_code == 201
        assert httpx.get(f"{url}/v1/models").status_code == 401
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer user-key"})
        assert models.status_code == 200
