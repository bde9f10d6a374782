"""Tool calls: OpenAI `tools`/`tool_choice` (and the legacy `functions`/`function_call`) into a
prompt, a grammar and, from the model's text, `tool_calls`.

Contract:
- `plan_tools(body)` validates the request's tools and choice (400 naming the parameter) and
  returns a `ToolPlan`, or None when no tool may be called (no tools, or `tool_choice: "none"`).
- Cameo's call format is the one Hermes-style templates use:
  `<tool_call>\\n{"name": NAME, "arguments": {...}}\\n</tool_call>`. The tools reach the model
  through its chat template when the template takes `tools` (`template_takes_tools`), else
  through a system message that states the format (`system_block`).
- `ToolPlan.grammar` makes the format a guarantee: a structural tag whose tags force each tool's
  name and constrain its arguments to the tool's JSON schema. `required` or a named function:
  exactly one call and nothing else (`at_least_one`, `stop_after_first`); `auto`: free text,
  and once the model opens `<tool_call>`, a well-formed call. One call per reply, which honours
  `parallel_tool_calls` either way (it allows, never requires, several).
- `ToolCallParser` turns the streamed text into content pieces and finished calls, holding back
  only what could still become `<tool_call>`; `history_messages` renders earlier assistant
  calls and tool results for a template without tool support.

This module does not sample (the engine applies the grammar) and does not build responses.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from server.api.errors import APIError, quote
from server.engine.constraints import GrammarSpec

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_TOOLS = 128
_CALL_PREFIX = '<tool_call>\n{"name": '


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolPlan:
    tools: tuple[Tool, ...]
    required: bool  # `required` or a named function: the reply is one call
    legacy: bool  # `functions`: answer with `function_call`, not `tool_calls`

    @property
    def grammar(self) -> GrammarSpec:
        tags = [{"type": "tag", "begin": f"{_CALL_PREFIX}{json.dumps(tool.name)}, \"arguments\": ",
                 "content": {"type": "json_schema", "json_schema": tool.parameters},
                 "end": "}\n</tool_call>"} for tool in self.tools]
        structural = {"type": "structural_tag", "format": {
            "type": "triggered_tags", "triggers": [OPEN], "tags": tags,
            "at_least_one": self.required, "stop_after_first": True}}
        return GrammarSpec("structural_tag", json.dumps(structural))

    def system_block(self) -> str:
        listed = "\n".join(json.dumps(tool.spec()["function"]) for tool in self.tools)
        must = ("You must call exactly one of these tools now, and write nothing else."
                if self.required else "Call a tool only when it helps to answer.")
        return (f"You can call tools. To call one, write exactly:\n{OPEN}\n"
                '{"name": "<tool name>", "arguments": {<the arguments as JSON>}}\n'
                f"{CLOSE}\n{must}\nThe tools:\n{listed}")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {"id": self.id, "type": "function",
                                "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


def plan_tools(body: Any) -> ToolPlan | None:
    """The request's tool plan (`body`: a chat request with pydantic extras allowed)."""
    extra = body.model_extra or {}
    legacy = extra.get("functions") is not None
    if legacy and extra.get("tools") is not None:
        raise _bad("send either tools or the legacy functions, not both", "functions")
    raw = extra.get("functions") if legacy else extra.get("tools")
    if raw is None:
        if extra.get("tool_choice") not in (None, "none", "auto"):
            raise _bad("tool_choice needs tools", "tool_choice")
        return None
    tools = _functions(raw) if legacy else _tools(raw)
    choice = extra.get("function_call" if legacy else "tool_choice", "auto")
    return _choose(tools, choice, legacy)


def template_takes_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in (template if isinstance(template, str) else json.dumps(template))


def history_messages(messages: list[dict[str, Any]], native: bool) -> list[dict[str, Any]]:
    """Earlier calls and tool results in the form the template reads: as they are for a template
    that takes tools, else as Cameo's call format and `<tool_response>` turns."""
    rendered = []
    for message in messages:
        calls = message.get("tool_calls") or []
        if message.get("function_call"):
            calls = [{"function": message["function_call"]}]
        if native:
            rendered.append(message)
        elif message["role"] in ("tool", "function"):
            rendered.append({"role": "user", "content":
                             f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"})
        elif calls:
            text = "".join(f"{OPEN}\n{json.dumps(_call_json(c))}\n{CLOSE}" for c in calls)
            rendered.append({"role": "assistant",
                             "content": ((message.get("content") or "") + text).strip()})
        else:
            rendered.append({"role": message["role"], "content": message.get("content") or ""})
    return rendered


class ToolCallParser:
    """Streamed model text in, content pieces and finished calls out."""

    def __init__(self) -> None:
        self._buffer = ""
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """(content that is safe to show now, calls completed by this piece)."""
        self._buffer += text
        content, found = "", []
        while True:
            start = self._buffer.find(OPEN)
            if start < 0:
                keep = _partial_prefix(self._buffer, OPEN)
                content += self._buffer[:len(self._buffer) - keep]
                self._buffer = self._buffer[len(self._buffer) - keep:]
                break
            end = self._buffer.find(CLOSE, start)
            content += self._buffer[:start]
            self._buffer = self._buffer[start:]
            if end < 0:
                break
            end -= start
            call = _parse_call(self._buffer[len(OPEN):end])
            self._buffer = self._buffer[end + len(CLOSE):]
            if call is not None:
                found.append(call)
        self.calls += found
        return content, found

    def flush(self) -> str:
        """What is left at the end (an unfinished call is shown as text, never dropped)."""
        rest, self._buffer = self._buffer, ""
        return rest


def _tools(raw: Any) -> tuple[Tool, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TOOLS:
        raise _bad(f"tools must be a list of 1 to {MAX_TOOLS} tools", "tools")
    tools = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("type") != "function":
            raise _bad('each tool must be {"type": "function", "function": {...}}',
                       f"tools.{index}")
        tools.append(_function(item.get("function"), f"tools.{index}.function"))
    return _unique(tools, "tools")


def _functions(raw: Any) -> tuple[Tool, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TOOLS:
        raise _bad(f"functions must be a list of 1 to {MAX_TOOLS} functions", "functions")
    return _unique([_function(f, f"functions.{i}") for i, f in enumerate(raw)], "functions")


def _function(raw: Any, param: str) -> Tool:
    if not isinstance(raw, dict):
        raise _bad("a function must be an object with a name", param)
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > 64 or not all(
            c.isascii() and (c.isalnum() or c in "_-") for c in name):
        raise _bad("a function name is 1 to 64 of a-z, A-Z, 0-9, _ and -", f"{param}.name")
    parameters = raw.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise _bad("parameters must be a JSON schema object", f"{param}.parameters")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise _bad("description must be a string", f"{param}.description")
    return Tool(name, description, parameters)


def _unique(tools: list[Tool], param: str) -> tuple[Tool, ...]:
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise _bad("tool names must be unique", param)
    return tuple(tools)


def _choose(tools: tuple[Tool, ...], choice: Any, legacy: bool) -> ToolPlan | None:
    param = "function_call" if legacy else "tool_choice"
    if choice == "none":
        return None
    if choice == "auto":
        return ToolPlan(tools, required=False, legacy=legacy)
    if choice == "required" and not legacy:
        return ToolPlan(tools, required=True, legacy=legacy)
    named = choice.get("name") if legacy and isinstance(choice, dict) else None
    if not legacy and isinstance(choice, dict) and choice.get("type") == "function":
        named = (choice.get("function") or {}).get("name")
    chosen = [tool for tool in tools if tool.name == named]
    if not chosen:
        raise _bad(f"{param} must be none, auto, {'' if legacy else 'required, '}or name one of "
                   f"the {'functions' if legacy else 'tools'} (got {quote(json.dumps(choice))})",
                   param)
    return ToolPlan(tuple(chosen), required=True, legacy=legacy)


def _call_json(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        parsed = arguments
    return {"name": function.get("name", ""), "arguments": parsed}


def _parse_call(body: str) -> ToolCall | None:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    return ToolCall(data["name"], json.dumps(data.get("arguments", {}), ensure_ascii=False))


def _partial_prefix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")
