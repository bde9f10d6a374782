"""Hostile input, one case each: the status and the OpenAI-shaped error body.

Run: python -m pytest tests/robustness/test_hostile.py -q
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.composition import Cameo
from tests.robustness.conftest import ServerFactory

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
USER_KEY, ADMIN_KEY = "user-key-1", "admin-key-1"
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server(serve: ServerFactory) -> Iterator[tuple[Cameo, str]]:
    with serve(api_keys=f"{USER_KEY},other-user", admin_key=ADMIN_KEY, max_request_bytes=64_000,
               max_messages=20, max_message_chars=5_000) as started:
        yield started


def _auth(key: str | None = USER_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _chat(url: str, body: Any = None, *, raw: bytes | None = None, key: str | None = USER_KEY,
          headers: dict[str, str] | None = None) -> httpx.Response:
    all_headers = {**_auth(key), "content-type": "application/json", **(headers or {})}
    if raw is None:
        import json
        raw = json.dumps(body).encode()
    return httpx.post(f"{url}/v1/chat/completions", content=raw, headers=all_headers, timeout=60)


def _expect(response: httpx.Response, status: int, code: str | None = None,
            param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


def test_missing_key(server: tuple[Cameo, str]) -> None:
    _, url = server
    error = _expect(_chat(url, {"model": BASE_ID, "messages": HI}, key=None), 401,
                    "invalid_api_key")
    assert error["type"] == "authentication_error"
    _expect(httpx.get(f"{url}/v1/models"), 401)
    _expect(httpx.get(f"{url}/metrics"), 401)
    _expect(httpx.get(f"{url}/openapi.json"), 401)


def test_wrong_key(server: tuple[Cameo, str]) -> None:
    _, url = server
    _expect(_chat(url, {"model": BASE_ID, "messages": HI}, key="nope"), 401, "invalid_api_key")
    _expect(httpx.get(f"{url}/v1/models", headers={"Authorization": "Basic abc"}), 401)


def test_probes_need_no_key(server: tuple[Cameo, str]) -> None:
    _, url = server
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/ready").status_code == 200


def test_user_key_on_admin_routes(server: tuple[Cameo, str]) -> None:
    _, url = server
    for method, path in (("GET", "/v1/adapters"), ("DELETE", "/v1/adapters/alpha"),
                         ("POST", "/v1/adapters"), ("POST", "/v1/personas/import")):
        response = httpx.request(method, f"{url}{path}", headers=_auth(USER_KEY))
        error = _expect(response, 403, "insufficient_permissions")
        assert error["type"] == "permission_error"
    assert httpx.get(f"{url}/v1/adapters", headers=_auth(ADMIN_KEY)).status_code == 200


def test_oversized_body(server: tuple[Cameo, str]) -> None:
    _, url = server
    big = {"model": BASE_ID, "messages": [{"role": "user", "content": "x" * 100_000}]}
    _expect(_chat(url, big), 413, "request_too_large")


def test_prompt_over_the_context(server: tuple[Cameo, str]) -> None:
    _, url = server
    long = [{"role": "user", "content": "word " * 900}]
    _expect(_chat(url, {"model": BASE_ID, "messages": long}), 400, "context_length_exceeded",
            "messages")


@pytest.mark.parametrize("value,code", [(-1, "invalid_value"), (0, "invalid_value"),
                                        (10**9, "context_length_exceeded")])
def test_max_tokens_out_of_range(server: tuple[Cameo, str], value: int, code: str) -> None:
    _, url = server
    error = _expect(_chat(url, {"model": BASE_ID, "messages": HI, "max_tokens": value}), 400, code)
    assert error["param"] in ("max_tokens", "messages")


@pytest.mark.parametrize("n", [0, 5, 1000])  # 1..CAMEO_MAX_N (4) are served
def test_n_out_of_range(server: tuple[Cameo, str], n: int) -> None:
    _, url = server
    _expect(_chat(url, {"model": BASE_ID, "messages": HI, "n": n}), 400, param="n")


def test_invalid_utf8(server: tuple[Cameo, str]) -> None:
    _, url = server
    raw = b'{"model": "' + BASE_ID.encode() + b'", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    _expect(_chat(url, raw=raw), 400)


def test_deeply_nested_json(server: tuple[Cameo, str]) -> None:
    _, url = server
    depth = 20_000
    raw = b'{"model": "x", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    _expect(_chat(url, raw=raw), 400)
    assert httpx.get(f"{url}/ready").status_code == 200


def test_unknown_role(server: tuple[Cameo, str]) -> None:
    _, url = server
    _expect(_chat(url, {"model": BASE_ID, "messages": [{"role": "root", "content": "x"}]}), 400,
            param="messages.0.role")


def test_empty_messages(server: tuple[Cameo, str]) -> None:
    _, url = server
    _expect(_chat(url, {"model": BASE_ID, "messages": []}), 400, param="messages")
    _expect(_chat(url, {"model": BASE_ID, "messages": [{"role": "user"}]}), 400,
            param="messages.0.content")


def test_too_many_and_too_long_messages(server: tuple[Cameo, str]) -> None:
    _, url = server
    many = [{"role": "user", "content": "hi"}] * 21
    _expect(_chat(url, {"model": BASE_ID, "messages": many}), 400, "too_many_messages", "messages")
    long = [{"role": "user", "content": "y" * 5_001}]
    _expect(_chat(url, {"model": BASE_ID, "messages": long}), 400, "message_too_long",
            "messages.0.content")


@pytest.mark.parametrize("stop", [["s"] * 17, ["x" * 257]])
def test_stop_strings_limits(server: tuple[Cameo, str], stop: list[str]) -> None:
    _, url = server
    _expect(_chat(url, {"model": BASE_ID, "messages": HI, "stop": stop}), 400, param="stop")


@pytest.mark.parametrize("field,value", [("temperature", -0.1), ("temperature", 2.5),
                                         ("top_p", 0), ("top_p", 1.5), ("min_p", 2),
                                         ("frequency_penalty", 3), ("presence_penalty", -3),
                                         ("repetition_penalty", 0), ("top_k", -5)])
def test_sampling_out_of_range(server: tuple[Cameo, str], field: str, value: float) -> None:
    _, url = server
    _expect(_chat(url, {"model": BASE_ID, "messages": HI, field: value}), 400, param=field)


def test_wrong_types_and_missing_fields(server: tuple[Cameo, str]) -> None:
    _, url = server
    _expect(_chat(url, {"model": 5, "messages": HI}), 400, param="model")
    _expect(_chat(url, {"model": BASE_ID, "messages": "hi"}), 400, param="messages")
    _expect(_chat(url, [1, 2, 3]), 400)
    _expect(_chat(url, raw=b"not json at all"), 400)


def test_path_in_model_name_reads_nothing(server: tuple[Cameo, str]) -> None:
    _, url = server
    for name in ("../../etc/passwd", "/etc/passwd", "alpha/../../x"):
        _expect(_chat(url, {"model": name, "messages": HI}), 404, "model_not_found")
