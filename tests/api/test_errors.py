"""Every error the API reports has OpenAI's shape and the right status."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
USER = [{"role": "user", "content": "Hi"}]


def _post(base_url: str, body: Any, **kwargs: Any) -> httpx.Response:
    if isinstance(body, bytes | str):
        return httpx.post(f"{base_url}/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"}, timeout=30, **kwargs)
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30, **kwargs)


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return dict(body["error"])


def test_unknown_model_is_404(base_url: str) -> None:
    error = _error(_post(base_url, {"model": "nobody", "messages": USER}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"


@pytest.mark.parametrize("body,param", [
    ({"model": BASE_ID}, "messages"),
    ({"model": BASE_ID, "messages": []}, "messages"),
    ({"model": BASE_ID, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": BASE_ID, "messages": USER, "temperature": 5}, "temperature"),
    ({"model": BASE_ID, "messages": USER, "max_tokens": -1}, "max_tokens"),
    ({"model": BASE_ID, "messages": USER, "n": 5}, "n"),  # over CAMEO_MAX_N (4)
    ({"messages": USER}, "model"),
])
def test_invalid_body_is_400_not_422(base_url: str, body: dict[str, Any], param: str) -> None:
    error = _error(_post(base_url, body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_malformed_json_is_400(base_url: str) -> None:
    error = _error(_post(base_url, b'{"model": '), 400)
    assert "JSON" in error["message"]


def test_context_length_exceeded(base_url: str) -> None:
    error = _error(_post(base_url, {"model": BASE_ID, "messages": USER, "max_tokens": 100000}),
                   400)
    assert error["code"] == "context_length_exceeded"
    long_prompt = [{"role": "user", "content": "word " * 2000}]
    error = _error(_post(base_url, {"model": BASE_ID, "messages": long_prompt}), 400)
    assert error["code"] == "context_length_exceeded"


def test_unknown_route_is_404_in_openai_shape(base_url: str) -> None:
    _error(httpx.get(f"{base_url}/v1/nothing-here", timeout=10), 404)


def test_health_and_ready(base_url: str) -> None:
    assert httpx.get(f"{base_url}/health", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{base_url}/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
