"""Chat sampling options against a live server on the embedded model: logprobs and
top_logprobs, logit_bias, n (with seeds), and the parameters Cameo refuses by name."""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import pytest

from server.composition import Cameo
from tests.api.support import BASE_ID, USER, events, ok, post
from tests.robustness.conftest import metric
from tests.scoring import EngineProbe

GREEDY = {"model": BASE_ID, "messages": USER, "max_tokens": 8, "temperature": 0}


def _chat(base_url: str, **extra: Any) -> dict[str, Any]:
    return ok(post(base_url, "/v1/chat/completions", {**GREEDY, **extra}))


def test_greedy_logprobs_are_the_models_choice(base_url: str) -> None:
    body = _chat(base_url, logprobs=True, top_logprobs=5)
    choice = body["choices"][0]
    entries = choice["logprobs"]["content"]
    assert entries
    for entry in entries:
        assert entry["logprob"] <= 0.0
        tops = entry["top_logprobs"]
        assert len(tops) == 5
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in tops) <= 1.0 + 1e-4
        assert entry["token"] in [t["token"] for t in tops]  # greedy: the chosen is on top
        assert math.isclose(tops[0]["logprob"], entry["logprob"], abs_tol=1e-4)
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
    text = b"".join(bytes(e["bytes"]) for e in entries).decode()
    assert text == choice["message"]["content"]


def test_logprobs_without_top_and_streamed(base_url: str) -> None:
    whole = _chat(base_url, logprobs=True)["choices"][0]["logprobs"]["content"]
    assert whole and all(e["top_logprobs"] == [] for e in whole)
    chunks = events(base_url, "/v1/chat/completions", {**GREEDY, "logprobs": True})
    streamed = [e for c in chunks for ch in c["choices"] if ch["logprobs"]
                for e in ch["logprobs"]["content"]]
    assert [e["token"] for e in streamed] == [e["token"] for e in whole]
    for ours, theirs in zip(streamed, whole, strict=True):
        assert math.isclose(ours["logprob"], theirs["logprob"], abs_tol=1e-3)


def test_logit_bias_bans_and_forces_tokens(base_url: str, cameo: Cameo) -> None:
    plain = _chat(base_url, logprobs=True)["choices"][0]
    first = plain["logprobs"]["content"][0]["token"]
    tokenizer = cameo.base.tokenizer
    (banned,) = tokenizer(first, add_special_tokens=False)["input_ids"]
    without = _chat(base_url, logprobs=True, logit_bias={str(banned): -100})["choices"][0]
    assert without["message"]["content"] != plain["message"]["content"]
    assert without["logprobs"]["content"][0]["token"] != first
    (forced,) = tokenizer(" banana", add_special_tokens=False)["input_ids"]
    pushed = _chat(base_url, logit_bias={str(forced): 100}, max_tokens=3)["choices"][0]
    assert pushed["message"]["content"] == " banana" * 3


def test_n_choices_share_the_prompt_and_sum_usage(base_url: str) -> None:
    one = _chat(base_url, max_tokens=5, ignore_eos=True)
    three = _chat(base_url, n=3, max_tokens=5, ignore_eos=True)
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    texts = {c["message"]["content"] for c in three["choices"]}
    assert texts == {one["choices"][0]["message"]["content"]}  # greedy: the same reply, 3x
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert three["usage"]["completion_tokens"] == 15
    assert three["usage"]["total_tokens"] == three["usage"]["prompt_tokens"] + 15


def test_seeded_n_reproduces_choice_by_choice(base_url: str) -> None:
    body = {"temperature": 1.0, "n": 2, "seed": 1234, "max_tokens": 12, "ignore_eos": True}
    first, again = _chat(base_url, **body), _chat(base_url, **body)
    texts = [c["message"]["content"] for c in first["choices"]]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    assert texts[0] != texts[1]  # seed + i: the choices are not copies of each other


def test_streamed_n_interleaves_choices(base_url: str) -> None:
    whole = _chat(base_url, n=2, max_tokens=6)
    chunks = events(base_url, "/v1/chat/completions", {**GREEDY, "n": 2, "max_tokens": 6})
    for index in (0, 1):
        mine = [ch for c in chunks for ch in c["choices"] if ch["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert [ch["finish_reason"] is not None for ch in mine] == [False] * (len(mine) - 1) + [True]
        text = "".join(ch["delta"].get("content") or "" for ch in mine)
        assert text == whole["choices"][index]["message"]["content"]


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
TEXT_PART = {"type": "text", "text": "What is this?"}


@pytest.mark.parametrize("extra,param", [
    ({"best_of": 2}, "best_of"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"prediction": {"type": "content", "content": "Paris"}}, "prediction"),
    ({"messages": [{"role": "user", "content": [TEXT_PART, IMAGE]}]}, "messages.0.content.1"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
     "messages.0.content.0"),
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-1"}}]}]}, "messages.1.content.0"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages.0.content.0.text"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
     "messages.0.content.0.type"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"logit_bias": {"42": 101}}, "logit_bias"),
    ({"n": 5}, "n"),
])
def test_unsupported_is_refused_by_name(base_url: str, extra: dict[str, Any], param: str) -> None:
    response = post(base_url, "/v1/chat/completions", {**GREEDY, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(param)


def test_supported_neighbours_are_accepted(base_url: str) -> None:
    """What the refusals must not catch: text parts, text modality, best_of 1, empty bias."""
    body = _chat(base_url, messages=[{"role": "user", "content": [TEXT_PART]}],
                 modalities=["text"], best_of=1, logit_bias={}, n=None, stream=None,
                 max_tokens=2)
    assert body["choices"][0]["message"]["content"]


def _wait_idle(cameo: Cameo, base_url: str) -> None:
    """Idle within seconds: far sooner than the 450 tokens x 3 left would take to generate."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        waiting = metric(httpx.get(f"{base_url}/metrics").text, "cameo_waiting_requests")
        if EngineProbe.of(cameo).stats.running == 0 and EngineProbe.of(cameo).stats.waiting == 0 \
                and waiting == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"still busy: {EngineProbe.of(cameo).stats}")


def test_leaving_a_stream_of_n_choices_aborts_them_all(base_url: str, cameo: Cameo) -> None:
    body = {**GREEDY, "n": 3, "max_tokens": 450, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body,
                      timeout=60) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # generation is under way: leave
        else:
            raise AssertionError("the stream ended before any content")
    _wait_idle(cameo, base_url)  # every choice's row, ticket and engine request is gone


def test_leaving_a_whole_answer_of_n_choices_aborts_them_all(base_url: str,
                                                             cameo: Cameo) -> None:
    body = {**GREEDY, "n": 3, "max_tokens": 450, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=1.5)
    _wait_idle(cameo, base_url)
