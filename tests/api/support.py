"""Helpers for the API tests: JSON and server-sent-event requests, and the vendored OpenAI spec
(`openai_spec.json`) as validators."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft202012Validator

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SPEC: dict[str, Any] = json.loads((Path(__file__).parent / "openai_spec.json").read_text())
USER = [{"role": "user", "content": "What is the capital of France?"}]


def post(base_url: str, path: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json=body, timeout=120, **kwargs)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def events(base_url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON events of a stream (asserting it ends with `data: [DONE]`)."""
    with httpx.stream("POST", f"{base_url}{path}", json={**body, "stream": True},
                      timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in response.iter_lines()
                if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def validator(name: str, defs: dict[str, Any] | None = None) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": defs or SPEC["$defs"]})


def assert_valid(name: str, body: Any, defs: dict[str, Any] | None = None) -> None:
    errors = sorted(validator(name, defs).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors)


def legacy_stream_defs(echo: bool = False) -> dict[str, Any]:
    """CreateCompletionResponse as OpenAI's own legacy API sends it where the spec is silent.

    The spec says streamed and whole text completions share one shape, with `finish_reason`
    (required) a non-null string and `usage` a CompletionUsage. OpenAI's stream sends
    `finish_reason: null` on every chunk but a choice's last, and `usage: null` on every chunk
    but the usage chunk (`stream_options.include_usage`); with `echo` and `logprobs`, the first
    prompt token has null `token_logprobs` and `top_logprobs` entries (nothing predicts it).
    These, and only these, are relaxed here.
    """
    defs = copy.deepcopy(SPEC["$defs"])
    response = defs["CreateCompletionResponse"]["properties"]
    choice = response["choices"]["items"]["properties"]
    choice["finish_reason"] = {"type": ["string", "null"],
                               "enum": ["stop", "length", "content_filter", None]}
    response["usage"] = {"anyOf": [{"$ref": "#/$defs/CompletionUsage"}, {"type": "null"}]}
    if echo:
        logprobs = choice["logprobs"]["properties"]
        logprobs["token_logprobs"]["items"] = {"type": ["number", "null"]}
        logprobs["top_logprobs"]["items"]["type"] = ["object", "null"]
    return defs
