"""Structured output and tool calls over real HTTP on the embedded model: the grammar makes the
reply what the client asked for, streaming or not, for the base and for a persona; every answer
and chunk still validates against OpenAI's spec (`tests/api/openai_spec.json`)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.api.support import BASE_ID, assert_valid, events, ok, post

# About two and a half minutes on CI's 2-core machine: in the slow suite, which CI runs too
# (tests/engine/test_constraints.py checks the grammars in the default suite).
pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a timezone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}},
                   "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Capital(BaseModel):
    # bounds keep this 135M model from looping in a string or an integer's digits
    country: str = Field(max_length=30)
    capital: str = Field(max_length=30)
    population_millions: int = Field(ge=0, le=2000)


def _chat(base_url: str, **fields: Any) -> dict[str, Any]:
    body = {"model": BASE_ID, "messages": ASK, "max_tokens": 60, "temperature": 0, **fields}
    answer = ok(post(base_url, "/v1/chat/completions", body))
    assert_valid("CreateChatCompletionResponse", answer)
    return answer


def _arguments(call: dict[str, Any], tool: dict[str, Any]) -> dict[str, Any]:
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == tool["function"]["name"]
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, tool["function"]["parameters"])
    return dict(arguments)


def test_json_schema_reply_parses_with_the_sdk(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.parse(
        model=BASE_ID, response_format=Capital, max_tokens=80, temperature=0,
        messages=[{"role": "user", "content": "Give France's capital as JSON."}])
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Capital) and parsed.country and parsed.capital


def test_json_object_and_schema_for_a_persona(base_url: str) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}},
              "required": ["answer"], "additionalProperties": False}
    answer = _chat(base_url, model="alpha", response_format={
        "type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}})
    assert answer["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"]), schema)
    free = _chat(base_url, model="bravo", response_format={"type": "json_object"},
                 max_tokens=12)
    assert free["choices"][0]["message"]["content"].lstrip().startswith("{")


@pytest.mark.parametrize(("response_format", "param"), [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
     "response_format"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
])
def test_bad_response_formats_are_400s(base_url: str, response_format: dict[str, Any],
                                       param: str) -> None:
    response = post(base_url, "/v1/chat/completions", {
        "model": BASE_ID, "messages": ASK, "response_format": response_format})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_required_tool_call_is_a_valid_call(base_url: str) -> None:
    answer = _chat(base_url, tools=[WEATHER, TIME], tool_choice="required")
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] in ("get_weather", "get_time")
    _arguments(call, WEATHER if call["function"]["name"] == "get_weather" else TIME)


def test_named_tool_for_a_persona_and_streamed(base_url: str) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    answer = _chat(base_url, model="charlie", tools=[WEATHER, TIME], tool_choice=named)
    (call,) = answer["choices"][0]["message"]["tool_calls"]
    _arguments(call, TIME)
    chunks = events(base_url, "/v1/chat/completions", {
        "model": "charlie", "messages": ASK, "max_tokens": 60, "temperature": 0,
        "tools": [WEATHER, TIME], "tool_choice": named})
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    streamed = [call for d in deltas for call in d.get("tool_calls", [])]
    assert len(streamed) == 1 and streamed[0]["index"] == 0
    assert _arguments(streamed[0], TIME) == _arguments(call, TIME)  # the same greedy call
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not "".join(d.get("content") or "" for d in deltas).strip()


def test_auto_answers_in_words_or_with_a_well_formed_call(base_url: str) -> None:
    answer = _chat(base_url, model="alpha", tools=[WEATHER], max_tokens=40)
    choice = answer["choices"][0]
    if choice["finish_reason"] == "tool_calls":
        (call,) = choice["message"]["tool_calls"]
        _arguments(call, WEATHER)
    else:
        assert choice["message"]["content"] and "<tool_call>" not in choice["message"]["content"]


def test_legacy_functions_answer_with_function_call(base_url: str) -> None:
    answer = _chat(base_url, functions=[WEATHER["function"]],
                   function_call={"name": "get_weather"})
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "function_call"
    call = choice["message"]["function_call"]
    jsonschema.validate(json.loads(call["arguments"]), WEATHER["function"]["parameters"])


def test_tool_results_go_back_to_the_model(base_url: str) -> None:
    first = _chat(base_url, tools=[WEATHER], tool_choice="required")
    call = first["choices"][0]["message"]["tool_calls"][0]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 degrees"}]
    with_result = _chat(base_url, messages=history, tools=[WEATHER], tool_choice="none")
    without = _chat(base_url, messages=ASK, tools=[WEATHER], tool_choice="none")
    assert with_result["choices"][0]["finish_reason"] in ("stop", "length")
    assert with_result["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 10
    assert "tool_calls" not in with_result["choices"][0]["message"]


def test_response_format_with_tools_is_refused(base_url: str) -> None:
    response = post(base_url, "/v1/chat/completions", {
        "model": BASE_ID, "messages": ASK, "tools": [WEATHER],
        "response_format": {"type": "json_object"}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "response_format"
