"""Tool plans and the streamed-text parser, without a model (the HTTP tests drive the model)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.api.errors import APIError
from server.api.schemas import ChatCompletionRequest
from server.api.tools import ToolCallParser, history_messages, plan_tools

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _body(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


def test_choices_make_plans() -> None:
    assert plan_tools(_body()) is None
    assert plan_tools(_body(tools=[WEATHER], tool_choice="none")) is None
    auto = plan_tools(_body(tools=[WEATHER]))
    assert auto is not None and not auto.required
    required = plan_tools(_body(tools=[WEATHER], tool_choice="required"))
    assert required is not None and required.required
    named = plan_tools(_body(tools=[WEATHER, {**WEATHER, "function": {
        **WEATHER["function"], "name": "other"}}],
        tool_choice={"type": "function", "function": {"name": "other"}}))
    assert named is not None and [t.name for t in named.tools] == ["other"] and named.required
    legacy = plan_tools(_body(functions=[WEATHER["function"]],
                              function_call={"name": "get_weather"}))
    assert legacy is not None and legacy.legacy and legacy.required
    grammar = json.loads(required.grammar.source)["format"]
    assert grammar["at_least_one"] and grammar["stop_after_first"]


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": []}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     "tools.0.function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions"),
])
def test_bad_tool_requests_name_the_parameter(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as caught:
        plan_tools(_body(**fields))
    assert caught.value.status == 400 and caught.value.param == param


def test_parser_streams_content_and_holds_back_only_a_possible_tag() -> None:
    parser = ToolCallParser()
    pieces = ["Arr, let me ", "look. <tool", "_call>\n{\"name\": \"get_weather\", ",
              "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"]
    shown, calls = [], []
    for piece in pieces:
        content, found = parser.feed(piece)
        shown.append(content)
        calls += found
    assert shown == ["Arr, let me ", "look. ", "", ""]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather",
                                                                   {"city": "Paris"})]
    assert parser.flush() == ""


def test_parser_shows_an_unfinished_or_broken_call_as_text() -> None:
    parser = ToolCallParser()
    content, calls = parser.feed("<tool_call>\n{\"name\": ")
    assert (content, calls) == ("", [])
    assert parser.flush() == "<tool_call>\n{\"name\": "
    broken = ToolCallParser()
    content, calls = broken.feed("<tool_call>not json</tool_call> after")
    assert calls == [] and content == " after"


def test_history_without_native_tools_is_rendered_in_the_call_format() -> None:
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    rendered = history_messages(messages, native=False)
    assert rendered[1] == {"role": "assistant", "content": CALL}
    assert rendered[2] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    assert history_messages(messages, native=True) == messages
