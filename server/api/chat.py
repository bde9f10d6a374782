"""`POST /v1/chat/completions`: validate, build the prompt, run its choices, answer or stream.

Order of work: the shared refusals and the chat checks (`server.api.checks`: limits, content
parts, what Cameo cannot honour), persona (404), prompt and context (400), then admission and
the engine (`server.api.generation`). `n` choices are `n` engine requests sharing the prompt;
with a `seed`, choice i uses `seed + i`. The answer follows OpenAI's spec to the letter: the
message always has `refusal` (null), `system_fingerprint` is always a string, `logprobs` is
`{content, refusal}` when asked for (else null). A stream sends, per choice, a role chunk, then
content chunks (with their `logprobs` when asked), then a chunk with the choice's
`finish_reason`, which is null on every chunk before it; with `stream_options.include_usage`
every chunk has `usage: null` and a last chunk (`choices: []`) the summed usage; then
`data: [DONE]`. A failure after the stream started is one `data: {"error": ...}` event.

`response_format` and tools become the request's grammar (`server.api.structured`,
`server.api.tools`); with tools, each choice's text goes through a `ToolCallParser`, so that a
call reaches the client as `tool_calls` (legacy: `function_call`) with `finish_reason`
"tool_calls" ("function_call"), and only the words around it as `content`.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from server.api.auth import require_user
from server.api.checks import check_chat
from server.api.deps import get_cameo
from server.api.errors import APIError
from server.api.generation import (
    display_name,
    documented,
    error_event,
    precheck,
    raise_for,
    resolve_model,
    respond,
    start,
    usage,
)
from server.api.logprobs import TokenTexts, chat_entries, token_texts
from server.api.prompt import build_messages, encode_prompt
from server.api.sampling import card_defaults, check_room, per_choice, sampling_params
from server.api.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    FinishReason,
    Usage,
)
from server.api.streams import Indexed
from server.api.structured import check_grammar, response_grammar
from server.api.tools import ToolCall, ToolCallParser, ToolPlan, plan_tools, template_takes_tools
from server.composition import Cameo
from server.engine.constraints import GrammarSpec
from server.engine.types import RequestOutput, SamplingParams, TokenLogprob
from server.registry.personas import Persona

router = APIRouter()

_RESPONSES = documented("A chat completion, or with `stream: true` a server-sent event stream "
                        "of chat.completion.chunk objects ending with `data: [DONE]`")


@dataclass(frozen=True)
class Reply:
    """What every chunk or choice of one response repeats."""

    id: str
    created: int
    model: str
    n: int
    texts: TokenTexts | None  # set when logprobs were asked for
    tools: ToolPlan | None = None


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_RESPONSES,
             dependencies=[Depends(require_user)])
async def chat_completions(
    body: ChatCompletionRequest, http: Request, cameo: Cameo = Depends(get_cameo)
) -> ChatCompletion | Response:
    precheck(http, lambda: check_chat(body, cameo.settings))
    tools = plan_tools(body)
    grammar, param = _grammar(body, tools)
    persona = resolve_model(cameo, body.model)
    if grammar is not None:  # (the grammar cache is built on first use)
        await check_grammar(cameo.base.grammars, grammar, param)
    tokenizer = cameo.base.tokenizer
    native = tools is not None and template_takes_tools(tokenizer)
    messages = build_messages(body.messages, persona, tools, native, speaker=body.model,
                              display=lambda name: display_name(cameo, name))
    prompt_ids = encode_prompt(tokenizer, messages,
                               tools=[t.spec() for t in tools.tools] if tools and native else None)
    sampling = dataclasses.replace(chat_sampling(body, persona, len(prompt_ids), cameo),
                                   grammar=grammar)
    reply = Reply(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model,
                  n=body.choices, texts=token_texts(tokenizer) if body.logprobs else None,
                  tools=tools)
    jobs = [(prompt_ids, params) for params in per_choice(sampling, body.choices)]
    launch = start(http, cameo, persona, jobs, reply.id)
    return await respond(http, launch, bool(body.stream),
                         lambda outputs: _events(reply, outputs, body.include_usage),
                         lambda outputs: _complete(reply, outputs))


def chat_sampling(body: ChatCompletionRequest, persona: Persona | None, prompt_len: int,
                  cameo: Cameo) -> SamplingParams:
    """The request's sampling; unset `max_tokens` is the card's or `CAMEO_DEFAULT_MAX_TOKENS`,
    capped by the room the prompt leaves."""
    requested = body.max_completion_tokens or body.max_tokens
    room = check_room(cameo, prompt_len, requested, "messages")
    default_max = int(card_defaults(persona).get("max_tokens", cameo.settings.default_max_tokens))
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return sampling_params(body, persona, cameo, max_tokens=requested or min(default_max, room),
                           logprobs=logprobs)


def _grammar(body: ChatCompletionRequest,
             tools: ToolPlan | None) -> tuple[GrammarSpec | None, str]:
    """The request's grammar and the parameter it came from."""
    response_format = (body.model_extra or {}).get("response_format")
    structured = response_grammar(response_format)
    if tools is None:
        return structured, "response_format"
    if structured is not None:
        raise APIError(400, "response_format cannot be combined with tool calls; send "
                       "tool_choice: none, or no response_format", param="response_format",
                       code="unsupported_parameter")
    return tools.grammar, "functions" if tools.legacy else "tools"


def _logprobs(reply: Reply, entries: Sequence[TokenLogprob]) -> ChoiceLogprobs | None:
    if reply.texts is None:
        return None
    return ChoiceLogprobs(content=chat_entries(reply.texts, entries), refusal=None)


def _finish(output: RequestOutput, calls: Sequence[ToolCall] = (),
            legacy: bool = False) -> FinishReason:
    if calls:
        return "function_call" if legacy else "tool_calls"
    return "length" if output.finish_reason == "length" else "stop"


def _message(reply: Reply, text: str) -> tuple[AssistantMessage, list[ToolCall]]:
    """The choice's message: its text, or with tools, the calls in it and the words around."""
    if reply.tools is None:
        return AssistantMessage(content=text), []
    parser = ToolCallParser()
    words, calls = parser.feed(text)
    content = (words + parser.flush()).strip() or None
    if reply.tools.legacy and calls:
        return AssistantMessage(content=content, function_call={
            "name": calls[0].name, "arguments": calls[0].arguments}), calls
    return AssistantMessage(content=content,
                            tool_calls=[c.to_openai() for c in calls] or None), calls


def _call_delta(reply: Reply, call: ToolCall, index: int) -> DeltaMessage:
    if reply.tools is not None and reply.tools.legacy:
        return DeltaMessage(function_call={"name": call.name, "arguments": call.arguments})
    return DeltaMessage(tool_calls=[call.to_openai(index)])


async def _complete(reply: Reply, outputs: AsyncIterator[Indexed]) -> ChatCompletion:
    parts: list[list[str]] = [[] for _ in range(reply.n)]
    entries: list[list[TokenLogprob]] = [[] for _ in range(reply.n)]
    last = [RequestOutput(request_id=reply.id)] * reply.n
    async for index, output in outputs:
        raise_for(output)
        parts[index].append(output.text)
        entries[index].extend(output.logprobs)
        last[index] = output
    choices = []
    for i in range(reply.n):
        message, calls = _message(reply, "".join(parts[i]))
        legacy = bool(reply.tools and reply.tools.legacy)
        choices.append(Choice(index=i, message=message, finish_reason=_finish(last[i], calls,
                                                                             legacy),
                              logprobs=_logprobs(reply, entries[i])))
    return ChatCompletion(id=reply.id, created=reply.created, model=reply.model, choices=choices,
                          usage=_usage(last))


def _usage(last: Sequence[RequestOutput]) -> Usage:
    """The prompt once (the choices share it), every choice's generated tokens."""
    return usage(max(o.prompt_tokens for o in last), sum(o.completion_tokens for o in last))


async def _events(reply: Reply, outputs: AsyncIterator[Indexed],
                  include_usage: bool) -> AsyncIterator[str]:
    def chunk(choices: list[ChunkChoice], used: Usage | None = None) -> str:
        return ChatCompletionChunk(
            id=reply.id, created=reply.created, model=reply.model, choices=choices, usage=used,
        ).model_dump_json(exclude=None if include_usage else {"usage"})

    for index in range(reply.n):
        yield chunk([ChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
    last = [RequestOutput(request_id=reply.id)] * reply.n
    parsers = [ToolCallParser() for _ in range(reply.n)] if reply.tools else None
    try:
        async for index, output in outputs:
            last[index] = output
            if output.error is not None:
                yield error_event(output)
                break
            for delta, logprobs in _deltas(reply, parsers, index, output):
                yield chunk([ChunkChoice(index=index, delta=delta, logprobs=logprobs)])
            if output.finish_reason in ("stop", "length"):
                calls = parsers[index].calls if parsers else []
                legacy = bool(reply.tools and reply.tools.legacy)
                yield chunk([ChunkChoice(index=index, delta=DeltaMessage(),
                                         finish_reason=_finish(output, calls, legacy))])
    except APIError as exc:  # an adapter that failed to load for a later choice
        yield error_event(exc)
    if include_usage:
        yield chunk([], _usage(last))
    yield "[DONE]"


def _deltas(reply: Reply, parsers: list[ToolCallParser] | None, index: int,
            output: RequestOutput) -> list[tuple[DeltaMessage, ChoiceLogprobs | None]]:
    """One output's stream deltas: its text (less any tool call, which goes as its own delta
    once complete) with its logprobs."""
    logprobs = _logprobs(reply, output.logprobs)
    text, calls = output.text, list[ToolCall]()
    if parsers is not None:
        parser = parsers[index]
        text, calls = parser.feed(output.text)
        if output.finished:
            text += parser.flush()
    deltas: list[tuple[DeltaMessage, ChoiceLogprobs | None]] = []
    if text or (logprobs is not None and logprobs.content):
        deltas.append((DeltaMessage(content=text), logprobs))
    offset = len(parsers[index].calls) - len(calls) if parsers else 0
    deltas += [(_call_delta(reply, call, offset + i), None) for i, call in enumerate(calls)]
    return deltas
