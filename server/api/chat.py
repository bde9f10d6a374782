"""`POST /v1/chat/completions`: validate, build the prompt, run it on the engine, answer or stream.

Order of work, cheapest refusal first: rate limit and queue room (429), message limits (400),
persona (404), prompt and context (400), then admission with the prompt's token count (429);
only then does the request reach the engine. A client that goes away, streaming or not, aborts
its request, which frees its batch row at the next engine step. Every request carries a
deadline (`CAMEO_REQUEST_TIMEOUT`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse

from server.api.admission import Admission, Ticket
from server.api.auth import caller_identity, require_user
from server.api.deps import get_runtime
from server.api.errors import APIError, error_body, quote
from server.api.metrics import RequestTimer
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
from server.serving import Serving
from server.settings import Settings

T = TypeVar("T")

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 500, 503, 504)}
_ERRORS[200] = {"description": "A chat completion, or with `stream: true` a server-sent event "
                "stream of chat.completion.chunk objects ending with `data: [DONE]`",
                "content": {"text/event-stream": {"schema": {"type": "string"}}}}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS,
             dependencies=[Depends(require_user)])
async def chat_completions(
    body: ChatCompletionRequest, http: Request, runtime: Serving = Depends(get_runtime)
) -> ChatCompletion | Response:
    state = http.app.state
    admission: Admission = state.admission
    try:
        admission.check_rate(caller_identity(http))
        admission.check_room()
        check_limits(body, runtime.settings)
    except APIError as exc:
        state.metrics.rejected.labels(exc.code or str(exc.status)).inc()
        raise
    persona = resolve_model(runtime, body.model)
    prompt_ids = encode_prompt(runtime.loaded.tokenizer, build_messages(body.messages, persona))
    sampling = sampling_params(body, persona, len(prompt_ids), runtime)
    try:
        ticket = admission.admit(len(prompt_ids))
    except APIError as exc:
        state.metrics.rejected.labels(exc.code or str(exc.status)).inc()
        raise
    request = GenerationRequest(
        request_id=f"chatcmpl-{uuid.uuid4().hex}", prompt_ids=tuple(prompt_ids),
        sampling=sampling, deadline=time.monotonic() + runtime.settings.request_timeout)
    timer = RequestTimer(state.metrics, persona.name if persona else "base")
    outputs = _tracked(_generate(runtime, request, persona), ticket, timer)
    if body.stream:
        first = await _until_disconnect(http, _first(outputs))
        if first is None:
            return Response(status_code=499)  # nobody is listening any more
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventSourceResponse(_stream(request, first, outputs, body.model, include_usage),
                                   ping=15, sep="\n")
    completion = await _until_disconnect(http, _complete(request, outputs, body.model))
    return completion if completion is not None else Response(status_code=499)


def check_limits(body: ChatCompletionRequest, settings: Settings) -> None:
    """Sizes a client controls, each refused with the parameter named."""
    if len(body.messages) > settings.max_messages:
        raise APIError(400, f"at most {settings.max_messages} messages per request",
                       param="messages", code="too_many_messages")
    for index, message in enumerate(body.messages):
        if len(message.text()) > settings.max_message_chars:
            raise APIError(400, f"messages[{index}] is over {settings.max_message_chars} "
                           "characters", param=f"messages.{index}.content",
                           code="message_too_long")
        if message.role in ("user", "system", "developer") and message.content is None:
            raise APIError(400, f"messages[{index}] ({message.role}) needs content",
                           param=f"messages.{index}.content", code="invalid_value")


async def _until_disconnect(http: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, unless the client disconnects first: then cancel it and return None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(http))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    finally:
        watcher.cancel()


async def _disconnected(http: Request) -> None:
    while True:
        message = await http.receive()  # the body was read already: the next message is this
        if message["type"] == "http.disconnect":
            return


async def _tracked(outputs: AsyncIterator[RequestOutput], ticket: Ticket,
                   timer: RequestTimer) -> AsyncIterator[RequestOutput]:
    """Account one request in admission and metrics, however it ends."""
    status, prompt_tokens = "cancelled", 0
    try:
        async for output in outputs:
            ticket.started()
            prompt_tokens = output.prompt_tokens or prompt_tokens
            if output.token_ids:
                timer.token(output.queue_seconds, len(output.token_ids))
            if output.finished:
                status = _status(output)
            yield output
    except APIError:
        status = "error"
        raise
    finally:
        ticket.close()
        timer.finish(status, prompt_tokens)


def _status(output: RequestOutput) -> str:
    if output.error_code == "timeout":
        return "timeout"
    if output.error is not None:
        return "error"
    return "cancelled" if output.finish_reason == "abort" else "ok"


def resolve_model(runtime: Serving, name: str) -> Persona | None:
    """The persona a `model` field names; None for the base model itself."""
    if name == runtime.loaded.model_id:
        return None
    persona = runtime.registry.get(name)
    if persona is None:
        raise APIError(404, f"the model {quote(name)} does not exist; GET /v1/models lists them",
                       param="model", code="model_not_found")
    return persona


def sampling_params(body: ChatCompletionRequest, persona: Persona | None, prompt_len: int,
                    runtime: Serving) -> SamplingParams:
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

    default_max = int(defaults.get("max_tokens", runtime.settings.default_max_tokens))
    return SamplingParams(
        max_tokens=requested or min(default_max, room),
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


async def _generate(runtime: Serving, request: GenerationRequest,
                    persona: Persona | None) -> AsyncIterator[RequestOutput]:
    try:
        async for output in runtime.generate(request, persona):
            yield output
    except AdapterError as exc:
        name = persona.name if persona else runtime.loaded.model_id
        if persona is not None and _deleted_since(runtime, persona):
            raise APIError(404, f"the model {name!r} was deleted while the request started",
                           param="model", code="model_not_found") from exc
        raise APIError(500, f"the adapter of {name!r} cannot be loaded: {exc.message}",
                       code="adapter_load_failed") from exc


def _deleted_since(runtime: Serving, persona: Persona) -> bool:
    """The version was deleted after the request resolved it (its files went with it)."""
    current = runtime.registry.get(persona.name)
    return current is None or (current.version != persona.version
                               and not (persona.adapter_dir and persona.adapter_dir.exists()))


async def _first(outputs: AsyncIterator[RequestOutput]) -> RequestOutput | None:
    async for output in outputs:
        return output
    return None


_ERROR_STATUS = {"context_length_exceeded": 400, "invalid_seed": 400, "timeout": 504}


def _raise_for(output: RequestOutput) -> None:
    if output.error is not None:
        status = _ERROR_STATUS.get(output.error_code or "", 500)
        raise APIError(status, output.error, code=output.error_code,
                       type="timeout" if status == 504 else None)


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
