"""`POST /v1/completions` against a live server: raw prompts (no chat template), personas,
several prompts and token-id prompts, echo with prompt logprobs (lm-eval's loglikelihood),
streaming, defaults and refusals, and the openai SDK's legacy client."""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest
import torch

from server.composition import Cameo
from server.engine.types import GenerationRequest, SamplingParams
from tests.api.support import BASE_ID, events, ok, post
from tests.helpers import run_requests
from tests.scoring import EngineProbe

PROMPT = "The capital of France is"
GREEDY = {"model": BASE_ID, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}


def _complete(base_url: str, **extra: Any) -> dict[str, Any]:
    return ok(post(base_url, "/v1/completions", {**GREEDY, **extra}))


def _engine_text(cameo: Cameo, prompt: str, persona: str | None, max_tokens: int) -> str:
    """The engine's own greedy continuation of the raw prompt (no template, no system)."""
    ids = tuple(cameo.base.tokenizer(prompt)["input_ids"])
    adapter = None
    if persona is not None:
        found = cameo.registry.get(persona)
        assert found is not None and found.adapter
        adapter = found.adapter
    request = GenerationRequest(f"direct-{persona}", ids,
                                SamplingParams(max_tokens=max_tokens, temperature=0.0), adapter)
    (direct,) = run_requests(EngineProbe.of(cameo), [request])
    return direct.text


@pytest.mark.parametrize("model", [BASE_ID, "alpha"])
def test_raw_prompt_with_the_models_adapter(base_url: str, cameo: Cameo, model: str) -> None:
    body = _complete(base_url, model=model)
    (choice,) = body["choices"]
    persona = None if model == BASE_ID else model
    assert choice["text"] == _engine_text(cameo, PROMPT, persona, 6)
    assert choice["finish_reason"] in ("stop", "length") and choice["logprobs"] is None
    assert body["usage"]["prompt_tokens"] == len(cameo.base.tokenizer(PROMPT)["input_ids"])
    assert body["id"].startswith("cmpl-") and body["model"] == model


def test_prompt_lists_and_token_ids(base_url: str, cameo: Cameo) -> None:
    prompts = [PROMPT, "One, two, three,"]
    single = [_complete(base_url, prompt=p)["choices"][0]["text"] for p in prompts]
    batch = _complete(base_url, prompt=prompts)
    assert [c["index"] for c in batch["choices"]] == [0, 1]
    assert [c["text"] for c in batch["choices"]] == single
    ids = cameo.base.tokenizer(PROMPT)["input_ids"]
    assert _complete(base_url, prompt=ids)["choices"][0]["text"] == single[0]
    assert [c["text"] for c in _complete(base_url, prompt=[ids, ids])["choices"]] == [single[0]] * 2
    grouped = _complete(base_url, prompt=prompts, n=2)  # choice p * n + j
    assert [c["text"] for c in grouped["choices"]] == [single[0], single[0], single[1], single[1]]


def test_max_tokens_defaults_to_16(base_url: str) -> None:
    body = _complete(base_url, max_tokens=None, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 16
    body = ok(post(base_url, "/v1/completions", {"model": BASE_ID, "prompt": PROMPT,
                                                 "ignore_eos": True, "temperature": 0}))
    assert body["usage"]["completion_tokens"] == 16


def test_echo_and_generated_logprobs(base_url: str) -> None:
    body = _complete(base_url, echo=True, logprobs=2, max_tokens=4, ignore_eos=True)
    (choice,) = body["choices"]
    assert choice["text"].startswith(PROMPT) and len(choice["text"]) > len(PROMPT)
    logprobs = choice["logprobs"]
    prompt_len, generated = body["usage"]["prompt_tokens"], 4
    assert len(logprobs["tokens"]) == prompt_len + generated
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(lp <= 0 for lp in logprobs["token_logprobs"][1:])
    assert "".join(logprobs["tokens"]) == choice["text"]
    offsets = [0]
    for token in logprobs["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs["text_offset"] == offsets
    for token, lp, top in zip(logprobs["tokens"][prompt_len:], logprobs["token_logprobs"][
            prompt_len:], logprobs["top_logprobs"][prompt_len:], strict=True):
        assert top[token] == lp and max(top.values()) == lp  # greedy: the chosen is the best
        assert 2 <= len(top) <= 3


def test_loglikelihood_matches_the_models_scores(base_url: str, cameo: Cameo) -> None:
    """lm-eval's loglikelihood: echo, logprobs, max_tokens 0 on token ids; each prompt token's
    logprob is the model's own log-softmax at the position before it."""
    ids = list(cameo.base.tokenizer("Paris is the capital of France.")["input_ids"])
    body = _complete(base_url, prompt=ids, echo=True, logprobs=1, max_tokens=0)
    (choice,) = body["choices"]
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0,
                             "total_tokens": len(ids)}
    assert choice["finish_reason"] == "length"
    got = choice["logprobs"]["token_logprobs"]
    assert len(got) == len(ids) and got[0] is None
    (logits,) = EngineProbe.of(cameo).score([(ids, None)])
    want = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(ids) - 1),
                                                     torch.tensor(ids[1:])]
    for ours, theirs in zip(got[1:], want.tolist(), strict=True):
        assert math.isclose(ours, theirs, abs_tol=2e-2)
    greedy = [max(top.values()) == lp for top, lp in zip(choice["logprobs"]["top_logprobs"][1:],
                                                         got[1:], strict=True)]
    assert any(greedy) and not all(greedy)  # lm-eval's is_greedy reads exactly this


def test_stream_matches_the_whole_answer(base_url: str) -> None:
    whole = _complete(base_url, echo=True, logprobs=1)
    chunks = events(base_url, "/v1/completions", {**GREEDY, "echo": True, "logprobs": 1,
                                                 "stream_options": {"include_usage": True}})
    texts = [ch["text"] for c in chunks for ch in c["choices"]]
    assert "".join(texts) == whole["choices"][0]["text"] and texts[0].startswith(PROMPT)
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"]]
    assert finishes[-1] == whole["choices"][0]["finish_reason"] and not any(finishes[:-1])
    streamed = [t for c in chunks for ch in c["choices"] for t in ch["logprobs"]["tokens"]]
    assert streamed == whole["choices"][0]["logprobs"]["tokens"]
    assert chunks[-1]["usage"] == whole["usage"] and chunks[-1]["choices"] == []


def test_seeded_n_reproduces(base_url: str) -> None:
    body = {"temperature": 1.0, "n": 2, "seed": 99, "max_tokens": 10, "ignore_eos": True}
    first, again = _complete(base_url, **body), _complete(base_url, **body)
    texts = [c["text"] for c in first["choices"]]
    assert texts == [c["text"] for c in again["choices"]] and texts[0] != texts[1]
    assert first["usage"]["completion_tokens"] == 20


@pytest.mark.parametrize("extra,param", [
    ({"suffix": " and so on."}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"logprobs": 6}, "logprobs"),
    ({"n": 5}, "n"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
    ({"prompt": "x", "max_tokens": 10**6}, "prompt"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"model": "nobody"}, "model"),
])
def test_refusals_name_the_parameter(base_url: str, extra: dict[str, Any], param: str) -> None:
    response = post(base_url, "/v1/completions", {**GREEDY, **extra})
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param


def test_openai_sdk_legacy_completions(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    reply = client.completions.create(model=BASE_ID, prompt=PROMPT, max_tokens=4, temperature=0,
                                      logprobs=1)
    assert reply.choices[0].text and reply.choices[0].logprobs is not None
    assert reply.usage is not None and reply.usage.completion_tokens <= 4
    stream = client.completions.create(model=BASE_ID, prompt=PROMPT, max_tokens=4,
                                       temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == reply.choices[0].text
