"""`POST /v1/chat/completions`: validate, build the prompt, run it on the engine, answer or stream.

All checks that can fail (unknown persona, context overflow) happen before the request reaches
the engine, so a refused request costs nothing there.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends
from sse_starlette.sse import EventSourceResponse

from server.api.auth import require_user
from server.api.deps import get_runtime
from server.api.errors import APIError, error_body
from server.api.prompt import build_messages, encode_prompt
from server.api.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ErrorResponse,
    Usage,
)
from server.engine.types import GenerationRequest, RequestOutput, SamplingParams
from server.lora.adapter import AdapterError
from server.registry.personas import Persona
from server.runtime import Runtime

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 429, 500, 503)}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS,
             dependencies=[Depends(require_user)])
async def chat_completions(
    body: ChatCompletionRequest, runtime: Runtime = Depends(get_runtime)
) -> ChatCompletion | EventSourceResponse:
    persona = resolve_model(runtime, body.model)
    prompt_ids = encode_prompt(runtime.loaded.tokenizer, build_messages(body.messages, persona))
    sampling = sampling_params(body, persona, len(prompt_ids), runtime)
    request = GenerationRequest(request_id=f"chatcmpl-{uuid.uuid4().hex}",
                                prompt_ids=tuple(prompt_ids), sampling=sampling)
    outputs = _generate(runtime, request, persona)
    if body.stream:
        first = await _first(outputs)  # adapter load errors become HTTP errors, not stream errors
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventSourceResponse(_stream(request, first, outputs, body.model, include_usage),
                                   ping=15, sep="\n")
    return await _complete(request, outputs, body.model)


def resolve_model(runtime: Runtime, name: str) -> Persona | None:
    """The persona a `model` field names; None for the base model itself."""
    if name == runtime.loaded.model_id:
        return None
    persona = runtime.registry.get(name)
    if persona is None:
        raise APIError(404, f"the model {name!r} does not exist; GET /v1/models lists them",
                       param="model", code="model_not_found")
    return persona


def sampling_params(body: ChatCompletionRequest, persona: Persona | None, prompt_len: int,
                    runtime: Runtime) -> SamplingParams:
    """Request values first, then the persona card's defaults, then OpenAI's defaults."""
    room = runtime.max_context - prompt_len
    requested = body.max_completion_tokens or body.max_tokens
    if room <= 0 or (requested is not None and requested > room):
        asked = requested or 1
        raise APIError(
            400,
            f"this model's maximum context length is {runtime.max_context} tokens; the messages "
            f"take {prompt_len} and {asked} more were requested",
            param="messages", code="context_length_exceeded")
    defaults = persona.card.sampling if persona else {}

    def pick(value: float | None, key: str, fallback: float) -> float:
        return value if value is not None else defaults.get(key, fallback)

    return SamplingParams(
        max_tokens=requested or min(runtime.settings.default_max_tokens, room),
        temperature=pick(body.temperature, "temperature", 1.0),
        top_p=pick(body.top_p, "top_p", 1.0),
        top_k=max(int(pick(body.top_k, "top_k", 0)), 0),
        min_p=pick(body.min_p, "min_p", 0.0),
        seed=body.seed,
        stop=body.stop_strings(),
        ignore_eos=body.ignore_eos,
        repetition_penalty=pick(body.repetition_penalty, "repetition_penalty", 1.0),
        frequency_penalty=pick(body.frequency_penalty, "frequency_penalty", 0.0),
        presence_penalty=pick(body.presence_penalty, "presence_penalty", 0.0),
    )


async def _generate(runtime: Runtime, request: GenerationRequest,
                    persona: Persona | None) -> AsyncIterator[RequestOutput]:
    try:
        async for output in runtime.generate(request, persona):
            yield output
    except AdapterError as exc:
        name = persona.name if persona else runtime.loaded.model_id
        raise APIError(500, f"the adapter of {name!r} cannot be loaded: {exc.message}",
                       code="adapter_load_failed") from exc


async def _first(outputs: AsyncIterator[RequestOutput]) -> RequestOutput | None:
    async for output in outputs:
        return output
    return None


def _raise_for(output: RequestOutput) -> None:
    if output.error is not None:
        raise APIError(500, output.error, code=output.error_code)


async def _complete(request: GenerationRequest, outputs: AsyncIterator[RequestOutput],
                    model: str) -> ChatCompletion:
    parts: list[str] = []
    last = RequestOutput(request_id=request.request_id)
    async for output in outputs:
        _raise_for(output)
        parts.append(output.text)
        last = output
    finish = last.finish_reason if last.finish_reason in ("stop", "length") else None
    return ChatCompletion(
        id=request.request_id,
        created=int(time.time()),
        model=model,
        choices=[Choice(message=AssistantMessage(content="".join(parts)),
                        finish_reason=finish)],
        usage=_usage(last),
    )


async def _stream(request: GenerationRequest, first: RequestOutput | None,
                  outputs: AsyncIterator[RequestOutput], model: str,
                  include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: DeltaMessage, finish: str | None = None) -> str:
        return ChatCompletionChunk(
            id=request.request_id, created=created, model=model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],  # type: ignore[arg-type]
        ).model_dump_json(exclude_none=True)

    yield chunk(DeltaMessage(role="assistant", content=""))
    last = RequestOutput(request_id=request.request_id)
    async for output in _chain(first, outputs):
        last = output
        if output.error is not None:
            yield json.dumps(error_body(output.error, "server_error", None, output.error_code))
            break
        if output.text:
            yield chunk(DeltaMessage(content=output.text))
        if output.finish_reason in ("stop", "length"):
            yield chunk(DeltaMessage(), output.finish_reason)
    if include_usage:
        yield ChatCompletionChunk(id=request.request_id, created=created, model=model,
                                  choices=[], usage=_usage(last)).model_dump_json()
    yield "[DONE]"


async def _chain(first: RequestOutput | None,
                 rest: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    if first is None:
        return
    yield first
    if not first.finished:
        async for output in rest:
            yield output


def _usage(output: RequestOutput) -> Usage:
    return Usage(prompt_tokens=output.prompt_tokens, completion_tokens=output.completion_tokens,
                 total_tokens=output.prompt_tokens + output.completion_tokens)
